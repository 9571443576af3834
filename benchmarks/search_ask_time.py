"""Time of one ask at 50, 200 and 1,000 observations (issue 4: an ask must not block for long).

Two problems:

- ``ackley20``: the box ``[-5, 10]^20`` (continuous candidates plus gradient refinement of the acquisition);
- ``gpunet-pool``: one latency tier of the real search, i.e. the 41-digit GPUNet space (Table 1) restricted to a
  pool of ``--pool-size`` networks (4,096 by default, uniformly random vectors, seed 0) valued by a smooth
  synthetic function of their features (the value does not matter for timing beyond the GP fit's convergence).

For each model-based searcher the searcher is warm-started with N observations (:meth:`Searcher.observe`, in
increasing order of value so that TuRBO's trust region does not restart), after one untimed warm-up ask
(imports), then one ask is timed: ``ask(1)`` with no pending trials (analytic LogEI), ``ask(8)`` with none pending
(a sequential-greedy batch) and ``ask(1)`` with 8 pending trials (the pending-aware, fantasy-based qLogEI path).
Median of ``--repeats`` fresh searchers (different seeds).

    python benchmarks/search_ask_time.py --algos lamcts-bo lamcts-turbo turbo bo --sizes 50 200 1000 --repeats 3
    python benchmarks/search_ask_time.py --problem gpunet-pool --sizes 50 200 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpunet.search import ALGORITHMS, IntegerSpace, Space, create  # noqa: E402
from gpunet.search.problems import make_problem  # noqa: E402

PROBLEMS = ("ackley20", "gpunet-pool")


@lru_cache(maxsize=None)
def gpunet_pool(size: int) -> tuple[Space, np.ndarray]:
    """The GPUNet space restricted to ``size`` random networks, and a target point in feature space."""
    from gpunet.space import load_space

    gspace = load_space("gpunet")
    space = IntegerSpace.from_search_space(gspace, pool=gspace.sample(size, seed=0))
    return space, np.random.default_rng(7).random(space.num_features)


def problem_points(problem: str, pool_size: int, n_obs: int, rng: np.random.Generator) -> tuple[Any, list, Callable]:
    """The space, ``n_obs`` distinct points to observe, and the value function of ``problem``."""
    if problem == "ackley20":
        p = make_problem("ackley20")
        return p.space, p.space.from_features(rng.random((n_obs, p.space.num_features))), p.evaluate
    space, target = gpunet_pool(pool_size)
    pick = rng.choice(len(space.pool), size=n_obs, replace=False)
    points = [list(space.pool[i]) for i in pick]

    def evaluate(params):
        return -float(np.sum((space.to_features([params])[0] - target) ** 2))

    return space, points, evaluate


def time_ask(algo: str, n_obs: int, seed: int, pending: int, problem: str = "ackley20", pool_size: int = 4096,
             q: int = 1, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one ``ask(q)`` after ``n_obs`` observations and ``pending`` pending trials."""
    rng = np.random.default_rng(1000 + seed)
    space, X, evaluate = problem_points(problem, pool_size, n_obs, rng)
    searcher = create(algo, space, seed=seed)
    values = [evaluate(x) for x in X]
    for i in np.argsort(values):  # increasing values: every tell a success, so TuRBO's region never restarts
        searcher.observe(X[i], values[i])
    if pending:
        searcher.ask(pending)
    t = clock()
    searcher.ask(q)
    return clock() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problem", default="ackley20", choices=PROBLEMS)
    p.add_argument("--pool-size", type=int, default=4096, help="networks in the gpunet-pool tier")
    p.add_argument("--algos", nargs="+", default=["lamcts-bo", "lamcts-turbo", "turbo", "bo"], choices=ALGORITHMS)
    p.add_argument("--sizes", nargs="+", type=int, default=[50, 200, 1000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the process")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or the process's CPU time (steadier on a shared machine; with one thread it "
                   "is the wall time of an idle machine)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    time_ask(args.algos[0], 20, 99, 0, args.problem, args.pool_size)  # warm-up: imports are not timed
    print(f"problem {args.problem}" + (f", pool of {args.pool_size}" if args.problem == "gpunet-pool" else "")
          + f"; {args.clock} clock")
    print("| algorithm | observations | ask(1), no pending (s) | ask(8), no pending (s) | ask(1), 8 pending (s) |")
    print("|---|---|---|---|---|")
    for algo in args.algos:
        for n in args.sizes:
            cells = []
            for pending, q in ((0, 1), (0, 8), (8, 1)):
                times = [time_ask(algo, n, s, pending, args.problem, args.pool_size, q, clock) for s in range(args.repeats)]
                cells.append(f"{np.median(times):.2f}")
            print(f"| {algo} | {n} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
