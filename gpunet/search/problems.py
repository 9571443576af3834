"""Benchmark problems for the searchers (paper 3.3.3 validates the system on synthetic functions first).

- ``ackley20``: Ackley in 20 dimensions on ``[-5, 10]^20`` (the LA-MCTS and TuRBO papers' domain); minimum 0.
- ``levy20``: Levy in 20 dimensions on ``[-10, 10]^20``; minimum 0.
- ``nb201``: NAS-Bench-201 inside a latency tier: maximise CIFAR-100 test accuracy over the architectures whose
  measured Pixel LiteRT latency (``lat_ms_pixel_litert``) is at most that column's 30th percentile. The searched
  space is the pool-restricted categorical space of those architectures (6 edges x 5 operations), as in the
  paper's search inside one latency tier.
- ``nb201-tier:DATASET:DEVICE:Q``: the same tier problem for another dataset (:data:`NB201_DATASETS`), device
  (:data:`NB201_DEVICES`) and latency quantile ``Q`` in (0, 1); ``nb201`` is ``nb201-tier:cifar100:pixel_litert:0.3``.
- ``nb201-mnas:DATASET:DEVICE:Q``: a categorical space *without* a pool (all 15,625 architectures) and MnasNet's
  hard-constrained reward (:func:`gpunet.objectives.mnas_reward`, ``hard=True, w=-1``): the accuracy at or under
  the target latency (the column's ``Q`` quantile), the accuracy times ``target / latency`` above it. This is the
  ``mnas`` objective of the system on NAS-Bench-201.

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

from ..objectives import MNAS_HARD_W, mnas_reward
from .spaces import BoxSpace, CategoricalSpace, SearchError, Space

#: NAS-Bench-201 operations, in the benchmark's order.
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The latency tier of the NAS-Bench-201 problem: the 30th percentile of this column (ms).
NB201_LATENCY_COLUMN = "lat_ms_pixel_litert"
NB201_TIER_QUANTILE = 0.30
NB201_METRIC = "acc_cifar100"

#: Accuracy columns of ``nb201.csv`` (test top-1 in %, after 200 epochs) by dataset name.
NB201_DATASETS = {"cifar10": "acc_cifar10", "cifar100": "acc_cifar100", "imagenet16_120": "acc_imagenet16_120"}
#: Latency columns of ``nb201.csv`` (ms) by device name.
NB201_DEVICES = {"pixel_litert": "lat_ms_pixel_litert", "pi5_litert": "lat_ms_pi5_litert",
                 "pi5_onnx": "lat_ms_pi5_onnx", "pi5_torchmobile": "lat_ms_pi5_torchmobile"}
#: The kinds of parametrised NAS-Bench-201 problems (``KIND:DATASET:DEVICE:Q``), see the module docstring.
NB201_KINDS = ("nb201-tier", "nb201-mnas")

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


def load_nb201(path: str | Path, quantile: float = NB201_TIER_QUANTILE, dataset: str = "cifar100",
               device: str = "pixel_litert", pool: bool = True) -> Problem:
    """A NAS-Bench-201 problem from ``nb201.csv`` at ``path`` (read, never copied).

    Args:
        path: ``nb201.csv`` or its folder.
        quantile: The latency limit (tier) or target (mnas) is this quantile of the device's column, in (0, 1).
        dataset: A key of :data:`NB201_DATASETS`; device: a key of :data:`NB201_DEVICES`.
        pool: True: the tier problem (a pool-restricted space of the architectures at or under the limit);
            False: the full categorical space and MnasNet's hard-constrained reward (module docstring).

    Raises:
        SearchError: a missing file, an unknown dataset or device, a quantile outside (0, 1).
    """
    if dataset not in NB201_DATASETS:
        raise SearchError("NAS-Bench-201 dataset", dataset, sorted(NB201_DATASETS))
    if device not in NB201_DEVICES:
        raise SearchError("NAS-Bench-201 device", device, sorted(NB201_DEVICES))
    if not (isinstance(quantile, float) and 0.0 < quantile < 1.0):
        raise SearchError("NAS-Bench-201 latency quantile", quantile, "a float in (0, 1)")
    p = Path(path)
    if p.is_dir():
        p = p / "nb201.csv"
    if not p.is_file():
        raise SearchError("NAS-Bench-201 data path", str(path), "the path of nb201.csv or of its folder", reason="no such file")
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ops = [parse_nb201(r["arch_str"]) for r in rows]
    acc = np.array([float(r[NB201_DATASETS[dataset]]) for r in rows])
    lat = np.array([float(r[NB201_DEVICES[device]]) for r in rows])
    limit = float(np.quantile(lat, quantile))
    full = CategoricalSpace([list(NB201_OPS)] * 6)
    if not pool:
        # at or under the target the hard reward ignores latency, so a measured latency of 0 ms (a cell of
        # "none" edges) is clamped to a positive one only to satisfy mnas_reward's argument check
        table = {tuple(o): mnas_reward(a, max(t, 1e-9), limit, MNAS_HARD_W, hard=True) for o, a, t in zip(ops, acc, lat)}
        name = f"nb201-mnas:{dataset}:{device}:{quantile:g}"
        return Problem(name, full, lambda params: float(table[tuple(params)]), float(max(table.values())),
                       info={"target_ms": limit, "total": len(rows), "metric": NB201_DATASETS[dataset],
                             "latency": NB201_DEVICES[device], "worst": float(min(table.values()))})
    ok = lat <= limit
    table = {tuple(o): a for o, a, good in zip(ops, acc, ok) if good}
    space = full.restrict([list(k) for k in table])

    def evaluate(params: list[Any]) -> float:
        key = tuple(params)
        if key not in table:
            raise SearchError("NAS-Bench-201 architecture", list(params), reason=f"outside the latency tier (<= {limit:.4f} ms)")
        return float(table[key])

    default = (dataset, device, quantile) == ("cifar100", "pixel_litert", NB201_TIER_QUANTILE)
    return Problem(
        "nb201" if default else f"nb201-tier:{dataset}:{device}:{quantile:g}", space, evaluate,
        float(max(table.values())), feasible=lambda params: tuple(params) in table,
        info={"latency_limit_ms": limit, "feasible": len(table), "total": len(rows), "metric": NB201_DATASETS[dataset],
              "latency": NB201_DEVICES[device], "worst": float(min(table.values()))},
    )


def parse_problem_name(name: str) -> tuple[str, dict[str, Any]]:
    """Split ``KIND:DATASET:DEVICE:Q`` (a :data:`NB201_KINDS` problem) into ``(kind, load_nb201 kwargs)``;
    any other name comes back as ``(name, {})``.

    Raises:
        SearchError: a parametrised name without exactly three parameters or with a quantile that is no number.
    """
    kind, _, rest = name.partition(":")
    if kind not in NB201_KINDS:
        return name, {}
    parts = rest.split(":") if rest else []
    if len(parts) != 3:
        raise SearchError("problem", name, f"{kind}:DATASET:DEVICE:Q, e.g. {kind}:cifar10:pi5_onnx:0.5")
    try:
        q = float(parts[2])
    except ValueError:
        raise SearchError("problem quantile", parts[2], "a float in (0, 1)") from None
    return kind, {"dataset": parts[0], "device": parts[1], "quantile": q, "pool": kind == "nb201-tier"}


def make_problem(name: str, data: str | Path | None = None) -> Problem:
    """One of :data:`PROBLEMS` or a parametrised NAS-Bench-201 name (:func:`parse_problem_name`); the NAS-Bench-201
    problems need ``data``, the path of ``nb201.csv`` (or its folder)."""
    kind, kwargs = parse_problem_name(name)
    if kind in NB201_KINDS:
        if data is None:
            raise SearchError("data path", None, "the path of nb201.csv (--data PATH)", reason=f"the {kind} problem needs the benchmark's table")
        return load_nb201(data, **kwargs)
    if name == "ackley20":
        return Problem(name, BoxSpace([-5.0] * 20, [10.0] * 20), _torch_function("Ackley", 20), 0.0)
    if name == "levy20":
        return Problem(name, BoxSpace([-10.0] * 20, [10.0] * 20), _torch_function("Levy", 20), 0.0)
    if name == "nb201":
        if data is None:
            raise SearchError("data path", None, "the path of nb201.csv (--data PATH)", reason="the nb201 problem needs the benchmark's table")
        return load_nb201(data)
    raise SearchError("problem", name, list(PROBLEMS) + [f"{k}:DATASET:DEVICE:Q" for k in NB201_KINDS])


def easy_quadratic(dim: int = 4) -> Problem:
    """A smooth 4-D test problem on ``[0, 1]^dim``: ``-sum((x - 0.3)^2)``, maximum 0 (for quick tests)."""

    def evaluate(params: list[Any]) -> float:
        x = np.asarray(params, dtype=float)
        return -float(np.sum((x - 0.3) ** 2))

    return Problem(f"quadratic{dim}", BoxSpace([0.0] * dim, [1.0] * dim), evaluate, 0.0)


def regret(problem: Problem, value: float) -> float:
    """``optimum - value`` (>= 0 for a valid value)."""
    return problem.optimum - value if math.isfinite(value) else math.inf
