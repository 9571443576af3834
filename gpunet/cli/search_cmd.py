"""``gpunet search bench``: run a searcher on a benchmark problem for several seeds and report the regret."""

from __future__ import annotations

import argparse
from typing import Any

from . import Output, UsageError, add_output_option


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("search", help="black-box searchers (LA-MCTS-boosted BO and baselines)").add_subparsers(dest="cmd", required=True)
    p = group.add_parser("bench", help="run a searcher on ackley20, levy20 or nb201 and report median/quartile regret")
    p.add_argument("--problem", required=True, choices=["ackley20", "levy20", "nb201"])
    p.add_argument("--algo", default="lamcts-bo", help="a searcher (random, sobol, evolution, bo, turbo, lamcts-bo, "
                   "lamcts-turbo) or an Optuna baseline (optuna-tpe, optuna-gp, optuna-cmaes, optuna-random)")
    p.add_argument("--budget", type=int, default=None, help="evaluations per seed (default: 500, nb201: 100)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..K-1")
    p.add_argument("--batch", type=int, default=1, help="points per ask (batched asks use pending points)")
    p.add_argument("--data", default=None, help="path of NAS-Bench-201's nb201.csv (needed for nb201)")
    add_output_option(p)
    p.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> Output:
    from ..search.bench import ALL_ALGORITHMS, run, summarize
    from ..search.problems import DEFAULT_BUDGETS, make_problem

    if args.algo not in ALL_ALGORITHMS:
        raise UsageError("--algo", args.algo, ALL_ALGORITHMS)
    budget = args.budget if args.budget is not None else DEFAULT_BUDGETS[args.problem]
    for option, value in (("--budget", budget), ("--seeds", args.seeds), ("--batch", args.batch)):
        if value < 1:
            raise UsageError(option, value, "an integer >= 1")
    problem = make_problem(args.problem, args.data)
    runs = [run(problem, args.algo, budget, seed, batch=args.batch) for seed in range(args.seeds)]
    marks = sorted({m for m in (budget // 4, budget // 2, budget) if m >= 1})
    summary = summarize(problem.optimum, runs, marks)
    data = {"problem": problem.name, "algo": args.algo, "budget": budget, "seeds": args.seeds, "batch": args.batch,
            "optimum": problem.optimum, "summary": summary,
            "final_regret": [problem.optimum - max(r["values"]) for r in runs]}
    return Output(data, bench_view)


def bench_view(data: dict[str, Any]) -> Any:
    """Regret at a quarter, half and all of the budget, median and quartiles over the seeds."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{data['algo']} on {data['problem']}: regret over {data['seeds']} seeds (median, [q25, q75])"))
    table.add_column("evaluations")
    table.add_column("median regret")
    table.add_column("quartiles")
    for at, s in data["summary"]["checkpoints"].items():
        table.add_row(at, f"{s['median']:.4g}", escape(f"[{s['q25']:.4g}, {s['q75']:.4g}]"))
    return table
