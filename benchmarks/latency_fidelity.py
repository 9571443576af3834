"""Benchmark: how well the per-layer table estimate predicts end-to-end latency (GPUNet paper, 3.2, Fig. 4).

On ``gpunet-tiny`` with ONNX Runtime on the CPU (1 thread): draw N random networks, measure their layers
into a fresh latency table, measure each network end to end, and report Spearman's rho and Kendall's tau
between the table estimate and the measurement, and the mean relative error of the raw sum and of the
calibrated estimate (in-sample and leave-one-out). Targets: rho >= 0.9, calibrated MRE <= 10%.
Layers and networks are timed with their runs interleaved in ``--rounds`` rounds (all layers of a chunk of
16 / all networks, round-robin), so that bursts of load from other processes on a shared machine spread
over all of them instead of skewing a few.

    .venv/bin/python benchmarks/latency_fidelity.py [-n 60] [--runs 100] [--table T.sqlite]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from gpunet.latency import (  # noqa: E402
    BuildReport,
    LatencyTable,
    build_table,
    compare,
    get_backend,
    network_features,
    required_keys,
)
from gpunet.space import load_space  # noqa: E402


@dataclass
class SampleMeasurement:
    """A latency table filled with the layers of some networks, and those networks measured end to end.

    Attributes:
        measured_ms: end-to-end medians, an ``n`` array (ms).
        features: table features of the networks, ``n x 6`` (:func:`gpunet.latency.network_features`; column 0
            is the table sum in ms).
        layers: unique layer keys of the networks.
        build: the table build of their missing layers (:class:`gpunet.latency.BuildReport`).
        network_seconds: wall time of the end-to-end measurements.
    """

    measured_ms: np.ndarray
    features: np.ndarray
    layers: int
    build: BuildReport
    network_seconds: float


def measure_sample(archs: list, backend, table: LatencyTable, *, group: int | None = None) -> SampleMeasurement:
    """Measure the layers of ``archs`` into ``table`` (missing ones only) and the networks end to end.

    Networks are timed with their runs interleaved (the backend's ``rounds``) within groups of ``group``
    networks (default: all at once); smaller groups keep fewer models and sessions in memory at a time.
    """
    target = backend.target()
    keys = required_keys(target, archs=archs)
    report = build_table(table, backend, keys)
    t0 = time.perf_counter()
    step = group or len(archs)
    measured = np.array([m.median_ms for i in range(0, len(archs), step) for m in backend.measure_networks(archs[i : i + step])])
    seconds = time.perf_counter() - t0
    features = np.stack([network_features(a, table, target) for a in archs])
    return SampleMeasurement(measured, features, len(keys), report, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60)
    parser.add_argument("--preset", default="gpunet-tiny")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the timed runs (1 = none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--table", type=Path, default=None, help="reuse/keep a table (default: a temporary one)")
    args = parser.parse_args()
    space = load_space(args.preset)
    backend = get_backend("onnxruntime", threads=1, runs=args.runs, warmup=args.warmup, rounds=args.rounds)
    target = backend.target()
    archs = [space.decode(v) for v in space.sample(args.n, args.seed)]
    with tempfile.TemporaryDirectory() as tmp:
        sample = measure_sample(archs, backend, LatencyTable(args.table or Path(tmp) / "t.sqlite"))
    print(f"{sample.layers} unique layers of {args.n} networks: {sample.build.measured} measured in "
          f"{sample.build.seconds:.1f} s ({sample.build.layers_per_minute:.0f} layers/min)")
    print(f"{args.n} networks measured end to end in {sample.network_seconds:.1f} s")
    measured, features = sample.measured_ms, sample.features
    print(f"measured end to end: {measured.min():.3f}-{measured.max():.3f} ms (median {np.median(measured):.3f}); "
          f"table sum: {features[:, 0].min():.3f}-{features[:, 0].max():.3f} ms")
    for kind in ("linear", "per-type"):
        r = compare(features, measured, kind, target)
        print(f"[{kind:8s}] n={r.n} spearman={r.spearman:.3f} kendall={r.kendall:.3f} "
              f"MRE raw={r.mre_raw:.1%} calibrated={r.mre_calibrated:.1%} leave-one-out={r.mre_calibrated_cv:.1%} "
              f"sum/measured={r.ratio_raw:.2f}")


if __name__ == "__main__":
    main()
