"""Sobol sampling of a search space, a vectorised latency estimator, and latency tiers (GPUNet paper, 3.2).

The paper approximates the search space by "sampling millions of networks from it" with a Sobol sequence,
estimates each one's latency as the sum of its layers' latencies from the latency table, and groups the
networks into latency tiers; each tier is then searched for accuracy (3.3). Three parts:

- :func:`sobol_vectors`: scrambled, seeded Sobol points (``scipy.stats.qmc.Sobol``), one dimension per
  digit of the 41-integer vector, mapped to valid vectors of any :class:`~gpunet.space.SearchSpace`.
- :class:`LayerGrid`: every layer configuration a space can produce, numbered, with per-stage index arrays,
  so that the layers of ``n`` networks are found with array arithmetic and one gather (no Python loop per
  network); :class:`LatencyEstimator` binds a grid to a :class:`~gpunet.latency.LatencyTable`.
- :func:`tiers_from_targets` / :func:`tiers_from_edges` and :func:`stratify`: tiers with counts and
  deterministic pools.

Shapes: ``vectors`` is an ``n x 41`` integer array (Table 2 order, values not indices); latencies are
``n`` float64 arrays in ms.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .arch import ACTIVATIONS, LAYER_TYPES, NUM_STAGES, conv_out_size
from .errors import SpaceError
from .latency.errors import MissingLayersError, TierError
from .latency.keys import LatencyTarget, LayerKey, key_text, text_digest
from .space import VECTOR_LENGTH, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    from .latency.estimate import Calibration
    from .latency.table import LatencyTable

# ---------------------------------------------------------------------------------------------------
# Sobol sampling
# ---------------------------------------------------------------------------------------------------


#: Sobol points drawn per step of :func:`sobol_vectors` (the sequence continues across steps).
SOBOL_CHUNK = 1 << 16


def sobol_vectors(space: SearchSpace, n: int, seed: int = 0, *, skip: int = 0) -> np.ndarray:
    """``n`` valid architecture vectors from a scrambled Sobol sequence (paper 3.2, Fig. 5).

    One Sobol dimension per digit: a point ``u`` in ``[0, 1)^41`` maps digit ``d`` to
    ``d.values[floor(u_d * len(d.values))]``, so every digit's values are hit in equal proportions and
    pairs of digits are spread evenly (low discrepancy), unlike independent uniform draws.

    Args:
        space: the search space.
        n: number of vectors (any ``n >= 0``; powers of two keep Sobol's balance properties exactly).
        seed: the scrambling seed; the same ``(space, n, seed, skip)`` gives the same array.
        skip: drop the first ``skip`` points (to continue a sequence).

    Returns:
        An ``n x 41`` int64 array of valid vectors (:meth:`SearchSpace.validate` accepts every row).
    """
    from scipy.stats import qmc

    if n < 0 or skip < 0:
        raise SpaceError("n" if n < 0 else "skip", n if n < 0 else skip, "an integer >= 0")
    if n == 0:
        return np.zeros((0, VECTOR_LENGTH), dtype=np.int64)
    engine = qmc.Sobol(d=VECTOR_LENGTH, scramble=True, seed=seed)
    if skip:
        engine.fast_forward(skip)
    out = np.empty((n, VECTOR_LENGTH), dtype=np.int64)
    tables = [(d.index, np.asarray(d.values, dtype=np.int64)) for d in space.digits]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "balance properties ... n is not a power of 2"
        for start in range(0, n, SOBOL_CHUNK):  # chunks keep the float points small and in cache
            points = engine.random(min(SOBOL_CHUNK, n - start))
            rows = out[start : start + len(points)]
            for index, values in tables:
                idx = (points[:, index] * len(values)).astype(np.int64)
                np.minimum(idx, len(values) - 1, out=idx)
                rows[:, index] = values[idx]
    return out


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

#: Columns of :meth:`LayerGrid.layer_ids`: the stem, the first layer of stages 1-7, the repeated layer of
#: stages 1-7 (layers 2.. of a stage share one configuration), the head.
NUM_COLUMNS = 1 + 2 * (NUM_STAGES - 1) + 1


@dataclass
class _StageIndex:
    """The dense index of one stage's layer configurations: axes (in_chs, H, filters, kernel, exp, se, act)."""

    axes: list[np.ndarray]  # sorted allowed values per axis
    first: np.ndarray  # flat key id of the stage's first layer per cell (-1: unreachable)
    repeat: np.ndarray  # flat key id of the stage's repeated layer per cell (-1: none)
    radix: np.ndarray  # strides of the mixed-radix cell number


class LayerGrid:
    """Every layer configuration that the networks of ``space`` can contain, for one latency target.

    The grid numbers the unique :class:`~gpunet.latency.keys.LayerKey` s of the space (``0 .. len(grid)-1``)
    and keeps, per stage, a dense array from the stage's configuration cell (input channels, input size,
    filters, kernel, expansion, SE, activation) to key numbers. :meth:`layer_ids` then turns an ``n x 41``
    array of vectors into an ``n x 16`` array of key numbers and an ``n x 16`` array of how often each
    occurs, with a few numpy operations per stage (paper 3.2's table lookup, vectorised).

    Args:
        space: the search space.
        target: backend, device, precision and batch size of the keys.

    Attributes:
        keys_text: the text of every key, by key number.
        digests: the digest of every key, by key number (``numpy`` array of str).
        types: the layer type index (into :data:`gpunet.arch.LAYER_TYPES`) of every key.
    """

    def __init__(self, space: SearchSpace, target: LatencyTarget) -> None:
        self.space, self.target = space, target
        self._ids: dict[str, int] = {}
        self._args: list[tuple[Any, ...]] = []
        self.keys_text: list[str] = []
        self._build()
        self.digests = np.asarray(list(self._ids), dtype=object)
        self.types = np.asarray([LAYER_TYPES.index(a[0]) for a in self._args], dtype=np.int8)

    # --- construction --------------------------------------------------------------------------
    def _key_id(self, *args: Any) -> int:
        t = self.target
        text = key_text(*args[:1], t.batch_size, *args[1:], t.backend, t.device, t.precision)
        digest = text_digest(text)
        found = self._ids.get(digest)
        if found is None:
            found = self._ids[digest] = len(self._args)
            self._args.append(args)
            self.keys_text.append(text)
        return found

    def _build(self) -> None:
        space = self.space
        digits = {(d.stage, d.attr): d for d in space.digits}
        self._col = {(d.stage, d.attr): d.index for d in space.digits}
        act_names = ACTIVATIONS
        res = np.asarray(sorted(space.resolution), dtype=np.int64)
        f0 = np.asarray(sorted(digits[(0, "filters")].values), dtype=np.int64)
        s0 = space.stages[0]
        # stem: axes (resolution, filters)
        self._stem_axes = [res, f0]
        stem = np.empty((len(res), len(f0)), dtype=np.int64)
        for (i, r), (j, f) in itertools.product(enumerate(res), enumerate(f0)):
            stem[i, j] = self._key_id("conv", space.in_chans, int(r), int(r), int(f), space.stem_kernel, s0.stride, 1, 0,
                                      space.stem_act, 0)
        self._stem = stem.ravel()
        chans = set(int(f) for f in f0)
        sizes = {conv_out_size(int(r), s0.stride) for r in res}
        self._stages: dict[int, _StageIndex] = {}
        for s in range(1, NUM_STAGES):
            rng = space.stages[s]
            filters = f0 if s == 1 else np.asarray(sorted(digits[(s, "filters")].values), dtype=np.int64)
            is_conv = rng.block == "conv"
            axes = [
                np.asarray(sorted(chans), dtype=np.int64),
                np.asarray(sorted(sizes), dtype=np.int64),
                filters,
                np.asarray(sorted(digits[(s, "kernel")].values), dtype=np.int64),
                np.asarray([1] if is_conv else sorted(digits[(s, "expansion")].values), dtype=np.int64),
                np.asarray([0] if is_conv else sorted(digits[(s, "se")].values), dtype=np.int64),
                np.asarray(sorted(digits[(s, "act")].values), dtype=np.int64),
            ]
            layers = digits[(s, "layers")].values
            shape = tuple(len(a) for a in axes)
            first = np.full(shape, -1, dtype=np.int64)
            repeat = np.full(shape, -1, dtype=np.int64)
            for cell in itertools.product(*(range(n) for n in shape)):
                c, h, f, k, e, se, a = (int(axes[i][j]) for i, j in enumerate(cell))
                if s == 1 and c != f:  # stage 1 shares stage 0's filters: in == out always
                    continue
                act = act_names[a]
                if max(layers) >= 1:
                    first[cell] = self._key_id(rng.block, c, h, h, f, k, rng.stride, e, se, act, 0)
                if max(layers) >= 2:
                    ho = conv_out_size(h, rng.stride)
                    repeat[cell] = self._key_id(rng.block, f, ho, ho, f, k, 1, e, se, act, 0)
            radix = np.cumprod((shape[1:] + (1,))[::-1])[::-1].astype(np.int64)
            self._stages[s] = _StageIndex(axes, first.ravel(), repeat.ravel(), radix)
            out_sizes = {conv_out_size(h, rng.stride) for h in sizes}
            new_chans = set(int(f) for f in filters)
            if 0 in layers:
                chans, sizes = chans | new_chans, sizes | out_sizes
            else:
                chans, sizes = new_chans, out_sizes
        self._head_axes = [np.asarray(sorted(chans), dtype=np.int64), np.asarray(sorted(sizes), dtype=np.int64)]
        head = np.empty((len(chans), len(sizes)), dtype=np.int64)
        for (i, c), (j, h) in itertools.product(enumerate(self._head_axes[0]), enumerate(self._head_axes[1])):
            head[i, j] = self._key_id("head", int(c), int(h), int(h), space.head_channels, 1, 1, 1, 0, space.head_act,
                                      space.num_classes)
        self._head = head.ravel()

    # --- keys ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._args)

    def key(self, i: int) -> LayerKey:
        """The :class:`LayerKey` of key number ``i``."""
        typ, c, h, w, out, k, s, e, se, act, cls = self._args[int(i)]
        t = self.target
        return LayerKey(typ, (t.batch_size, c, h, w), out, k, s, e, bool(se), act, cls, t.backend, t.device, t.precision)

    def keys(self, ids: Iterable[int] | None = None) -> list[LayerKey]:
        """The keys of the given numbers (default: all, in number order)."""
        return [self.key(i) for i in (range(len(self)) if ids is None else ids)]

    # --- vectorised lookup ---------------------------------------------------------------------------
    @staticmethod
    def _index(axis: np.ndarray, x: np.ndarray, name: str) -> np.ndarray:
        idx = np.searchsorted(axis, x)
        idx = np.minimum(idx, len(axis) - 1)
        bad = axis[idx] != x
        if bad.any():
            raise SpaceError(name, int(x[bad][0]), tuple(axis.tolist()))
        return idx

    def layer_ids(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Key numbers and multiplicities of the layers of ``n`` networks.

        Args:
            vectors: an ``n x 41`` integer array of valid vectors of this grid's space.

        Returns:
            ``(ids, counts)``: two ``n x 16`` arrays (int64, int32). Column 0 is the stem, 1-7 the first
            layer of stages 1-7, 8-14 their repeated layer, 15 the head. Network ``i`` consists of layer
            ``ids[i, j]`` taken ``counts[i, j]`` times; where ``counts`` is 0, ``ids`` is ``len(self)``
            (a sentinel for a zero latency).

        Raises:
            SpaceError: a digit value that is not in the space (names the stage/attribute and the allowed values).
        """
        v = np.asarray(vectors, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != VECTOR_LENGTH:
            raise SpaceError("vectors", v.shape, f"an n x {VECTOR_LENGTH} array")
        n = v.shape[0]
        ids = np.empty((n, NUM_COLUMNS), dtype=np.int64)
        counts = np.zeros((n, NUM_COLUMNS), dtype=np.int32)
        col = self._col
        res, f0 = v[:, 0], v[:, col[(0, "filters")]]
        ri, fi = self._index(self._stem_axes[0], res, "resolution"), self._index(self._stem_axes[1], f0, "stage 0 filters")
        ids[:, 0] = self._stem[ri * len(self._stem_axes[1]) + fi]
        counts[:, 0] = 1
        chans = f0
        size = (res - 1) // self.space.stages[0].stride + 1
        for s in range(1, NUM_STAGES):
            st = self._stages[s]
            rng = self.space.stages[s]
            layers = v[:, col[(s, "layers")]]
            filters = f0 if s == 1 else v[:, col[(s, "filters")]]
            parts = [chans, size, filters, v[:, col[(s, "kernel")]]]
            if rng.block == "conv":
                parts += [np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)]
            else:
                parts += [v[:, col[(s, "expansion")]], v[:, col[(s, "se")]]]
            parts.append(v[:, col[(s, "act")]])
            names = ("input channels", "input size", "filters", "kernel", "expansion", "SE", "activation")
            cell = np.zeros(n, dtype=np.int64)
            for axis, x, r, name in zip(st.axes, parts, st.radix, names):
                cell += self._index(axis, x, f"stage {s} {name}") * r
            has = layers > 0
            counts[:, s] = has
            counts[:, 7 + s] = np.maximum(layers - 1, 0)
            ids[:, s] = st.first[cell]
            ids[:, 7 + s] = st.repeat[cell]
            chans = np.where(has, filters, chans)
            size = np.where(has, (size - 1) // rng.stride + 1, size)
        ci = self._index(self._head_axes[0], chans, "head input channels")
        hi = self._index(self._head_axes[1], size, "head input size")
        ids[:, 15] = self._head[ci * len(self._head_axes[1]) + hi]
        counts[:, 15] = 1
        ids[counts == 0] = len(self)
        return ids, counts

    def needed_ids(self, vectors: np.ndarray) -> np.ndarray:
        """Sorted unique key numbers that the networks of ``vectors`` contain."""
        ids, counts = self.layer_ids(vectors)
        return np.unique(ids[counts > 0])

    def values_from(self, medians: dict[str, float]) -> np.ndarray:
        """Per-key latency array (ms, length ``len(self) + 1``; NaN where missing, 0 for the sentinel)."""
        out = np.fromiter((medians.get(d, np.nan) for d in self.digests), dtype=np.float64, count=len(self))
        return np.append(out, 0.0)

    def estimate(self, vectors: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Sum of layer latencies of ``n`` networks: ``(values[ids] * counts).sum(1)``, an ``n`` array (ms).

        ``values`` comes from :meth:`values_from`; a network with a missing layer gets NaN.
        """
        v = np.asarray(vectors)
        out = np.empty(len(v))
        for start in range(0, len(v), SOBOL_CHUNK):  # chunks keep the n x 16 temporaries in cache
            ids, counts = self.layer_ids(v[start : start + SOBOL_CHUNK])
            out[start : start + len(ids)] = (values[ids] * counts).sum(axis=1)
        return out

    def features(self, vectors: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Calibration features of ``n`` networks, an ``n x 6`` array: total ms, ms of conv, fused-IRB,
        IRB and head layers, number of layers (see :mod:`gpunet.latency.estimate`)."""
        ids, counts = self.layer_ids(vectors)
        lat = values[ids] * counts
        types = np.append(self.types, -1)[ids]
        out = np.empty((len(ids), 6))
        out[:, 0] = lat.sum(axis=1)
        for t in range(4):
            out[:, 1 + t] = np.where(types == t, lat, 0.0).sum(axis=1)
        out[:, 5] = counts.sum(axis=1)
        return out


@functools.lru_cache(maxsize=8)
def layer_grid(space: SearchSpace, target: LatencyTarget) -> LayerGrid:
    """The :class:`LayerGrid` of ``(space, target)``, built once per process and then shared (read-only).

    Building one takes about a second for the ``gpunet`` preset (133k keys); controllers that plan and
    estimate repeatedly should get grids from here.
    """
    return LayerGrid(space, target)


class LatencyEstimator:
    """The table estimate of many networks at once: a :class:`LayerGrid` with the table's values loaded.

    Args:
        space: the search space of the vectors.
        table: the latency table (read once, at construction; call :meth:`reload` after new entries).
        target: backend/device/precision/batch size of the entries to use.
        calibration: optional :class:`~gpunet.latency.estimate.Calibration` applied by :meth:`estimate`
            when ``calibrated=True``.
        grid: a grid for ``(space, target)``; default: the shared one of :func:`layer_grid`.
    """

    def __init__(self, space: SearchSpace, table: "LatencyTable | dict[str, float]", target: LatencyTarget, *,
                 calibration: "Calibration | None" = None, grid: LayerGrid | None = None) -> None:
        self.space, self.table, self.target = space, table, target
        self.grid = grid if grid is not None else layer_grid(space, target)
        self.calibration = calibration
        self.reload()

    def reload(self) -> None:
        medians = self.table if isinstance(self.table, dict) else self.table.medians(self.target)
        self.values = self.grid.values_from(medians)

    def missing_keys(self, vectors: np.ndarray) -> list[LayerKey]:
        """Keys the networks of ``vectors`` need that the table lacks (in key-number order)."""
        ids = self.grid.needed_ids(vectors)
        return self.grid.keys(ids[np.isnan(self.values[ids])])

    def estimate(self, vectors: np.ndarray, *, calibrated: bool = False, allow_missing: bool = False) -> np.ndarray:
        """Estimated latency (ms) of ``n`` networks, an ``n`` float64 array (paper 3.2: sum of layer latencies).

        Args:
            vectors: ``n x 41`` integer array.
            calibrated: apply the calibration (raises ``ValueError`` when there is none).
            allow_missing: return NaN for networks with a missing layer instead of raising.

        Raises:
            MissingLayersError: a layer is not in the table (and ``allow_missing`` is false).
        """
        if calibrated and self.calibration is None:
            raise ValueError("calibrated: got True; expected a calibration (fit one with `gpunet latency validate`)")
        if calibrated:
            feats = self.grid.features(vectors, self.values)
            est = self.calibration.apply(feats)  # type: ignore[union-attr]
        else:
            est = self.grid.estimate(vectors, self.values)
        if not allow_missing and np.isnan(est).any():
            raise MissingLayersError(self.missing_keys(np.asarray(vectors)[np.isnan(est)][:1000]))
        return est


# ---------------------------------------------------------------------------------------------------
# Latency tiers
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
        vectors: ``n x 41`` vectors in sample order (e.g. from :func:`sobol_vectors`).
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
