"""Latency tiers (GPUNet paper, 3.2): tiers from targets or bin edges, and stratification of sampled networks.

The paper groups sampled networks by their estimated latency into tiers, and searches each tier for accuracy
(3.3). :func:`tiers_from_targets` / :func:`tiers_from_edges` make the tiers; :func:`stratify` counts the networks
of each tier and keeps a deterministic pool of them. Shapes: ``vectors`` is an ``n x 41`` integer array
(Table 2 order, values not indices); latencies are ``n`` float64 arrays in ms.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..arch import NUM_STAGES
from ..latency.errors import TierError
from ..space import SearchSpace


def canonical_vectors(space: SearchSpace, vectors: np.ndarray) -> np.ndarray:
    """Vectors with the digits of 0-layer stages set to their smallest value (one vector per network).

    Two vectors that differ only in a skipped stage's digits decode to the same network; in canonical form
    they are equal (as :meth:`SearchSpace.encode` writes them).
    """
    out = np.array(vectors, dtype=np.int64, copy=True)
    for s in range(1, NUM_STAGES):
        digits = [d for d in space.digits if d.stage == s]
        layers = next(d for d in digits if d.attr == "layers")
        empty = out[:, layers.index] == 0
        if empty.any():
            for d in digits:
                if d.attr != "layers":
                    out[empty, d.index] = d.values[0]
    return out


# ---------------------------------------------------------------------------------------------------
# The layer grid: every layer configuration of a space, numbered
# ---------------------------------------------------------------------------------------------------



@dataclass(frozen=True)
class Tier:
    """A latency tier: the networks with ``low_ms <= latency < high_ms`` (paper 3.2, e.g. "<= 0.85 ms").

    Attributes:
        name: e.g. ``"0.50ms"`` (from a target) or ``"[0.50, 1.00)ms"`` (from bin edges).
        low_ms, high_ms: the bounds in ms (``high_ms`` may be ``inf``).
        target_ms: the target the tier was made from, or None for bin edges.
    """

    name: str
    low_ms: float
    high_ms: float
    target_ms: float | None = None

    def contains(self, latency_ms: np.ndarray) -> np.ndarray:
        return (latency_ms >= self.low_ms) & (latency_ms < self.high_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "low_ms": self.low_ms, "high_ms": None if math.isinf(self.high_ms) else self.high_ms,
                "target_ms": self.target_ms}


def parse_tolerance(text: str | float) -> tuple[float, bool]:
    """``"0.1"`` -> (0.1, relative); ``"0.05ms"`` -> (0.05, absolute ms). Raises :class:`TierError`."""
    if isinstance(text, (int, float)):
        value, relative = float(text), True
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|%)?\s*", str(text))
        if not m:
            raise TierError("tolerance", text, "a fraction such as 0.1, a percentage such as 10%, or ms such as 0.05ms")
        value, relative = float(m.group(1)), m.group(2) != "ms"
        if m.group(2) == "%":
            value /= 100.0
    if value < 0 or (relative and value >= 1):
        raise TierError("tolerance", text, "a fraction in [0, 1) or a non-negative number of ms")
    return value, relative


def tiers_from_targets(targets_ms: Sequence[float], tolerance: float | str = 0.1) -> list[Tier]:
    """Tiers ``target ± tolerance`` (paper: networks of about the same latency share a tier).

    Args:
        targets_ms: the tier targets in ms, each > 0.
        tolerance: a fraction of each target (``0.1`` = ±10%, also ``"10%"``), or absolute ms as a string
            ``"0.05ms"``. Tiers may overlap; a network then belongs to each.

    Raises:
        TierError: no targets, a target <= 0, or a bad tolerance.
    """
    value, relative = parse_tolerance(tolerance)
    if not len(targets_ms):
        raise TierError("tiers", list(targets_ms), "at least one target latency in ms")
    tiers = []
    for t in targets_ms:
        if not (float(t) > 0):
            raise TierError("tier target", t, "a latency > 0 ms")
        d = float(t) * value if relative else value
        tiers.append(Tier(f"{float(t):g}ms", float(t) - d, float(t) + d, float(t)))
    return tiers


def tiers_from_edges(edges_ms: Sequence[float]) -> list[Tier]:
    """Consecutive bins ``[e0, e1), [e1, e2), ...`` from increasing edges (ms; the last may be ``inf``).

    Raises:
        TierError: fewer than two edges, or edges not strictly increasing.
    """
    e = [float(x) for x in edges_ms]
    if len(e) < 2:
        raise TierError("tier edges", e, "at least two increasing edges in ms")
    if any(b <= a for a, b in zip(e, e[1:])):
        raise TierError("tier edges", e, "strictly increasing edges")
    return [Tier(f"[{a:g}, {b:g})ms", a, b) for a, b in zip(e, e[1:])]


@dataclass
class TierPool:
    """One tier's outcome: how many sampled networks fall in it, and a deterministic pool of them.

    Attributes:
        tier: the tier.
        count: number of (distinct, when deduplicated) sampled networks in the tier.
        vectors: the pool, a ``k x 41`` int64 array: the tier's first ``k`` networks in sample order.
        latency_ms: their estimated latencies, a ``k`` array (ms).
    """

    tier: Tier
    count: int
    vectors: np.ndarray
    latency_ms: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {**self.tier.to_dict(), "count": self.count, "pool_size": int(len(self.vectors)),
                "pool": self.vectors.tolist(), "latency_ms": [round(float(x), 6) for x in self.latency_ms]}


def first_unique_rows(space: SearchSpace, vectors: np.ndarray) -> np.ndarray:
    """Sorted row numbers of the first occurrence of each distinct vector (exact, no hashing).

    Each row is packed into a few uint64 mixed-radix codes over its digit indices (digits are grouped so
    that each code stays below 2**63), then rows are ordered by a stable ``numpy.lexsort``.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    codes: list[np.ndarray] = []
    code, span = np.zeros(n, dtype=np.uint64), 1
    for d in space.digits:
        card = len(d.values)
        if span * card >= 2**63:
            codes.append(code)
            code, span = np.zeros(n, dtype=np.uint64), 1
        idx = np.searchsorted(np.asarray(d.values), vectors[:, d.index]).astype(np.uint64)
        code = code * np.uint64(card) + idx
        span *= card
    codes.append(code)
    order = np.lexsort(codes[::-1])  # stable: equal rows keep their sample order
    diff = np.zeros(n, dtype=bool)
    diff[0] = True
    for c in codes:
        sorted_c = c[order]
        diff[1:] |= sorted_c[1:] != sorted_c[:-1]
    return np.sort(order[diff])


def stratify(vectors: np.ndarray, latency_ms: np.ndarray, tiers: Sequence[Tier], *, pool_size: int | None = None,
             space: SearchSpace | None = None) -> list[TierPool]:
    """Group sampled networks into latency tiers (paper 3.2).

    Args:
        vectors: ``n x 41`` vectors in sample order (e.g. from :meth:`SearchSpace.sobol`).
        latency_ms: their estimated latency, an ``n`` array (NaN rows are in no tier).
        tiers: from :func:`tiers_from_targets` or :func:`tiers_from_edges`.
        pool_size: keep at most this many networks per tier (default: all). The pool is the tier's first
            networks in sample order, so it is deterministic for a seed and, for Sobol samples, well spread.
        space: when given, vectors are made canonical (:func:`canonical_vectors`) and duplicates dropped
            (first occurrence kept), so a tier counts distinct networks.

    Returns:
        One :class:`TierPool` per tier, in the order of ``tiers``.
    """
    v = np.asarray(vectors, dtype=np.int64)
    lat = np.asarray(latency_ms, dtype=np.float64)
    if len(v) != len(lat):
        raise TierError("latency_ms", len(lat), f"one latency per vector ({len(v)})")
    if space is not None and len(v):
        v = canonical_vectors(space, v)
        keep = first_unique_rows(space, v)
        v, lat = v[keep], lat[keep]
    out = []
    for tier in tiers:
        where = np.flatnonzero(tier.contains(lat))
        pool = where if pool_size is None else where[:pool_size]
        out.append(TierPool(tier, int(len(where)), v[pool], lat[pool]))
    return out
