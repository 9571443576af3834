"""The search space as data: Table 1 presets, the 41-integer encoding (Table 2), validation, overrides."""

from __future__ import annotations

import numpy as np
import pytest

import hashlib

from gpunet import NotInSpaceError, SpaceError, load_space, preset_names
from gpunet.sobol import sobol_chunks, sobol_unit
from gpunet.space import VECTOR_LENGTH

PRESETS = ["gpunet", "gpunet-small", "gpunet-tiny", "gpunet-x", "gpunet-x-tiny"]


def test_presets_are_listed():
    assert set(PRESETS) <= set(preset_names())


def test_gpunet_preset_is_table_1():
    space = load_space("gpunet")
    assert space.resolution == tuple(range(224, 513, 32))
    assert space.head_channels == 1792
    s = space.stages
    assert [st.block for st in s] == ["conv", "conv", "fused_irb", "fused_irb", "irb", "irb", "irb", "irb"]
    assert [st.stride for st in s] == [2, 1, 2, 2, 2, 1, 2, 1]
    assert s[0].filters == (24, 32)
    assert s[2].filters == tuple(range(32, 81, 16)) and s[3].filters == tuple(range(48, 113, 16))
    assert s[4].filters == tuple(range(96, 193, 16)) and s[5].filters == tuple(range(112, 225, 16))
    assert s[6].filters == tuple(range(128, 417, 32)) and s[7].filters == tuple(range(256, 833, 64))
    assert s[1].layers == (1, 2, 3, 4)
    assert [st.layers for st in s[2:]] == [
        tuple(range(1, 9)), tuple(range(1, 9)), tuple(range(1, 11)), tuple(range(0, 16)), tuple(range(1, 16)), tuple(range(0, 16))
    ]
    for st in s[2:]:
        assert st.kernel == (3, 5) and st.expansion == (2, 3, 4, 5, 6) and st.se == (0, 1) and st.act == ("relu", "swish")


def test_digits_follow_table_2_order():
    fields = [d.field for d in load_space("gpunet").digits]
    assert len(fields) == VECTOR_LENGTH == 41
    assert fields[:5] == ["resolution", "stage 0 filters", "stage 1 kernel", "stage 1 activation", "stage 1 #layers"]
    assert fields[5:11] == [f"stage 2 {a}" for a in ("filters", "kernel", "expansion", "SE", "activation", "#layers")]
    assert fields[-1] == "stage 7 #layers"


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip_over_thousands_of_random_architectures(preset):
    space = load_space(preset)
    vectors = space.sample(3000, seed=7)
    for v in vectors:
        v = v.tolist()
        arch = space.decode(v)
        assert space.encode(arch) == v
        assert space.from_indices(space.to_indices(v)) == v
        assert type(arch).from_dict(arch.to_dict()) == arch


def test_sobol_vectors_of_a_seed_are_the_ones_runs_were_stratified_with():
    # Pinned from the sampler before issue 9 (gpunet.sampling.sobol_vectors): the controller's tiers depend on them.
    space = load_space("gpunet")
    assert space.sobol(2, seed=0).tolist() == [
        [480, 32, 3, 0, 1, 64, 3, 3, 0, 1, 8, 112, 5, 6, 1, 1, 2, 96, 5, 5, 1, 0, 10, 112, 5, 5, 0, 0, 14, 128, 5, 2,
         1, 1, 4, 576, 5, 2, 1, 0, 12],
        [352, 24, 5, 1, 3, 32, 5, 5, 1, 0, 3, 64, 3, 3, 0, 0, 6, 192, 3, 2, 0, 1, 3, 224, 3, 2, 1, 1, 3, 384, 3, 5,
         0, 0, 11, 256, 3, 4, 0, 1, 1]]
    many = space.sobol(4096, seed=7, skip=5)
    assert many.dtype == np.int64 and hashlib.blake2b(many.tobytes(), digest_size=8).hexdigest() == "d67f20f318dc5bde"
    assert load_space("gpunet-tiny").sobol(1, seed=2, skip=1).tolist() == [
        [32, 16, 3, 1, 1, 24, 3, 2, 0, 0, 1, 24, 5, 4, 0, 1, 2, 48, 5, 2, 1, 0, 1, 64, 3, 4, 0, 1, 1, 64, 3, 4, 0, 1,
         2, 96, 5, 4, 0, 0, 2]]


def test_sobol_unit_points_are_the_searchers_sequence_and_chunk_invariant():
    # Pinned from gpunet.search.simple.sobol_points(d, seed, start, n) before issue 9.
    np.testing.assert_array_equal(sobol_unit(3, 2, seed=5, skip=2), [
        [0.12089159805327654, 0.4440922997891903, 0.896503884345293],
        [0.8289507292211056, 0.5581781649962068, 0.09480105806142092]])
    assert hashlib.blake2b(sobol_unit(41, 100, seed=9, skip=3).tobytes(), digest_size=8).hexdigest() == "0d9f46ae44541269"
    np.testing.assert_array_equal(np.concatenate(list(sobol_chunks(5, 300, seed=1, skip=7, chunk=64))),
                                  sobol_unit(5, 300, seed=1, skip=7))
    assert sobol_unit(4, 0).shape == (0, 4) and load_space("gpunet-tiny").sobol(0).shape == (0, VECTOR_LENGTH)
    from gpunet.search.simple import sobol_points  # the searchers' design: the same sequence

    np.testing.assert_array_equal(sobol_points(41, 9, 3, 100), sobol_unit(41, 100, seed=9, skip=3))


@pytest.mark.parametrize("n, skip, field", [(-1, 0, "sobol n"), (4, -2, "sobol skip")])
def test_sobol_refuses_negative_counts(n, skip, field):
    with pytest.raises(SpaceError) as info:
        load_space("gpunet-tiny").sobol(n, skip=skip)
    assert info.value.field == field


@pytest.mark.parametrize("preset", PRESETS)
def test_samples_are_valid_and_seeded(preset):
    space = load_space(preset)
    a, b = space.sample(200, seed=3), space.sample(200, seed=3)
    assert np.array_equal(a, b) and a.shape == (200, space.vector_length)
    assert not np.array_equal(a, space.sample(200, seed=4))
    for v in a:
        space.validate(v.tolist())


def test_stage_1_shares_stage_0_filters():
    space = load_space("gpunet")
    arch = space.decode(space.sample(1, seed=1)[0].tolist())
    assert arch.stages[1].filters == arch.stages[0].filters


def test_every_digit_rejects_an_out_of_range_value_naming_index_field_and_allowed():
    space = load_space("gpunet")
    base = space.sample(1, seed=0)[0].tolist()
    for digit in space.digits:
        bad = list(base)
        bad[digit.index] = max(digit.values) + 1000
        with pytest.raises(SpaceError) as info:
            space.decode(bad)
        err = info.value
        assert err.index == digit.index and err.field == digit.field and err.value == bad[digit.index]
        assert err.allowed == digit.values
        assert f"digit {digit.index} ({digit.field})" in str(err) and str(bad[digit.index]) in str(err)


def test_named_error_for_stage_4_expansion():
    space = load_space("gpunet")
    v = space.sample(1, seed=0)[0].tolist()
    v[19] = 7  # stage 4 expansion
    with pytest.raises(SpaceError, match=r"digit 19 \(stage 4 expansion\): got 7; expected one of \[2, 3, 4, 5, 6\]"):
        space.decode(v)


@pytest.mark.parametrize(
    "vector, field",
    [
        ([224] * 40, "vector length"),
        ("224,24", "vector"),
        (None, "vector"),
    ],
)
def test_malformed_vectors(vector, field):
    with pytest.raises(SpaceError) as info:
        load_space("gpunet").validate(vector)
    assert info.value.field == field


def test_non_integer_digit_is_rejected():
    space = load_space("gpunet")
    v = space.sample(1, seed=0)[0].tolist()
    v[3] = "swish"
    with pytest.raises(SpaceError, match="digit 3 .*not an integer"):
        space.validate(v)
    v[3] = 1.0  # an integral float is accepted as the integer
    assert space.validate(v)[3] == 1


def test_space_size_counts():
    tiny = load_space("gpunet-tiny")
    assert tiny.num_vectors == int(np.prod(tiny.cardinalities))
    # Stages 5 and 7 may be skipped, so several vectors map to one network.
    assert tiny.num_networks < tiny.num_vectors
    gpunet = load_space("gpunet")
    assert gpunet.num_networks > 10**20


# --- overrides -----------------------------------------------------------------------------------


def test_overrides_change_ranges_and_fixed_parts():
    space = load_space(
        {
            "preset": "gpunet",
            "resolution": [224, 256],
            "headChannels": 1280,
            "numClasses": 10,
            "in_chans": 1,
            "stages": {4: {"filters": {"min": 96, "max": 256, "step": 32}, "layers": [2, 3]}, "7": {"layers": [0]}},
        }
    )
    assert space.resolution == (224, 256)
    assert (space.head_channels, space.num_classes, space.in_chans) == (1280, 10, 1)
    assert space.stages[4].filters == (96, 128, 160, 192, 224, 256) and space.stages[4].layers == (2, 3)
    assert space.stages[7].layers == (0,)
    assert space.stages[5] == load_space("gpunet").stages[5]  # untouched
    arch = space.decode(space.sample(1, seed=0)[0].tolist())
    assert arch.head_channels == 1280 and arch.in_chans == 1 and arch.stages[7].layers == 0


def test_keyword_overrides_and_snake_case():
    space = load_space("gpunet-tiny", head_channels=64, num_classes=3)
    assert space.head_channels == 64 and space.num_classes == 3


@pytest.mark.parametrize(
    "override, field",
    [
        ({"preset": "nope"}, "preset"),
        ({"colour": 1}, "searchSpace.colour"),
        ({"resolution": {"min": 256, "max": 224}}, "searchSpace.resolution.max"),
        ({"resolution": {"min": 224, "max": 256, "step": 0}}, "searchSpace.resolution.step"),
        ({"resolution": []}, "searchSpace.resolution"),
        ({"headChannels": 0}, "searchSpace.headChannels"),
        ({"numClasses": "ten"}, "searchSpace.numClasses"),
        ({"stages": {9: {"layers": [1]}}}, "searchSpace.stages"),
        ({"stages": {4: {"filters": [96, -16]}}}, "searchSpace.stages[4].filters"),
        ({"stages": {4: {"kernel": [3, 4]}}}, "searchSpace.stages[4].kernel"),
        ({"stages": {4: {"act": ["gelu"]}}}, "searchSpace.stages[4].act"),
        ({"stages": {4: {"se": [2]}}}, "searchSpace.stages[4].se"),
        ({"stages": {4: {"block": "fused_irb"}}}, "searchSpace.stages[4].block"),
        ({"stages": {4: {"stride": 3}}}, "searchSpace.stages[4].stride"),
        ({"stages": {4: {"width": [1]}}}, "searchSpace.stages[4].width"),
        ({"stages": {0: {"layers": [1, 2]}}}, "searchSpace.stages[0].layers"),
        ({"stages": {1: {"layers": [0, 1]}}}, "searchSpace.stages[1].layers"),
        ({"stages": [{}] * 3}, "searchSpace.stages"),
        ({"head": {"dropout": 1.5}}, "searchSpace.head.dropout"),
        ({"stem": {"kernel": 4}}, "searchSpace.stem.kernel"),
    ],
)
def test_bad_overrides_name_the_field(override, field):
    with pytest.raises(SpaceError) as info:
        load_space(override)
    assert info.value.field == field, str(info.value)
    assert isinstance(info.value, ValueError)


def test_encode_refuses_a_network_outside_the_space():
    gpunet, tiny = load_space("gpunet"), load_space("gpunet-tiny")
    arch = tiny.decode(tiny.sample(1, seed=0)[0].tolist())
    with pytest.raises(NotInSpaceError):
        gpunet.encode(arch)


def test_skipped_stage_digits_survive_the_round_trip():
    space = load_space("gpunet")
    v = space.sample(1, seed=5)[0].tolist()
    v[28] = 0  # stage 5 #layers
    v[23] = 224  # stage 5 filters, irrelevant while skipped, yet kept
    arch = space.decode(v)
    assert arch.stages[5].layers == 0
    assert space.encode(arch) == v
    assert all(spec.stage != 5 for spec in arch.layer_specs())


# --- gpunet-x: block digits after Table 2's 41 (EfficientNet-X's space-to-depth stem, hybrid stages) ---------


def test_gpunet_x_is_table_2_followed_by_seven_block_digits():
    from gpunet.arch import BLOCK_TYPES

    table2, x = load_space("gpunet"), load_space("gpunet-x")
    assert x.vector_length == 48 and table2.vector_length == 41
    assert [(d.field, d.values) for d in x.digits[:41]] == [(d.field, d.values) for d in table2.digits]
    extra = x.digits[41:]
    assert [d.field for d in extra] == ["stage 0 block"] + [f"stage {s} block" for s in range(2, 8)]
    assert [BLOCK_TYPES[v] for v in extra[0].values] == ["conv", "s2d_conv"]
    assert all([BLOCK_TYPES[v] for v in d.values] == ["fused_irb", "irb"] for d in extra[1:])
    assert x.describe()["vector_length"] == 48 and x.describe()["stages"][4]["blocks"] == ["fused_irb", "irb"]


def test_network_count_of_a_space_with_block_digits_matches_enumeration():
    import itertools

    one = {"filters": [16], "kernel": [3], "expansion": [2], "se": [0], "act": ["relu"], "layers": [1]}
    stages = {s: dict(one) for s in range(2, 8)} | {5: {**one, "layers": [0, 1]}, 7: {**one, "layers": [0, 1]}}
    stages[1] = {"kernel": [3], "act": ["relu"], "layers": [1]}
    space = load_space({"preset": "gpunet-x-tiny", "resolution": [28], "stages": {0: {"filters": [8]}, **stages}})
    vectors = list(itertools.product(*(d.values for d in space.digits)))
    assert len(vectors) == space.num_vectors == 2**7 * 2 * 2
    # a skipped stage's block digit changes nothing: 2 (stem) * 2**4 (stages 2, 3, 4, 6) * 3 * 3 (stages 5, 7)
    networks = {tuple(space.decode(v).layer_specs()) for v in vectors}
    assert space.num_networks == len(networks) == 2 * 2**4 * 3 * 3


def test_gpunet_x_tiny_block_digits_decode_to_the_chosen_blocks_and_round_trip():
    from gpunet.arch import BLOCK_TYPES

    space = load_space("gpunet-x-tiny")
    v = space.sample(1, seed=1)[0].tolist()
    v[41:] = [BLOCK_TYPES.index(b) for b in ("s2d_conv", "irb", "irb", "fused_irb", "fused_irb", "irb", "fused_irb")]
    arch = space.decode(v)
    assert [s.block for s in arch.stages] == ["s2d_conv", "conv", "irb", "irb", "fused_irb", "fused_irb", "irb", "fused_irb"]
    assert arch.layer_specs()[0].describe().startswith("s2d_conv k3 e1 se0 swish s2 1x1x")
    assert space.encode(arch) == v
    assert type(arch).from_dict(arch.to_dict()) == arch
    # Table 2 has no block digits: the tiny space refuses the hybrid network and names the first stage that differs
    with pytest.raises(NotInSpaceError) as info:
        load_space({"preset": "gpunet-tiny", "stages": {0: {"stride": 2}}}).encode(arch)
    assert info.value.field == "stage 0 block"
    with pytest.raises(SpaceError) as bad:
        space.validate(v[:41] + [3, 1, 1, 1, 1, 1, 0])  # stage 7 block 0 (conv) is not a choice
    assert bad.value.field == "stage 7 block" and bad.value.index == 47


def test_a_block_choice_can_be_added_to_a_table_1_stage_by_override():
    space = load_space({"preset": "gpunet", "stages": {4: {"block": ["irb", "fused_irb"]}}})
    assert space.vector_length == 42 and space.digits[41].field == "stage 4 block"
    assert space.stages[4].block == "irb" and space.stages[4].blocks == ("fused_irb", "irb")
    v = space.sample(1, seed=0)[0].tolist()
    v[41], v[22] = 1, 3  # fused IRB, 3 layers
    assert {s.type for s in space.decode(v).layer_specs() if s.stage == 4} == {"fused_irb"}


@pytest.mark.parametrize(
    "override, field",
    [
        ({"preset": "gpunet-x", "stages": {4: {"block": ["irb", "s2d_conv"]}}}, "searchSpace.stages[4].block"),
        ({"preset": "gpunet-x", "stages": {1: {"block": ["conv", "irb"]}}}, "searchSpace.stages[1].block"),
        ({"preset": "gpunet-x", "stages": {0: {"block": "s2d_conv"}}}, "searchSpace.stages[0].block"),
        ({"preset": "gpunet-x-tiny", "stages": {0: {"stride": 1}}}, "searchSpace.stages[0].stride"),
        ({"preset": "gpunet-x-tiny", "resolution": [27, 28]}, "searchSpace.resolution"),
    ],
)
def test_bad_block_choices_name_the_field(override, field):
    with pytest.raises(SpaceError) as info:
        load_space(override)
    assert info.value.field == field, str(info.value)
