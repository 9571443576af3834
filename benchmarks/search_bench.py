"""Search efficiency: our searchers vs Optuna's TPE, GP, CMA-ES and random samplers (issue 4).

Each (problem, algorithm, seed) run is written to its own JSON file under ``--out``, and existing files are
skipped, so runs can go in the background, in parallel (``--jobs``) or in several sittings; ``report`` then
prints one markdown table per problem from whatever has finished.

    python benchmarks/search_bench.py run --problems ackley20 levy20 --algos lamcts-bo optuna-tpe \\
        --seeds 10 --budget 500 --jobs 2 --out runs/search-bench
    python benchmarks/search_bench.py run --problems nb201 --data NB201_CSV ...  # nb201.csv, see benchmarks/README.md
    python benchmarks/search_bench.py report --out runs/search-bench

Table columns: regret (optimum minus best value so far; Ackley/Levy have optimum 0, nb201 the best CIFAR-100
accuracy in the latency tier) as median [q25, q75] over seeds at a quarter, half and all of the budget (nb201:
25, 50, 100), and the median number of evaluations to reach Optuna TPE's median regret at T, the largest
checkpoint all of that algorithm's runs reach (runs of different budgets can share one table; per seed the longest
run counts; "evals to TPE's final median" uses TPE's full budget), and a checkpoint's statistics use the runs that reach it, their number in parentheses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpunet.search.bench import ALL_ALGORITHMS, OPTUNA_ALGORITHMS, evals_to_reach, regret_at, run  # noqa: E402
from gpunet.search.problems import DEFAULT_BUDGETS, NB201_KINDS, PROBLEMS, make_problem, parse_problem_name  # noqa: E402

DEFAULT_ALGOS = ["lamcts-bo", "lamcts-turbo", "turbo", "bo", "evolution", "random",
                 "optuna-tpe", "optuna-gp", "optuna-cmaes", "optuna-random"]


def _path(out: Path, problem: str, algo: str, seed: int, budget: int) -> Path:
    return out / problem / algo / f"seed{seed}_budget{budget}.json"


def _one(job: tuple[str, str, int, int, str | None, str, dict, str]) -> str:
    problem_name, algo, seed, budget, data, out, options, label = job
    import torch

    torch.set_num_threads(1)
    name = algo + label  # the row of the report: runs with options get their own
    path = _path(Path(out), problem_name, name, seed, budget)
    if path.exists():
        return f"skip {path}"
    problem = make_problem(problem_name, data)
    result = run(problem, algo, budget, seed, options=options if algo not in OPTUNA_ALGORITHMS else None)
    result["optimum"] = problem.optimum
    result["algo"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)  # atomic: a half-written file never looks finished
    best = max(result["values"])
    return f"{problem_name} {name} seed {seed}: regret {problem.optimum - best:.4g} in {result['seconds']:.0f} s"


def cmd_run(args: argparse.Namespace) -> None:
    options = json.loads(args.options)
    if not isinstance(options, dict):
        raise SystemExit(f"--options: got {args.options!r}; expected a JSON object of searcher options")
    if options and not args.label:
        raise SystemExit("--options needs --label (the suffix of the algorithm's name in the report, e.g. +rank)")
    jobs = []
    for problem in args.problems:
        nb201 = problem == "nb201" or parse_problem_name(problem)[0] in NB201_KINDS
        budget = args.budget or (100 if nb201 else DEFAULT_BUDGETS[problem])
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for algo in args.algos:
                if nb201 and algo == "optuna-cmaes":
                    continue  # CMA-ES has no categorical parameters (Optuna falls back to random sampling)
                if options and algo in OPTUNA_ALGORITHMS:
                    continue  # the options are our searchers'; Optuna's rows stay the plain ones
                jobs.append((problem, algo, seed, budget, args.data, str(args.out), options, args.label))
    t0 = time.time()
    if args.jobs <= 1:
        for job in jobs:
            print(_one(job), flush=True)
    else:
        with get_context("spawn").Pool(args.jobs) as pool:
            for line in pool.imap_unordered(_one, jobs):
                print(line, flush=True)
    print(f"{len(jobs)} runs in {time.time() - t0:.0f} s")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def cmd_report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for pdir in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        problem = pdir.name
        longest: dict[tuple[str, int], dict] = {}  # one run per (algorithm, seed): the longest
        for f in sorted(pdir.glob("*/seed*_budget*.json")):
            r = json.loads(f.read_text())
            key = (r["algo"], r["seed"])
            if key not in longest or len(r["values"]) > len(longest[key]["values"]):
                longest[key] = r
        runs: dict[str, list[dict]] = {}
        for (algo, _), r in sorted(longest.items()):
            runs.setdefault(algo, []).append(r)
        if not runs:
            continue
        marks = [25, 50, 100] if problem.startswith("nb201") else [50, 100, 200, 500]
        optimum = next(iter(runs.values()))[0]["optimum"]
        tpe = runs.get("optuna-tpe", [])

        def regrets(rs: list[dict], m: int) -> np.ndarray:
            return np.array([regret_at(optimum, r["values"], m) for r in rs if len(r["values"]) >= m])

        print(f"\n### {problem}: regret, median [q25, q75] (seeds)\n")
        head = ["algorithm"] + [f"@{m}" for m in marks] + ["T", "evals to TPE's median @T", "evals to TPE's final median", "s/run"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))

        def final_median(a: str) -> float:
            T = max(len(r["values"]) for r in runs[a])
            return float(np.median(regrets(runs[a], T)))

        for algo in sorted(runs, key=final_median):
            rs = runs[algo]
            cells = [algo]
            for m in marks:
                reg = regrets(rs, m)
                if reg.size:
                    q25, q50, q75 = np.percentile(reg, [25, 50, 75])
                    cells.append(f"{_fmt(q50)} [{_fmt(q25)}, {_fmt(q75)}] ({reg.size})")
                else:
                    cells.append("-")
            T = max((m for m in marks if regrets(rs, m).size == len(rs)), default=0)
            tpe_T = regrets(tpe, T) if T else np.zeros(0)
            if T and tpe_T.size:
                target = float(np.median(tpe_T))
                reach = [evals_to_reach(optimum, r["values"][:T], target) for r in rs if len(r["values"]) >= T]
                med = float(np.median([h if h is not None else np.inf for h in reach]))
                cells += [str(T), str(int(med)) if np.isfinite(med) else f"> {T}"]
            else:
                cells += [str(T), "-"]
            if tpe:
                T_tpe = max(len(r["values"]) for r in tpe)
                target = float(np.median(regrets(tpe, T_tpe)))
                hits = [evals_to_reach(optimum, r["values"], target) for r in rs]
                med = float(np.median([h if h is not None else np.inf for h in hits]))
                cells.append(str(int(med)) if np.isfinite(med) else f"not within {max(len(r['values']) for r in rs)}")
            else:
                cells.append("-")
            cells.append(f"{np.median([r['seconds'] for r in rs]):.0f}")
            print("| " + " | ".join(cells) + " |")


def _problem(name: str) -> str:
    """An argparse type: a name of PROBLEMS or a parametrised NAS-Bench-201 problem (checked, not loaded)."""
    kind, kwargs = parse_problem_name(name)
    if kind not in PROBLEMS and kind not in NB201_KINDS:
        raise argparse.ArgumentTypeError(f"{name!r}: expected one of {', '.join(PROBLEMS)} or "
                                         f"{' / '.join(NB201_KINDS)}:DATASET:DEVICE:Q")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), type=_problem,
                   help="ackley20, levy20, nb201, or nb201-tier:DATASET:DEVICE:Q / nb201-mnas:DATASET:DEVICE:Q "
                        "(gpunet/search/problems.py)")
    p.add_argument("--algos", nargs="+", default=DEFAULT_ALGOS, choices=ALL_ALGORITHMS)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=None, help="default: 500 (ackley20, levy20), 100 (nb201)")
    p.add_argument("--data", default=None, help="path of nb201.csv")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (one torch thread each)")
    p.add_argument("--out", type=Path, default=Path("runs/search-bench"))
    p.add_argument("--options", default="{}", help='searcher options of our algorithms as JSON, e.g. '
                   '\'{"output_warp": "rank"}\' (Optuna samplers are skipped when options are given)')
    p.add_argument("--label", default="", help="suffix of the algorithm's name in the files and the report, "
                   "needed with --options (e.g. +rank)")
    p.set_defaults(func=cmd_run)
    r = sub.add_parser("report")
    r.add_argument("--out", type=Path, default=Path("runs/search-bench"))
    r.set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
