"""Network estimates: the sum of table entries, the vectorised estimator, calibration, profiling work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpunet.cli import main
from gpunet.latency import (
    Calibration,
    LatencyError,
    LatencyTable,
    LatencyTarget,
    Measurement,
    backend_from_config,
    MissingLayersError,
    ProfileBatch,
    compare,
    estimate_latency,
    fit_calibration,
    layer_keys,
    load_calibration,
    measure_batch,
    plan_profiling,
    required_keys,
    results_from_dicts,
    split_batches,
)
from gpunet.cli.support import BUILD_META
from gpunet.sampling import LatencyEstimator, LayerGrid
from gpunet.space import load_space, preset_names

TARGET = LatencyTarget("onnxruntime", "Test CPU (1 thread)", "fp32", 1)


def placeholder_medians(grid: LayerGrid, seed: int = 0) -> dict[str, float]:
    """Random positive latencies for every key of a grid (placeholders, not measurements)."""
    values = np.random.default_rng(seed).uniform(0.01, 1.0, len(grid))
    return dict(zip(grid.digests.tolist(), values.tolist()))


def filled_table(path: Path, space_name: str, n_keys: int | None = None) -> tuple[LatencyTable, LayerGrid]:
    grid = LayerGrid(load_space(space_name), TARGET)
    medians = placeholder_medians(grid)
    table = LatencyTable(path)
    keys = grid.keys()[:n_keys]
    table.put_many((k, Measurement(medians[k.digest], 0.0, 1, "onnxruntime", "placeholder")) for k in keys)
    return table, grid


def test_estimate_equals_sum_of_table_entries(tmp_path: Path) -> None:
    table, _ = filled_table(tmp_path / "t.sqlite", "gpunet-tiny")
    space = load_space("gpunet-tiny")
    for vector in space.sample(5, seed=1):
        arch = space.decode(vector)
        keys = layer_keys(arch, TARGET)
        assert len(keys) == arch.num_layers
        expected = sum(table.get(k).median_ms for k in keys)
        assert estimate_latency(arch, table, TARGET) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("preset", preset_names())
def test_vectorised_estimator_equals_scalar_sum_on_random_architectures(preset: str) -> None:
    space = load_space(preset)
    grid = LayerGrid(space, TARGET)
    medians = placeholder_medians(grid, seed=7)
    estimator = LatencyEstimator(space, medians, TARGET, grid=grid)
    vectors = np.concatenate([space.sample(40, seed=2), space.sobol(24, seed=5)])
    fast = estimator.estimate(vectors)
    slow = [sum(medians[k.digest] for k in layer_keys(space.decode(v), TARGET)) for v in vectors]
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    # and every layer a network has is a key of the grid
    assert all(k.digest in medians for v in vectors[:5] for k in layer_keys(space.decode(v), TARGET))


def test_a_measured_table_estimates_gpunet_x_tiny_networks(tmp_path: Path) -> None:
    from gpunet.arch import BLOCK_TYPES
    from gpunet.latency import build_table, get_backend, network_features

    backend = get_backend("onnxruntime", threads=1, runs=3, warmup=1)
    target = backend.target()
    space = load_space("gpunet-x-tiny")
    vectors = space.sobol(2, seed=1)
    vectors[:, 41] = [BLOCK_TYPES.index("s2d_conv"), BLOCK_TYPES.index("conv")]  # stage 0 block digit
    archs = [space.decode(v) for v in vectors]
    keys = required_keys(target, archs=archs)
    s2d = [k for k in keys if k.type == "s2d_conv"]
    assert len(s2d) == 1 and s2d[0].stride == 2 and s2d[0].input_shape[1] == 1
    with LatencyTable(tmp_path / "t.sqlite") as table:
        assert build_table(table, backend, keys).measured == len(keys)
        assert table.missing(keys) == []
        estimator = LatencyEstimator(space, table, target)
        fast = estimator.estimate(vectors)
        slow = [estimate_latency(a, table, target) for a in archs]
        np.testing.assert_allclose(fast, slow, rtol=1e-12)
        assert (fast > 0).all()
        # the space-to-depth stem is a conv for the calibration features, in both paths
        features = np.stack([network_features(a, table, target) for a in archs])
        np.testing.assert_allclose(estimator.grid.features(vectors, estimator.values), features, rtol=1e-12)
        assert features[0, 1] >= table.get(s2d[0]).median_ms
        np.testing.assert_allclose(features[:, 1:5].sum(axis=1), features[:, 0], rtol=1e-12)


def test_missing_layers_raise_with_the_missing_keys(tmp_path: Path) -> None:
    space = load_space("gpunet-tiny")
    table, grid = filled_table(tmp_path / "t.sqlite", "gpunet-tiny", n_keys=100)
    arch = space.decode(space.sample(1, seed=9)[0])
    with pytest.raises(MissingLayersError, match="missing from the latency table") as info:
        estimate_latency(arch, table, TARGET)
    assert info.value.keys and all(k not in table for k in info.value.keys)
    vectors = space.sample(30, seed=3)
    estimator = LatencyEstimator(space, table, TARGET, grid=grid)
    with pytest.raises(MissingLayersError):
        estimator.estimate(vectors)
    partial = estimator.estimate(vectors, allow_missing=True)
    assert np.isnan(partial).any()
    assert {k.digest for k in estimator.missing_keys(vectors)} == {
        k.digest for k in table.missing(required_keys(TARGET, vectors=vectors, space=space))}


def test_linear_calibration_removes_a_systematic_overestimate() -> None:
    rng = np.random.default_rng(0)
    features = np.zeros((30, 6))
    features[:, 0] = rng.uniform(0.5, 3.0, 30)
    measured = 0.75 * features[:, 0] + 0.05  # the paper's sum overestimates end-to-end latency (Fig. 4)
    report = compare(features, measured, "linear")
    assert report.mre_raw > 0.15
    assert report.mre_calibrated < 1e-9 and report.mre_calibrated_cv < 1e-9
    assert report.calibration.coef[0] == pytest.approx(0.75) and report.calibration.intercept == pytest.approx(0.05)
    assert report.spearman == pytest.approx(1.0) and report.kendall == pytest.approx(1.0)


def test_per_type_calibration_fits_per_type_scales_and_layer_overhead() -> None:
    rng = np.random.default_rng(1)
    f = np.zeros((40, 6))
    f[:, 1:5] = rng.uniform(0.1, 1.0, (40, 4))
    f[:, 0] = f[:, 1:5].sum(1)
    f[:, 5] = rng.integers(5, 20, 40)
    measured = f[:, 1:5] @ [0.9, 0.8, 0.7, 1.0] - 0.01 * f[:, 5] + 0.3
    cal = fit_calibration(f, measured, "per-type")
    np.testing.assert_allclose(cal.apply(f), measured, rtol=1e-9)
    assert compare(f, measured, "linear").mre_calibrated > compare(f, measured, "per-type").mre_calibrated


@pytest.mark.parametrize("stored, field", [
    ({"kind": "cubic", "coef": [1.0], "intercept": 0.0}, "calibration kind"),
    ({"kind": "linear", "coef": [1.0, 2.0], "intercept": 0.0}, "calibration coef"),
    ({"kind": "per-type", "coef": "1,2,3", "intercept": 0.0}, "calibration coef"),
    ({"kind": "linear", "coef": [1.0], "intercept": None}, "calibration intercept"),
    (["linear", 1.0], "calibration"),
])
def test_a_bad_stored_calibration_names_its_field(stored, field) -> None:
    with pytest.raises(LatencyError) as info:
        Calibration.from_dict(stored)
    assert info.value.field == field, str(info.value)
    good = fit_calibration(np.array([[1.0, 0, 0, 0, 0, 3], [2.0, 0, 0, 0, 0, 5], [3.0, 0, 0, 0, 0, 7]]), [0.9, 1.8, 2.7])
    assert Calibration.from_dict(json.loads(json.dumps(good.to_dict()))) == good


# --- profiling work -----------------------------------------------------------------------------------


def test_profiling_plan_covers_exactly_the_missing_keys_in_batches(tmp_path: Path) -> None:
    space = load_space("gpunet-tiny")
    table, grid = filled_table(tmp_path / "t.sqlite", "gpunet-tiny", n_keys=300)
    vectors = space.sobol(64, seed=0)
    batches = plan_profiling(table, TARGET, vectors=vectors, space=space, batch_size=16)
    keys = [k for b in batches for k in b.keys]
    needed = required_keys(TARGET, vectors=vectors, space=space)
    assert {k.digest for k in keys} == {k.digest for k in needed if k not in table}
    assert len(keys) == len({k.digest for k in keys})  # no key in two batches
    assert all(len(b.keys) <= 16 for b in batches) and len(batches) == -(-len(keys) // 16)
    again = plan_profiling(table, TARGET, vectors=vectors, space=space, batch_size=16)
    assert [b.batch_id for b in again] == [b.batch_id for b in batches]  # deterministic
    wire = json.loads(json.dumps(batches[0].to_dict()))
    assert ProfileBatch.from_dict(wire) == batches[0]


def test_profiler_measures_a_batch_from_its_wire_form(tmp_path: Path) -> None:
    backend_config = {"backend": "onnxruntime", "threads": 1, "runs": 3, "warmup": 1}
    target = backend_from_config(backend_config).target()
    space = load_space("gpunet-tiny")
    keys = required_keys(target, archs=[space.decode(space.sample(1, seed=2)[0])])[:3]
    batch = split_batches(keys, batch_size=8)[0]
    results = results_from_dicts(json.loads(json.dumps(measure_batch(batch.to_dict(), backend_config))))
    assert [k for k, _ in results] == keys and all(m.median_ms > 0 for _, m in results)
    with LatencyTable(tmp_path / "t.sqlite") as table:
        table.put_many(results)
        assert table.missing(keys) == []


# --- CLI --------------------------------------------------------------------------------------------------


def test_cli_estimate_prints_latency_and_layer_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, _ = filled_table(tmp_path / "t.sqlite", "gpunet-tiny")
    table.set_meta(BUILD_META, {"preset": "gpunet-tiny", "target": TARGET.to_dict()})
    space = load_space("gpunet-tiny")
    vector = space.sample(1, seed=11)[0]
    assert main(["latency", "estimate", ",".join(map(str, vector)), "--table", str(tmp_path / "t.sqlite"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"latency_ms", "layers"}
    assert out["latency_ms"] == pytest.approx(estimate_latency(space.decode(vector), table, TARGET))
    assert out["layers"] == space.decode(vector).num_layers


@pytest.mark.slow
def test_cli_validate_reports_rank_correlation_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "t.sqlite")
    assert main(["latency", "build", "--preset", "gpunet-tiny", "--table", path, "--samples", "1", "--runs", "5",
                 "--warmup", "1", "--json"]) == 0
    capsys.readouterr()
    assert main(["latency", "validate", "--table", path, "-n", "4", "--runs", "5", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 4 and -1 <= out["spearman"] <= 1 and -1 <= out["kendall"] <= 1
    assert out["mre_raw"] > 0 and out["mre_calibrated"] >= 0
    with LatencyTable(path, readonly=True) as table:
        target = LatencyTarget.from_dict(table.get_meta(BUILD_META)["target"])
        assert load_calibration(table, target) is not None
