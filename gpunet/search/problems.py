"""Benchmark problems for the searchers (paper 3.3.3 validates the system on synthetic functions first).

- ``ackley20``: Ackley in 20 dimensions on ``[-5, 10]^20`` (the LA-MCTS and TuRBO papers' domain); minimum 0.
- ``levy20``: Levy in 20 dimensions on ``[-10, 10]^20``; minimum 0.
- ``nb201``: NAS-Bench-201 inside a latency tier: maximise CIFAR-100 test accuracy over the architectures whose
  measured Pixel LiteRT latency (``lat_ms_pixel_litert``) is at most that column's 30th percentile. The searched
  space is the pool-restricted categorical space of those architectures (6 edges x 5 operations), as in the
  paper's search inside one latency tier.

Searchers maximise, so the synthetic functions are negated; :attr:`Problem.optimum` is the best reachable value
and ``regret = optimum - best value found``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .spaces import BoxSpace, CategoricalSpace, SearchError, Space

#: NAS-Bench-201 operations, in the benchmark's order.
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The latency tier of the NAS-Bench-201 problem: the 30th percentile of this column (ms).
NB201_LATENCY_COLUMN = "lat_ms_pixel_litert"
NB201_TIER_QUANTILE = 0.30
NB201_METRIC = "acc_cifar100"

PROBLEMS = ("ackley20", "levy20", "nb201")
#: Evaluation budgets of issue 4's benchmarks.
DEFAULT_BUDGETS = {"ackley20": 500, "levy20": 500, "nb201": 100}


@dataclass
class Problem:
    """A maximisation problem: ``evaluate(params) -> value`` over ``space``; ``optimum`` is the best value."""

    name: str
    space: Space
    evaluate: Callable[[list[Any]], float]
    optimum: float
    #: For a pool-restricted problem: the allowed points (what an external optimiser may suggest).
    feasible: Callable[[list[Any]], bool] | None = None
    info: dict[str, Any] | None = None


def _torch_function(cls_name: str, dim: int) -> Callable[[list[Any]], float]:
    """A negated BoTorch test function (evaluated on its own domain-free formula) on one point."""
    import torch
    from botorch import test_functions

    fn = getattr(test_functions, cls_name)(dim=dim)

    def evaluate(params: list[Any]) -> float:
        with torch.no_grad():
            return -float(fn(torch.as_tensor([params], dtype=torch.float64)).item())

    return evaluate


def parse_nb201(arch_str: str) -> list[str]:
    """The 6 edge operations of a NAS-Bench-201 string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``, in order."""
    ops = [tok.split("~")[0] for tok in arch_str.replace("+", "").split("|") if tok]
    if len(ops) != 6 or any(op not in NB201_OPS for op in ops):
        raise SearchError("NAS-Bench-201 architecture", arch_str, f"6 edges, each one of {', '.join(NB201_OPS)}")
    return ops


def load_nb201(path: str | Path, quantile: float = NB201_TIER_QUANTILE) -> Problem:
    """The NAS-Bench-201 latency-tier problem from ``nb201.csv`` at ``path`` (read, never copied)."""
    p = Path(path)
    if p.is_dir():
        p = p / "nb201.csv"
    if not p.is_file():
        raise SearchError("NAS-Bench-201 data path", str(path), "the path of nb201.csv or of its folder", reason="no such file")
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ops = [parse_nb201(r["arch_str"]) for r in rows]
    acc = np.array([float(r[NB201_METRIC]) for r in rows])
    lat = np.array([float(r[NB201_LATENCY_COLUMN]) for r in rows])
    limit = float(np.quantile(lat, quantile))
    ok = lat <= limit
    table = {tuple(o): a for o, a, good in zip(ops, acc, ok) if good}
    space = CategoricalSpace([list(NB201_OPS)] * 6).restrict([list(k) for k in table])

    def evaluate(params: list[Any]) -> float:
        key = tuple(params)
        if key not in table:
            raise SearchError("NAS-Bench-201 architecture", list(params), reason=f"outside the latency tier (<= {limit:.4f} ms)")
        return float(table[key])

    return Problem(
        "nb201", space, evaluate, float(max(table.values())), feasible=lambda params: tuple(params) in table,
        info={"latency_limit_ms": limit, "feasible": len(table), "total": len(rows), "metric": NB201_METRIC,
              "worst": float(min(table.values()))},
    )


def make_problem(name: str, data: str | Path | None = None) -> Problem:
    """One of :data:`PROBLEMS`; ``nb201`` needs ``data``, the path of ``nb201.csv`` (or its folder)."""
    if name == "ackley20":
        return Problem(name, BoxSpace([-5.0] * 20, [10.0] * 20), _torch_function("Ackley", 20), 0.0)
    if name == "levy20":
        return Problem(name, BoxSpace([-10.0] * 20, [10.0] * 20), _torch_function("Levy", 20), 0.0)
    if name == "nb201":
        if data is None:
            raise SearchError("data path", None, "the path of nb201.csv (--data PATH)", reason="the nb201 problem needs the benchmark's table")
        return load_nb201(data)
    raise SearchError("problem", name, list(PROBLEMS))


def easy_quadratic(dim: int = 4) -> Problem:
    """A smooth 4-D test problem on ``[0, 1]^dim``: ``-sum((x - 0.3)^2)``, maximum 0 (for quick tests)."""

    def evaluate(params: list[Any]) -> float:
        x = np.asarray(params, dtype=float)
        return -float(np.sum((x - 0.3) ** 2))

    return Problem(f"quadratic{dim}", BoxSpace([0.0] * dim, [1.0] * dim), evaluate, 0.0)


def regret(problem: Problem, value: float) -> float:
    """``optimum - value`` (>= 0 for a valid value)."""
    return problem.optimum - value if math.isfinite(value) else math.inf
