"""Running searchers on benchmark problems: one run gives the trace of values in evaluation order.

Used by ``gpunet search bench`` and ``benchmarks/search_*.py``. Besides this package's searchers
(:data:`gpunet.search.ALGORITHMS`) it can run Optuna's samplers as baselines (``optuna-tpe``, ``optuna-gp``,
``optuna-cmaes``, ``optuna-random``; Optuna is a benchmark-only extra, imported only for those).

Pool-restricted problems (``nb201``): Optuna knows only the 6 x 5 categorical space, not the latency tier. A
suggestion outside the tier is told the tier's worst accuracy (a death penalty, so the sampler learns where the
tier is) and does not count toward the budget (in the real system a latency lookup rejects it before any
training). On every discrete space (pool or not) a repeated point is answered from a cache and does not count
either, as our searchers never ask a point twice. Our searchers ask only from the pool.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from . import ALGORITHMS, create, searcher_class
from .problems import Problem
from .spaces import SearchError

OPTUNA_ALGORITHMS = ("optuna-tpe", "optuna-gp", "optuna-cmaes", "optuna-random")
ALL_ALGORITHMS = ALGORITHMS + OPTUNA_ALGORITHMS
#: An Optuna run on a pool-restricted problem stops after this many suggestions per budgeted evaluation.
MAX_SUGGESTIONS_PER_EVAL = 20


def run(problem: Problem, algo: str, budget: int, seed: int, batch: int = 1,
        options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run: ``budget`` evaluations of ``algo`` on ``problem`` with ``seed``; ``options`` are searcher options
    of one of our algorithms (e.g. ``{"output_warp": "rank"}``), on top of the ``budget`` option.

    Raises:
        SearchError: an unknown algorithm, a budget that is no int >= 1, options given to an Optuna sampler, or
            an option the searcher does not have.

    Returns:
        ``{"values": [...], "seconds": float, ...}``: the value of each evaluation in order (maximised).
    """
    if algo not in ALL_ALGORITHMS:
        raise SearchError("algorithm", algo, list(ALL_ALGORITHMS))
    if not isinstance(budget, int) or budget < 1:
        raise SearchError("budget", budget, "an int >= 1")
    if options and algo in OPTUNA_ALGORITHMS:
        raise SearchError("options", options, "none for an Optuna sampler", reason=f"{algo} takes no searcher options")
    t0 = time.perf_counter()
    if algo in OPTUNA_ALGORITHMS:
        values, extra = _run_optuna(problem, algo, budget, seed)
    else:
        values, extra = _run_ours(problem, algo, budget, seed, batch, dict(options or {}))
    return {"problem": problem.name, "algo": algo, "seed": seed, "budget": budget, "options": dict(options or {}), "values": values,
            "seconds": time.perf_counter() - t0, **extra}


def _run_ours(problem: Problem, algo: str, budget: int, seed: int, batch: int,
              options: dict[str, Any]) -> tuple[list[float], dict]:
    # the budget sizes defaults (the initial design, LA-MCTS's leaf size) as the controller's spec.algorithm.budget does
    if "budget" in searcher_class(algo).OPTIONS:
        options.setdefault("budget", budget)
    searcher = create(algo, problem.space, seed=seed, **options)
    values: list[float] = []
    ask_s: list[float] = []
    while len(values) < budget:
        t = time.perf_counter()
        trials = searcher.ask(min(batch, budget - len(values)))
        ask_s.append(time.perf_counter() - t)
        for trial in trials:
            v = problem.evaluate(trial.params)
            searcher.tell(trial.id, v)
            values.append(v)
    return values, {"max_ask_seconds": max(ask_s), "gp_fit_failures": getattr(searcher, "fit_failures", 0),
                    "region_fallbacks": getattr(searcher, "region_fallbacks", None)}


def _run_optuna(problem: Problem, algo: str, budget: int, seed: int) -> tuple[list[float], dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = {
        "optuna-tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "optuna-gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "optuna-cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "optuna-random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }[algo]()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = problem.space
    if space.kind == "box":
        dists = {f"x{i}": optuna.distributions.FloatDistribution(float(lo), float(up)) for i, (lo, up) in enumerate(zip(space.lower, space.upper))}
    elif space.kind == "categorical":
        dists = {f"x{i}": optuna.distributions.CategoricalDistribution(c) for i, c in enumerate(space.choices)}
    else:
        dists = {f"x{i}": optuna.distributions.IntDistribution(int(lo), int(up)) for i, (lo, up) in enumerate(zip(space.lower, space.upper))}
    values: list[float] = []
    cache: dict[tuple, float] = {}
    suggestions = 0
    while len(values) < budget and suggestions < MAX_SUGGESTIONS_PER_EVAL * budget:
        trial = study.ask(dists)
        suggestions += 1
        params = [trial.params[f"x{i}"] for i in range(space.dim)]
        key = tuple(params)
        if problem.feasible is not None and not problem.feasible(params):
            study.tell(trial, float((problem.info or {}).get("worst", 0.0)))
            continue
        if key in cache and space.discrete:
            study.tell(trial, cache[key])
            continue
        v = problem.evaluate(params)
        cache[key] = v
        study.tell(trial, v)
        values.append(v)
    return values, {"suggestions": suggestions}


def best_so_far(values: list[float]) -> np.ndarray:
    """Running maximum of a trace, an `n` array."""
    return np.maximum.accumulate(np.asarray(values, dtype=float)) if values else np.zeros(0)


def regret_at(problem_optimum: float, values: list[float], at: int) -> float:
    """Regret of the best of the first ``at`` evaluations (``inf`` when the run is shorter)."""
    if len(values) < at:
        return math.inf
    return float(problem_optimum - best_so_far(values[:at])[-1])


def evals_to_reach(problem_optimum: float, values: list[float], target_regret: float) -> int | None:
    """First evaluation count at which the regret is at most ``target_regret`` (None if never)."""
    reg = problem_optimum - best_so_far(values)
    hit = np.flatnonzero(reg <= target_regret + 1e-12)
    return int(hit[0]) + 1 if hit.size else None


def summarize(optimum: float, runs: list[dict[str, Any]], checkpoints: list[int]) -> dict[str, Any]:
    """Median and quartiles of the regret at each checkpoint over the runs of one algorithm."""
    out: dict[str, Any] = {"seeds": len(runs), "checkpoints": {}}
    for at in checkpoints:
        reg = np.array([regret_at(optimum, r["values"], at) for r in runs])
        reg = reg[np.isfinite(reg)]
        if reg.size:
            q25, q50, q75 = np.percentile(reg, [25, 50, 75])
            out["checkpoints"][str(at)] = {"median": float(q50), "q25": float(q25), "q75": float(q75), "n": int(reg.size)}
    out["seconds_median"] = float(np.median([r["seconds"] for r in runs])) if runs else None
    return out
