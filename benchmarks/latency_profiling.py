"""Benchmark: layers profiled per minute per process, and the number of unique layer keys of each preset.

Profiling rate: measure ``--layers`` layers drawn from Sobol samples of ``gpunet-tiny`` and ``gpunet-small``
(``--gpunet-layers`` of the full ``gpunet`` space) with each CPU backend at 1 thread, ``--runs`` timed runs
each (interleaved in the CPU default of 10 rounds per chunk of 16 layers); the rate includes
building, exporting (ONNX Runtime) and warm-up, i.e. what a profiler worker does per key.
Unique keys: the size of :class:`gpunet.sampling.LayerGrid` of each preset (every layer configuration its
networks can contain), and how many of them 10,000 Sobol samples need.

    .venv/bin/python benchmarks/latency_profiling.py [--layers 40] [--runs 50]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from gpunet.latency import LatencyTarget, get_backend, measure_keys  # noqa: E402
from gpunet.sampling import LayerGrid  # noqa: E402
from gpunet.space import load_space, preset_names  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--gpunet-layers", type=int, default=6, help="layers of the full gpunet preset (224-512 px)")
    args = parser.parse_args()

    print("unique layer keys per preset (one target):")
    for preset in preset_names():
        space = load_space(preset)
        t0 = time.perf_counter()
        grid = LayerGrid(space, LatencyTarget())
        took = time.perf_counter() - t0
        needed = len(grid.needed_ids(space.sobol(10_000, seed=0)))
        print(f"  {preset:13s} {len(grid):>8,} keys (grid built in {took:.2f} s); 10,000 Sobol samples need {needed:,}")

    for preset, n_layers in (("gpunet-tiny", args.layers), ("gpunet-small", args.layers), ("gpunet", args.gpunet_layers)):
        space = load_space(preset)
        for name in ("onnxruntime", "torch"):
            backend = get_backend(name, threads=1, runs=args.runs, warmup=args.warmup)
            grid = LayerGrid(space, backend.target())
            ids = grid.needed_ids(space.sobol(16, seed=0))
            ids = ids[np.random.default_rng(0).permutation(len(ids))[:n_layers]]  # a mix of stages
            keys = grid.keys(ids)
            measure_keys(keys[:1], backend)  # first-call costs (imports, exporter warm-up) not counted
            t0 = time.perf_counter()
            results = measure_keys(keys, backend)
            took = time.perf_counter() - t0
            median_layer = sorted(m.median_ms for _, m in results)[len(results) // 2]
            print(f"{preset:13s} {name:12s}: {len(keys)} layers in {took:.1f} s = {60 * len(keys) / took:.0f} layers/min "
                  f"per process ({args.runs} timed runs each; median layer {median_layer:.3f} ms)")
            backend.close()


if __name__ == "__main__":
    main()
