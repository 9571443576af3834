"""The one derivation of layer shapes (gpunet.arch.stage_layers / head_layer): rules, and the same answer on
scalars (model builder, latency keys) and on arrays (the vectorised estimator)."""

from __future__ import annotations

import numpy as np

from gpunet.arch import ACTIVATIONS, BLOCKS, LayerSpec, head_layer, stage_layers
from gpunet.latency import LatencyTarget, layer_keys
from gpunet.sampling import LayerGrid
from gpunet.space import load_space

TARGET = LatencyTarget("onnxruntime", "Test CPU (1 thread)", "fp32", 1)


def test_first_layer_carries_the_stride_and_repeats_take_its_output_at_stride_1() -> None:
    first, repeat = stage_layers("irb", 2, 48, 15, 64, 5, 4, True, "swish", batch_size=2, stage=4)
    assert first == LayerSpec("irb", (2, 48, 15, 15), 64, 5, 2, 4, True, "swish", 0, 4)
    assert first.output_shape == (2, 64, 8, 8)  # 'same' padding: ceil(15 / 2)
    assert repeat == LayerSpec("irb", (2, 64, 8, 8), 64, 5, 1, 4, True, "swish", 0, 4)
    assert repeat.output_shape == repeat.input_shape
    head = head_layer(64, 8, 1792, "relu", 10, batch_size=2)
    assert head.output_shape == (2, 10, 1, 1) and head.describe() == "head k1 e1 se0 relu s1 2x64x8x8->1792 cls10"


def test_block_rules_drop_attributes_a_block_type_does_not_use() -> None:
    assert not BLOCKS["conv"].uses_expansion and not BLOCKS["conv"].uses_se
    assert BLOCKS["irb"].uses_expansion and BLOCKS["fused_irb"].uses_se
    plain, _ = stage_layers("conv", 1, 16, 32, 16, 3, 1, False, "relu")
    ignored, _ = stage_layers("conv", 1, 16, 32, 16, 3, 6, True, "relu")
    assert ignored == plain and (ignored.expansion, ignored.se) == (1, False)


def test_array_arguments_give_the_scalar_answer_elementwise() -> None:
    rng = np.random.default_rng(0)
    n = 50
    args = dict(in_chs=rng.choice([16, 24, 32], n), size=rng.choice([28, 29, 56], n), filters=rng.choice([32, 48], n),
                kernel=rng.choice([3, 5], n), expansion=rng.integers(1, 7, n), se=rng.integers(0, 2, n),
                act=rng.integers(0, 2, n))
    for block in BLOCKS:
        first, repeat = stage_layers(block, 2, *args.values())
        out = first.output_shape
        for i in range(n):
            scalar = {k: int(v[i]) for k, v in args.items()}
            f, r = stage_layers(block, 2, *scalar.values())
            assert (f.in_chs, f.input_shape[2], f.out_chs, f.expansion, int(f.se)) == (
                first.in_chs[i], first.input_shape[2][i], first.out_chs[i],
                np.broadcast_to(first.expansion, n)[i], np.broadcast_to(first.se, n)[i])
            assert f.output_shape[1:3] == (out[1][i], out[2][i])
            assert r.input_shape[1:3] == (repeat.input_shape[1][i], repeat.input_shape[2][i])


def test_the_grid_holds_exactly_the_keys_of_decoded_networks() -> None:
    space = load_space("gpunet-tiny")
    grid = LayerGrid(space, TARGET)
    vectors = space.sobol(256, seed=3)
    ids, counts = grid.layer_ids(vectors)
    for row, (vector, cnt) in enumerate(zip(vectors, counts)):
        from_grid = sorted(grid.digests[i] for i, c in zip(ids[row], cnt) for _ in range(c))
        from_arch = sorted(k.digest for k in layer_keys(space.decode(vector), TARGET))
        assert from_grid == from_arch
    assert set(ACTIVATIONS) >= {grid.key(i).act for i in range(len(grid))}
