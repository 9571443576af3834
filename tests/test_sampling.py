"""Sobol sampling of search spaces, latency tiers and the ``gpunet sample`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpunet.cli import main
from gpunet.latency import LatencyTable, LatencyTarget, Measurement, TierError
from gpunet.cli.support import BUILD_META
from gpunet.sampling import (
    LatencyEstimator,
    LayerGrid,
    canonical_vectors,
    stratify,
    tiers_from_edges,
    tiers_from_targets,
)
from gpunet.space import load_space, preset_names

TARGET = LatencyTarget("onnxruntime", "Test CPU (1 thread)", "fp32", 1)


@pytest.mark.parametrize("preset", preset_names())
def test_sobol_samples_are_deterministic_valid_and_cover_every_digit(preset: str) -> None:
    space = load_space(preset)
    a, b = space.sobol(256, seed=3), space.sobol(256, seed=3)
    assert a.shape == (256, space.vector_length) and a.dtype == np.int64
    assert space.vector_length == (48 if preset.startswith("gpunet-x") else 41)  # Table 2, + 7 block digits
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, space.sobol(256, seed=4))
    for row in a:
        space.validate(row.tolist())  # raises on an invalid vector
    for digit in space.digits:
        assert set(a[:, digit.index].tolist()) == set(digit.values), digit.field


def test_sobol_spreads_each_digit_evenly() -> None:
    space = load_space("gpunet")
    v = space.sobol(1024, seed=0)
    res = space.digits[0]
    counts = np.array([(v[:, 0] == r).sum() for r in res.values])
    assert counts.max() - counts.min() <= 2  # 1024 points over 10 values: ~102 each (uniform draws vary by ~±20)


def test_sobol_continues_a_sequence_with_skip() -> None:
    space = load_space("gpunet-tiny")
    whole = space.sobol(64, seed=1)
    np.testing.assert_array_equal(whole[32:], space.sobol(32, seed=1, skip=32))


def test_canonical_vectors_merge_networks_that_differ_only_in_skipped_stages() -> None:
    space = load_space("gpunet-tiny")
    v = space.sample(200, seed=0)
    c = canonical_vectors(space, v)
    for orig, canon in zip(v[:50], c[:50]):
        assert space.decode(orig.tolist()).layer_specs() == space.decode(canon.tolist()).layer_specs()
    stage5 = [d for d in space.digits if d.stage == 5]
    twins = np.repeat(v[:1], 2, axis=0)
    for d in stage5:
        twins[:, d.index] = [0, 0] if d.attr == "layers" else [d.values[0], d.values[-1]]
    assert not np.array_equal(twins[0], twins[1])
    np.testing.assert_array_equal(*canonical_vectors(space, twins))


def test_grid_counts_unique_layer_keys_of_a_space() -> None:
    space = load_space("gpunet-tiny")
    grid = LayerGrid(space, TARGET)
    assert len(set(grid.digests.tolist())) == len(grid) > 0
    needed = grid.needed_ids(space.sobol(4096, seed=0))
    assert 0.5 * len(grid) < len(needed) <= len(grid)  # many samples reach most of the grid


# --- tiers ---------------------------------------------------------------------------------------------


def test_tiers_from_targets_with_relative_and_absolute_tolerance() -> None:
    rel = tiers_from_targets([0.5, 1.0, 2.0], 0.1)
    assert [(t.low_ms, t.high_ms) for t in rel] == [(0.45, 0.55), (0.9, 1.1), (1.8, 2.2)]
    absolute = tiers_from_targets([0.5, 1.0], "0.05ms")
    assert [(t.low_ms, t.high_ms) for t in absolute] == [(0.45, 0.55), (0.95, 1.05)]
    assert tiers_from_targets([1.0], "10%")[0].high_ms == pytest.approx(1.1)
    with pytest.raises(TierError, match="tolerance"):
        tiers_from_targets([1.0], "wide")
    with pytest.raises(TierError, match="tier target"):
        tiers_from_targets([0.0], 0.1)
    with pytest.raises(TierError, match="strictly increasing"):
        tiers_from_edges([0.0, 1.0, 1.0])


def test_stratify_counts_tiers_and_pools_deterministically() -> None:
    rng = np.random.default_rng(0)
    vectors = load_space("gpunet").sample(5000, seed=0)
    latency = rng.uniform(0.0, 3.0, 5000)
    tiers = tiers_from_edges([0.0, 0.5, 1.0, 2.0, float("inf")])
    pools = stratify(vectors, latency, tiers, pool_size=100)
    assert [p.count for p in pools] == [int(((latency >= t.low_ms) & (latency < t.high_ms)).sum()) for t in tiers]
    assert sum(p.count for p in pools) == 5000
    for p in pools:
        assert len(p.vectors) == 100 and np.all((p.latency_ms >= p.tier.low_ms) & (p.latency_ms < p.tier.high_ms))
        first = np.flatnonzero(p.tier.contains(latency))[:100]  # the first networks in sample order
        np.testing.assert_array_equal(p.vectors, vectors[first])
    again = stratify(vectors, latency, tiers, pool_size=100)
    assert all(np.array_equal(a.vectors, b.vectors) for a, b in zip(pools, again))


def test_stratify_with_space_counts_distinct_networks() -> None:
    space = load_space("gpunet-tiny")
    v = np.repeat(space.sample(10, seed=1), 3, axis=0)
    pools = stratify(v, np.full(30, 1.0), tiers_from_targets([1.0], 0.1), space=space)
    assert pools[0].count == 10


# --- the sample command -----------------------------------------------------------------------------------


def test_cli_sample_writes_tier_counts_and_pools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = load_space("gpunet-tiny")
    grid = LayerGrid(space, TARGET)
    values = np.random.default_rng(0).uniform(0.01, 0.1, len(grid))
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        table.put_many((k, Measurement(float(v), 0.0, 1, "onnxruntime", "placeholder")) for k, v in zip(grid.keys(), values))
        table.set_meta(BUILD_META, {"preset": "gpunet-tiny", "target": TARGET.to_dict()})
    out_file = tmp_path / "tiers.json"
    args = ["tiers", "stratify", "--preset", "gpunet-tiny", "-n", "2000", "--table", str(path), "--tiers", "0.5,0.8",
            "--tolerance", "0.2", "--pool-size", "5", "--out", str(out_file), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    written = json.loads(out_file.read_text())
    with LatencyTable(path, readonly=True) as table:
        est = LatencyEstimator(space, table, TARGET).estimate(space.sobol(2000, 0))
    distinct = stratify(space.sobol(2000, 0), est, tiers_from_targets([0.5, 0.8], 0.2), space=space)
    assert [t["count"] for t in summary["tiers"]] == [p.count for p in distinct]
    assert sum(t["count"] for t in summary["tiers"]) > 0
    for tier in written["tiers"]:
        assert len(tier["pool"]) == min(5, tier["count"]) == len(tier["latency_ms"])
        for vector, ms in zip(tier["pool"], tier["latency_ms"]):
            space.validate(vector)
            assert tier["low_ms"] <= ms < tier["high_ms"]
    assert main(args) == 0  # deterministic for a seed (all but the timing)
    assert {**json.loads(out_file.read_text()), "seconds": 0} == {**written, "seconds": 0}


def test_cli_sample_refuses_networks_with_missing_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = load_space("gpunet-tiny")
    grid = LayerGrid(space, TARGET)
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        table.put_many((k, Measurement(0.05, 0.0, 1, "onnxruntime", "placeholder")) for k in grid.keys()[: len(grid) // 2])
        table.set_meta(BUILD_META, {"preset": "gpunet-tiny", "target": TARGET.to_dict()})
    args = ["tiers", "stratify", "--preset", "gpunet-tiny", "-n", "64", "--table", str(path), "--edges", "0,1,inf",
            "--out", str(tmp_path / "tiers.json"), "--json"]
    assert main(args) == 2
    assert "missing from the latency table" in capsys.readouterr().err
    assert main([*args, "--allow-missing"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["missing"] > 0 and summary["estimated"] + summary["missing"] == 64
    assert sum(t["count"] for t in summary["tiers"]) <= summary["estimated"]
