"""``gpunet search bench``: run a searcher on a benchmark problem for several seeds and report the regret."""

from __future__ import annotations

import argparse

from . import UsageError, console, emit


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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> int:
    from ..search.spaces import SearchError

    try:
        return _bench(args)
    except SearchError as exc:  # a bad --data path and the like: a user error, exit 2
        raise UsageError(str(exc)) from exc


def _bench(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from ..search.bench import ALL_ALGORITHMS, run, summarize
    from ..search.problems import DEFAULT_BUDGETS, make_problem

    if args.algo not in ALL_ALGORITHMS:
        raise UsageError(f"invalid --algo {args.algo!r}; allowed: {', '.join(ALL_ALGORITHMS)}")
    budget = args.budget if args.budget is not None else DEFAULT_BUDGETS[args.problem]
    if budget < 1 or args.seeds < 1 or args.batch < 1:
        raise UsageError(f"--budget, --seeds and --batch must be >= 1 (got {budget}, {args.seeds}, {args.batch})")
    problem = make_problem(args.problem, args.data)
    runs = [run(problem, args.algo, budget, seed, batch=args.batch) for seed in range(args.seeds)]
    marks = sorted({m for m in (budget // 4, budget // 2, budget) if m >= 1})
    summary = summarize(problem.optimum, runs, marks)
    data = {"problem": problem.name, "algo": args.algo, "budget": budget, "seeds": args.seeds, "batch": args.batch,
            "optimum": problem.optimum, "summary": summary,
            "final_regret": [problem.optimum - max(r["values"]) for r in runs]}
    if args.json:
        emit(data, True)
        return 0
    from rich.table import Table

    table = Table(title=escape(f"{args.algo} on {problem.name}: regret over {args.seeds} seeds (median, [q25, q75])"))
    table.add_column("evaluations")
    table.add_column("median regret")
    table.add_column("quartiles")
    for at, s in summary["checkpoints"].items():
        table.add_row(at, f"{s['median']:.4g}", escape(f"[{s['q25']:.4g}, {s['q75']:.4g}]"))
    console().print(table)
    return 0
