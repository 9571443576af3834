"""Reading and writing NVIDIA's published GPUNet layer-list JSON."""

from __future__ import annotations

import copy
import json

import pytest

from gpunet import SpaceError, load_space
from gpunet.archs import ARCHS_DIR
from gpunet.nvidia import from_nvidia, load_architecture, to_nvidia

DATA = ARCHS_DIR  # NVIDIA's released layer lists (package data)
NAMES = ["gpunet-0", "gpunet-1", "gpunet-2"]


def _layers(name: str) -> list[dict]:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_published_layer_lists_round_trip(name):
    layers = _layers(name)
    arch = from_nvidia(layers)
    assert to_nvidia(arch) == layers


def test_gpunet_2_stage_table():
    arch = from_nvidia(_layers("gpunet-2"))
    assert arch.resolution == 384 and arch.head_channels == 1280 and arch.num_classes == 1000
    assert [s.layers for s in arch.stages] == [1, 3, 1, 3, 6, 4, 8, 7]
    assert [s.filters for s in arch.stages] == [32, 32, 32, 112, 144, 160, 224, 832]
    assert arch.stages[2].se and arch.stages[2].kernel == 5 and arch.stages[2].expansion == 6
    assert arch.stages[0].act == "swish"  # NVIDIA's builder default for the stem


def test_skipped_stages_are_read_as_zero_layers():
    arch = from_nvidia(_layers("gpunet-0"))
    assert arch.stages[5].layers == 0 and arch.stages[7].layers == 0


@pytest.mark.parametrize("preset", ["gpunet-tiny", "gpunet-small", "gpunet"])
def test_our_architectures_written_in_nvidia_format_read_back(preset):
    space = load_space(preset)
    for v in space.sample(50, seed=11):
        arch = space.decode(v.tolist())
        again = from_nvidia(to_nvidia(arch), stem_act=space.stem_act)
        assert again.layer_specs() == arch.layer_specs()
        assert space.encode(again) == space.encode(arch) or any(s.layers == 0 for s in arch.stages)


def _mutate(name, index, key, value):
    layers = copy.deepcopy(_layers(name))
    layers[index][key] = value
    return layers


@pytest.mark.parametrize(
    "layers, field",
    [
        ({"layer_type": "data"}, "layer list"),
        ([], "layer list"),
        (_mutate("gpunet-2", 0, "layer_type", "input"), "layers[0].layer_type"),
        (_mutate("gpunet-2", 0, "distill", True), "layers[0].distill"),
        (_mutate("gpunet-2", 3, "kernel_size", 5), "layers[3].kernel_size"),  # differs from its stage
        (_mutate("gpunet-2", 3, "stride", 2), "layers[3].stride"),
        (_mutate("gpunet-2", 5, "layer_type", "transformer"), "layers[5].layer_type"),
        (_mutate("gpunet-2", 5, "act", "gelu"), "layers[5].act"),
        (_mutate("gpunet-2", 6, "num_in_channels", 33), "layers[6].num_in_channels"),
        (_mutate("gpunet-2", 6, "stage", 9), "layers[6].stage"),
        (_mutate("gpunet-2", -1, "num_classes", 0), "layers[34].num_classes"),
    ],
)
def test_malformed_layer_lists_name_the_entry(layers, field):
    with pytest.raises(SpaceError) as info:
        from_nvidia(layers)
    assert info.value.field == field, str(info.value)


def test_load_architecture_tells_formats_apart(tmp_path):
    arch = from_nvidia(_layers("gpunet-1"))
    ours = tmp_path / "ours.json"
    ours.write_text(arch.to_json())
    assert load_architecture(ours) == arch
    assert load_architecture(DATA / "gpunet-1.json") == arch
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpaceError, match="valid JSON"):
        load_architecture(bad)
    with pytest.raises(SpaceError, match="existing JSON file"):
        load_architecture(tmp_path / "missing.json")


def test_a_space_to_depth_stem_has_no_nvidia_layer_list():
    from gpunet.arch import BLOCK_TYPES

    space = load_space("gpunet-x-tiny")
    vector = space.sample(1, seed=0)[0]
    vector[41] = BLOCK_TYPES.index("s2d_conv")
    with pytest.raises(SpaceError, match="stage 0 block"):
        to_nvidia(space.decode(vector))
    vector[41] = BLOCK_TYPES.index("conv")  # the hybrid stages are NVIDIA's blocks, so that network is written
    assert to_nvidia(space.decode(vector))[1]["layer_type"] == "head"
