"""Time of one ask at 50, 200 and 1,000 observations (issue 4: an ask must not block for long).

For each model-based searcher the searcher is warm-started with N observations of Ackley-20 at uniformly random
points (:meth:`Searcher.observe`, in increasing order of value so that TuRBO's trust region does not restart),
after one untimed warm-up ask (imports), then one ``ask(1)`` is timed with no pending trials and one with 8 pending
trials (the pending-aware, fantasy-based qLogEI path). Median of ``--repeats`` fresh searchers (different seeds).

    python benchmarks/search_ask_time.py --algos lamcts-bo lamcts-turbo turbo bo --sizes 50 200 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpunet.search import ALGORITHMS, create  # noqa: E402
from gpunet.search.problems import make_problem  # noqa: E402


def time_ask(algo: str, n_obs: int, seed: int, pending: int) -> float:
    problem = make_problem("ackley20")
    rng = np.random.default_rng(1000 + seed)
    searcher = create(algo, problem.space, seed=seed)
    X = problem.space.from_features(rng.random((n_obs, problem.space.num_features)))
    values = [problem.evaluate(x) for x in X]
    for i in np.argsort(values):  # increasing values: every tell a success, so TuRBO's region never restarts
        searcher.observe(X[i], values[i])
    if pending:
        searcher.ask(pending)
    t = time.perf_counter()
    searcher.ask(1)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", nargs="+", default=["lamcts-bo", "lamcts-turbo", "turbo", "bo"], choices=ALGORITHMS)
    p.add_argument("--sizes", nargs="+", type=int, default=[50, 200, 1000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the process")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    time_ask(args.algos[0], 20, 99, 0)  # warm-up: imports of torch, botorch and scikit-learn are not timed
    print("| algorithm | observations | ask(1), no pending (s) | ask(1), 8 pending (s) |")
    print("|---|---|---|---|")
    for algo in args.algos:
        for n in args.sizes:
            free = [time_ask(algo, n, s, 0) for s in range(args.repeats)]
            pend = [time_ask(algo, n, s, 8) for s in range(args.repeats)]
            print(f"| {algo} | {n} | {np.median(free):.2f} | {np.median(pend):.2f} |", flush=True)


if __name__ == "__main__":
    main()
