"""Latency-key digests are the primary key of every stored table: they are pinned here, and a table written
before layer shapes got their one derivation (issue 9) is still read and hit."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpunet.arch import LayerSpec
from gpunet.latency import LatencyTable, LatencyTarget, LayerKey, estimate_latency, layer_keys
from gpunet.sampling import LatencyEstimator, LayerGrid
from gpunet.space import load_space

CPU = LatencyTarget("onnxruntime", "Test CPU (1 thread)", "fp32", 1)
GPU = LatencyTarget("tensorrt", "NVIDIA H100 80GB HBM3", "fp16", 1)
#: (layer, target) -> digest, as computed by the code that wrote the tables in use (before issue 9).
PINNED = [
    (LayerSpec("irb", (1, 48, 14, 14), 64, kernel=5, stride=2, expansion=4, se=True, act="swish"), CPU, "249e8634e497619b"),
    (LayerSpec("irb", (1, 48, 14, 14), 64, kernel=5, stride=2, expansion=4, se=True, act="swish"), GPU, "1c253b6a8e091646"),
    (LayerSpec("conv", (1, 3, 224, 224), 32, kernel=3, stride=2, act="swish"), CPU, "70151630a1d15974"),
    (LayerSpec("conv", (1, 3, 224, 224), 32, kernel=3, stride=2, act="swish"), GPU, "8b4bcf68c9e3582b"),
    (LayerSpec("fused_irb", (1, 32, 112, 112), 48, kernel=3, stride=2, expansion=6, act="relu"), GPU, "0ffb33acedb8c4ec"),
    (LayerSpec("head", (1, 256, 7, 7), 1792, act="relu", num_classes=1000, stage=8), CPU, "d37b60ca93567889"),
    # EfficientNet-X's space-to-depth stem (issue 12), pinned from its first version on
    (LayerSpec("s2d_conv", (1, 3, 224, 224), 32, kernel=3, stride=2, act="swish"), CPU, "920663af8b31ae13"),
]
#: Number of keys and a hash of all digests in key-number order of each preset's grid (onnxruntime CPU target).
GRIDS = {"gpunet-tiny": (823, "e93a827a1682dbf9"), "gpunet-small": (6405, "2232fe8464db614b"),
         "gpunet-x-tiny": (1435, "d99602fcf0c0933c")}  # issue 12: pinned from its first version on
FIXTURE = Path(__file__).parent / "data" / "latency" / "pre_issue9_gpunet_tiny.sqlite"
#: The four networks of the fixture table and their table estimates (ms, placeholder values) as written.
FIXTURE_TARGET = LatencyTarget("onnxruntime", "Table Fixture CPU (1 thread)", "fp32", 1)
FIXTURE_NETWORKS = [
    ([28, 8, 5, 0, 1, 16, 5, 2, 1, 0, 2, 32, 5, 4, 0, 0, 2, 32, 3, 2, 0, 0, 2, 64, 3, 4, 1, 0, 0, 96, 3, 2, 0, 0, 1,
      96, 3, 2, 0, 1, 0], 1.146),
    ([32, 16, 3, 1, 2, 24, 3, 4, 0, 1, 1, 24, 3, 2, 1, 1, 1, 48, 5, 4, 1, 1, 1, 48, 5, 2, 0, 1, 1, 64, 5, 4, 1, 1, 2,
      128, 5, 4, 1, 0, 1], 1.0114),
    ([32, 8, 5, 0, 2, 24, 5, 4, 0, 1, 1, 24, 5, 4, 1, 0, 1, 32, 5, 2, 0, 1, 2, 64, 3, 2, 1, 1, 0, 64, 3, 2, 0, 1, 2,
      128, 3, 2, 0, 1, 0], 1.099),
    ([28, 16, 3, 1, 1, 16, 3, 2, 1, 0, 2, 32, 3, 2, 0, 1, 2, 48, 3, 4, 1, 0, 1, 48, 5, 4, 0, 0, 2, 96, 5, 4, 1, 0, 1,
      96, 5, 4, 1, 0, 2], 1.6661),
]


@pytest.mark.parametrize("spec, target, digest", PINNED)
def test_layer_key_digests_are_pinned(spec: LayerSpec, target: LatencyTarget, digest: str) -> None:
    key = LayerKey.from_spec(spec, target)
    assert key.digest == digest, key.text
    assert LayerKey.from_dict(key.to_dict()).digest == digest
    assert key.text.startswith(spec.describe() + " | ")


@pytest.mark.parametrize("preset", sorted(GRIDS))
def test_grid_keys_and_their_order_are_pinned(preset: str) -> None:
    grid = LayerGrid(load_space(preset), CPU)
    count, digest = GRIDS[preset]
    assert len(grid) == count
    assert hashlib.blake2b("\n".join(grid.digests.tolist()).encode(), digest_size=8).hexdigest() == digest
    assert [k.digest for k in grid.keys(range(0, len(grid), 97))] == grid.digests[::97].tolist()


def test_a_table_written_before_issue_9_is_read_and_hit(tmp_path: Path) -> None:
    path = tmp_path / "table.sqlite"
    shutil.copyfile(FIXTURE, path)  # a copy: opening a WAL database writes its -shm file next to it
    space = load_space("gpunet-tiny")
    vectors = np.asarray([v for v, _ in FIXTURE_NETWORKS])
    with LatencyTable(path, readonly=True) as table:
        for vector, expected_ms in FIXTURE_NETWORKS:
            arch = space.decode(vector)
            assert all(k in table for k in layer_keys(arch, FIXTURE_TARGET))
            assert estimate_latency(arch, table, FIXTURE_TARGET) == pytest.approx(expected_ms, abs=1e-9)
        estimator = LatencyEstimator(space, table, FIXTURE_TARGET)
        assert estimator.missing_keys(vectors) == []
        np.testing.assert_allclose(estimator.estimate(vectors), [ms for _, ms in FIXTURE_NETWORKS], atol=1e-9)
