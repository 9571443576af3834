"""What a search maximises: hard latency tiers (GPUNet) or the multi-objective MnasNet reward, and the Pareto front.

- ``tiered`` (GPUNet paper 3.2-3.3, the default): the space is stratified into latency tiers and each tier
  maximises validation top-1 among its own networks.
- ``mnas`` (MnasNet, Tan et al., CVPR 2019, section 3, eq. 2; used by EfficientNet-X's LACS): one search over the
  whole space maximises :func:`mnas_reward`, ``top1 * (latency / target) ** w`` with ``w = alpha`` at or under
  the target and ``w = beta`` above it. The paper's *soft* constraint is ``alpha = beta = -0.07``
  (:data:`MNAS_SOFT_W`); its *hard* constraint is ``alpha = 0, beta = -1``.

In a spec, ``w`` is the exponent above the target and ``hard`` sets the exponent at or under the target to 0
(``hard: true, w: -1`` is MnasNet's hard constraint). Torch- and numpy-free.
"""

from __future__ import annotations

import math
from typing import Sequence

from .errors import GpunetError

#: The values of ``spec.algorithm.objective``.
OBJECTIVES = ("tiered", "mnas")
#: MnasNet's soft-constraint exponent (section 3: "we empirically set alpha = beta = -0.07").
MNAS_SOFT_W = -0.07
#: MnasNet's hard-constraint exponent above the target (alpha = 0, beta = -1).
MNAS_HARD_W = -1.0


def mnas_reward(top1: float, latency_ms: float, target_ms: float, w: float = MNAS_SOFT_W, hard: bool = False) -> float:
    """MnasNet's multi-objective reward ``top1 * (latency_ms / target_ms) ** w'`` (Tan et al. 2019, eq. 2).

    Args:
        top1: validation top-1, a fraction in [0, 1].
        latency_ms: the network's latency in ms (> 0; the table estimate or a measurement).
        target_ms: the latency target in ms (> 0).
        w: the exponent (<= 0) above the target, and also at or under it unless ``hard``.
        hard: the exponent at or under the target is 0 (no reward for being faster than the target).

    Returns:
        The reward; equal to ``top1`` at ``latency_ms == target_ms``.

    Raises:
        GpunetError: a latency or target that is not a positive finite number, or ``w > 0``.
    """
    for name, value in (("latency_ms", latency_ms), ("target_ms", target_ms)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise GpunetError(name, value, "a latency in ms > 0")
    if not (math.isfinite(w) and w <= 0):
        raise GpunetError("w", w, "an exponent <= 0 (MnasNet: -0.07 soft, -1 hard)")
    exponent = 0.0 if hard and latency_ms <= target_ms else w
    return float(top1) * (latency_ms / target_ms) ** exponent


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(latency_ms, top1)`` that no other point dominates (lower or equal latency and
    higher or equal top-1, one of them strictly), sorted by latency. Of equal points the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def search_score(algorithm: object, top1: float, latency_ms: float, target_ms: float | None = None) -> float:
    """What a searcher maximises for one trained network under ``spec.algorithm`` (an :class:`~gpunet.spec.AlgorithmSpec`):
    top-1 for objective ``tiered``; :func:`mnas_reward` against ``target_ms`` (default ``algorithm.target_ms``)
    for ``mnas``, with 0 for a network whose latency is unknown (not finite)."""
    if getattr(algorithm, "objective") != "mnas":
        return float(top1)
    if not (isinstance(latency_ms, (int, float)) and math.isfinite(latency_ms) and latency_ms > 0):
        return 0.0
    return mnas_reward(top1, latency_ms, target_ms or getattr(algorithm, "target_ms"), getattr(algorithm, "w"),
                       getattr(algorithm, "hard"))
