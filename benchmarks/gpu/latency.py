"""Latency sections of the GPU suite (GPUNet paper, 3.2 and Fig. 4; Table "Main Results" of 4.2).

- :func:`fidelity`: a latency table of every layer of N Sobol-sampled networks, measured with the given backend
  (torch CUDA FP16, CUDA graphs, CUDA events on the GPU), against the same networks measured end to end,
  interleaved: Spearman's rho, Kendall's tau, raw and calibrated mean relative errors, and the mean ratio of the
  table sum to the end-to-end latency (the paper's "table about 75% higher", caused by fusion in TensorRT).
- :func:`released`: NVIDIA's GPUNet-0/1/2 end to end, next to the paper's GV100 TensorRT figures.
- :func:`sampling`: Sobol sampling, table estimate and stratification of many networks against that table.

Each takes a ``deadline`` (``time.perf_counter()`` seconds) and stops measuring when it is reached, saying so in
its ``status``; figures then cover what was measured.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from gpunet.archs import released_path
from gpunet.latency import LatencyTable, build_table, compare, layer_keys, network_features
from gpunet.latency.backends import LatencyBackend
from gpunet.latency.estimate import Calibration
from gpunet.nvidia import load_architecture
from gpunet.sampling import LatencyEstimator, LayerGrid, stratify, tiers_from_targets
from gpunet.space import load_space

#: GPUNet paper, 4.2 (main results table): TensorRT 8.0.1 FP16 GPU compute time on a GV100, batch 1, in ms.
PAPER_GV100_TENSORRT_MS = {"gpunet0": 0.62, "gpunet1": 0.82, "gpunet2": 1.76}
#: Networks measured end to end together (their runs interleaved); the time guard is checked between groups.
E2E_GROUP = 32
#: Relative tolerance of the sampling tiers around each target.
TIER_TOLERANCE = 0.1


def stop_at(deadline: float) -> Callable[[], bool]:
    return lambda: time.perf_counter() >= deadline


def fidelity(layer_backend: LatencyBackend, network_backend: LatencyBackend, table: LatencyTable, preset: str,
             networks: int, seed: int, deadline_table: float, deadline: float) -> tuple[dict[str, Any], Calibration | None]:
    """Fig. 4 on one target: table sum against end-to-end latency of ``networks`` Sobol samples of ``preset``.

    Layers are measured with ``layer_backend`` network by network (so a time guard leaves whole networks measured)
    until ``deadline_table``; networks are then measured end to end with ``network_backend`` (same target, other run
    counts) until ``deadline``, in interleaved groups of :data:`E2E_GROUP`.

    Returns:
        ``(result, calibration)``: the JSON block (``n``, ``spearman``, ``kendall``, ``mre_raw``,
        ``mre_calibrated``, ``mean_ratio_table_to_e2e``, ...) and the linear calibration fitted on the ``n`` networks
        (None when fewer than 4 were measured).
    """
    space = load_space(preset)
    target = layer_backend.target()
    archs = [space.decode(v.tolist()) for v in space.sobol(networks, seed=seed)]
    per_network = [list(dict.fromkeys(layer_keys(a, target))) for a in archs]
    ordered = list({k.digest: k for keys in per_network for k in keys}.values())
    report = build_table(table, layer_backend, ordered, should_stop=stop_at(deadline_table))
    done = table.medians(target)
    covered = [a for a, keys in zip(archs, per_network) if all(k.digest in done for k in keys)]
    measured: list[float] = []
    for start in range(0, len(covered), E2E_GROUP):
        if time.perf_counter() >= deadline:
            break
        measured += [m.median_ms for m in network_backend.measure_networks(covered[start : start + E2E_GROUP])]
    archs_done = covered[: len(measured)]
    result: dict[str, Any] = {
        "preset": preset, "networks_sampled": networks, "n": len(measured),
        "layer_keys": len(ordered), "layer_keys_measured": report.measured,
        "table_seconds": round(report.seconds, 2), "layers_per_minute": round(report.layers_per_minute, 1),
        "status": "ok" if len(measured) == networks else
                  f"partial: time guard after {len(measured)} of {networks} networks",
    }
    if len(measured) < 4:
        return {**result, "status": f"too few networks measured ({len(measured)}); need 4"}, None
    features = np.stack([network_features(a, table, target) for a in archs_done])
    y = np.asarray(measured)
    linear = compare(features, y, "linear", target)
    ratio = features[:, 0] / y
    result.update(
        spearman=linear.spearman, kendall=linear.kendall, mre_raw=linear.mre_raw, mre_calibrated=linear.mre_calibrated,
        mre_calibrated_loo=linear.mre_calibrated_cv, mean_ratio_table_to_e2e=float(ratio.mean()),
        median_ratio_table_to_e2e=float(np.median(ratio)),
        e2e_ms={"min": float(y.min()), "median": float(np.median(y)), "max": float(y.max())},
        table_sum_ms={"min": float(features[:, 0].min()), "median": float(np.median(features[:, 0])),
                      "max": float(features[:, 0].max())},
        calibration=linear.calibration.to_dict(),
    )
    if len(y) >= 8:  # the per-type calibration has 6 coefficients
        per_type = compare(features, y, "per-type", target)
        result["mre_calibrated_per_type"] = per_type.mre_calibrated
        result["mre_calibrated_per_type_loo"] = per_type.mre_calibrated_cv
    return result, linear.calibration


def released(backend: LatencyBackend) -> dict[str, Any]:
    """NVIDIA's GPUNet-0/1/2 (``gpunet/archs``) end to end on ``backend``, measured together (interleaved)."""
    from gpunet.model import model_stats

    names = {"gpunet0": "gpunet-0", "gpunet1": "gpunet-1", "gpunet2": "gpunet-2"}
    archs = {key: load_architecture(released_path(name)) for key, name in names.items()}
    measurements = backend.measure_networks(list(archs.values()))
    out: dict[str, Any] = {}
    for (key, arch), m in zip(archs.items(), measurements):
        out[key] = {"latency_ms": m.median_ms, "spread_ms": m.spread_ms, "runs": m.runs, "resolution": arch.resolution,
                    "params_m": round(model_stats(arch).params_m, 2),
                    "paper_gv100_tensorrt_ms": PAPER_GV100_TENSORRT_MS[key]}
    on_gpu = getattr(getattr(backend, "torch_device", None), "type", "") == "cuda"
    out["note"] = (f"{backend.version()} {backend.precision}, batch 1, on {backend.device_name()}"
                   + (": CUDA graphs timed with CUDA events, not TensorRT" if on_gpu else "")
                   + "; the paper's figures are TensorRT 8.0.1 FP16 GPU compute time on a GV100")
    out["status"] = "ok"
    return out


def sampling(table: LatencyTable, backend: LatencyBackend, preset: str, n: int, seed: int,
             calibration: Calibration | None, targets_ms: list[float], layers_per_minute: float | None) -> dict[str, Any]:
    """Sobol-sample ``n`` networks of ``preset``, estimate them from ``table`` and stratify them (paper 3.2).

    The table holds the layers of the fidelity networks only, so most sampled networks have a layer it lacks: their
    estimate is NaN and they are in no tier (``covered`` counts the others). ``full_table_minutes`` is how long
    measuring every layer key of the space would take at the rate the table was built.
    """
    space = load_space(preset)
    target = backend.target()
    t0 = time.perf_counter()
    grid = LayerGrid(space, target)
    t_grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    estimator = LatencyEstimator(space, table, target, calibration=calibration, grid=grid)
    vectors = space.sobol(n, seed=seed)
    t_sobol = time.perf_counter() - t0
    t0 = time.perf_counter()
    latency = estimator.estimate(vectors, calibrated=calibration is not None, allow_missing=True)
    t_estimate = time.perf_counter() - t0
    t0 = time.perf_counter()
    pools = stratify(vectors, latency, tiers_from_targets(targets_ms, TIER_TOLERANCE), pool_size=1000)
    t_stratify = time.perf_counter() - t0
    covered = int(np.isfinite(latency).sum())
    in_table = int(np.isfinite(estimator.values[:-1]).sum())
    return {
        "preset": preset, "networks": n, "seconds": t_sobol + t_estimate + t_stratify,
        "seconds_sobol": t_sobol, "seconds_estimate": t_estimate, "seconds_stratify": t_stratify,
        "seconds_grid": t_grid, "calibrated": calibration is not None, "covered": covered,
        "layer_keys_space": len(grid), "layer_keys_in_table": in_table,
        "full_table_minutes": round(len(grid) / layers_per_minute, 1) if layers_per_minute else None,
        "tiers": [{**p.tier.to_dict(), "count": p.count} for p in pools],
        "status": "ok",
    }
