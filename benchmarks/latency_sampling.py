"""Benchmark: Sobol-sample and estimate 1,000,000 ``gpunet``-preset networks against a filled latency table.

The paper (section 3.2): "we can get millions of samples within a minute". Target here: <= 10 s on two
cores for sampling + estimating. The table is a real SQLite latency table, but its values are PLACEHOLDERS
(random numbers, one per layer key of the space): this measures speed, not latency fidelity.

    .venv/bin/python benchmarks/latency_sampling.py [-n 1000000] [--preset gpunet]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # fixed thread count: numpy/BLAS single-threaded

import numpy as np  # noqa: E402

from gpunet.latency import LatencyTable, LatencyTarget, Measurement  # noqa: E402
from gpunet.sampling import LatencyEstimator, LayerGrid, stratify, tiers_from_targets  # noqa: E402
from gpunet.space import load_space  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--preset", default="gpunet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    space = load_space(args.preset)
    target = LatencyTarget("tensorrt", "placeholder GPU", "fp16", 1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        grid = LayerGrid(space, target)
        t_grid = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        # placeholder medians: ~0.005-0.05 ms per layer, so whole networks land around GPUNet's 0.5-2 ms
        values = rng.uniform(0.005, 0.05, len(grid))
        path = Path(tmp) / "placeholder.sqlite"
        t0 = time.perf_counter()
        with LatencyTable(path) as table:
            table.put_many((k, Measurement(float(v), 0.0, 1, "tensorrt", "PLACEHOLDER")) for k, v in zip(grid.keys(), values))
        t_fill = time.perf_counter() - t0

        t_start = time.perf_counter()
        table = LatencyTable(path, readonly=True)
        estimator = LatencyEstimator(space, table, target, grid=grid)
        t_load = time.perf_counter() - t_start
        t0 = time.perf_counter()
        vectors = space.sobol(args.n, args.seed)
        t_sobol = time.perf_counter() - t0
        t0 = time.perf_counter()
        latency = estimator.estimate(vectors)
        t_est = time.perf_counter() - t0
        t0 = time.perf_counter()
        pools = stratify(vectors, latency, tiers_from_targets([0.6, 0.85, 1.2, 1.75], 0.05), pool_size=1000)
        t_strat = time.perf_counter() - t0
        total = time.perf_counter() - t_start
    print(f"preset {args.preset}: {len(grid)} unique layer keys; table filled with PLACEHOLDER values "
          f"(speed figure only) in {t_fill:.2f} s")
    print(f"layer grid built in {t_grid:.2f} s (once per space and target)")
    print(f"load table values into the grid   {t_load:6.2f} s")
    print(f"Sobol sample {args.n:>9,} networks  {t_sobol:6.2f} s")
    print(f"estimate     {args.n:>9,} networks  {t_est:6.2f} s  ({args.n / t_est / 1e6:.2f} M networks/s)")
    print(f"stratify into {len(pools)} tiers          {t_strat:6.2f} s  counts {[p.count for p in pools]}")
    print(f"sample + estimate: {t_sobol + t_est:.2f} s; with table load and tiers: {total:.2f} s "
          f"(target <= 10 s); with grid build: {total + t_grid:.2f} s")
    print(f"estimated latency (placeholder values): median {np.median(latency):.3f} ms, "
          f"range {latency.min():.3f}-{latency.max():.3f} ms")


if __name__ == "__main__":
    main()
