"""Search spaces for the ask/tell searchers: continuous boxes, integer/ordinal vectors, categorical vectors.

Every space maps a point's ``params`` (the list a :class:`~gpunet.search.Trial` carries) to a numeric *feature*
vector in the unit cube and back:

- :class:`BoxSpace`: ``params`` are floats; features are the coordinates scaled to ``[0, 1]``.
- :class:`IntegerSpace`: ``params`` are ints, each from an ordered tuple of allowed values per dimension
  (``lower..upper`` inclusive, or a GPUNet digit's values); the feature of the ``i``-th of ``k`` values is
  ``(i + 0.5) / k``, so that a uniform (Sobol) point of the cube decodes to uniformly spread values.
- :class:`CategoricalSpace`: ``params`` are choices; features are one-hot blocks (a GP then sees no false order).

Discrete spaces can be *pool-restricted* (:meth:`IntegerSpace.restrict`): only the listed vectors may be asked,
as in one latency tier of the GPUNet search (paper 3.2-3.3: Sobol-sampled networks grouped into latency tiers,
then searched inside a tier). Searchers then choose among the pool's unused members.

Nothing here imports torch: ``import gpunet.search`` stays cheap.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np

from ..errors import GpunetError


class SearchError(GpunetError, ValueError):
    """An invalid searcher name, option, space, point or call.

    The message has :class:`gpunet.errors.GpunetError`'s one format, naming the field, the value and what was
    expected, e.g. ``option 'leaf_size' of 'lamcts-bo': got -1; expected an int >= 1``. A ``ValueError`` too, so
    that callers catching that keep working.
    """


class Space:
    """Base class. Subclasses define ``dim`` (length of ``params``) and ``num_features`` (length of features)."""

    kind: str = ""
    dim: int
    num_features: int

    # --- encoding -------------------------------------------------------------------------------------------------
    def to_features(self, params_list: Sequence[Sequence[Any]]) -> np.ndarray:
        """Features of points: an `n x num_features` float64 array in ``[0, 1]``."""
        raise NotImplementedError

    def from_features(self, z: np.ndarray) -> list[list[Any]]:
        """Nearest points of features ``z`` (an `n x num_features` array, clipped to the unit cube)."""
        raise NotImplementedError

    def validate(self, params: Sequence[Any]) -> list[Any]:
        """Check one point and return it in canonical form; raises :class:`SearchError`."""
        raise NotImplementedError

    def key(self, params: Sequence[Any]) -> Hashable:
        """A hashable identity of a point, to avoid asking the same point twice."""
        return tuple(params)

    @property
    def discrete(self) -> bool:
        return True

    @property
    def pool(self) -> list[list[Any]] | None:
        """The allowed points of a pool-restricted space, else None."""
        return getattr(self, "_pool", None)

    @property
    def size(self) -> float:
        """Number of distinct points (``math.inf`` for a box)."""
        raise NotImplementedError

    def pool_features(self) -> np.ndarray:
        """Features of the pool, an `N x num_features` array (cached)."""
        if self.pool is None:
            raise SearchError("pool", reason="the space is not pool-restricted")
        cached = getattr(self, "_pool_z", None)
        if cached is None:
            cached = self.to_features(self.pool)
            self._pool_z = cached
        return cached

    def pool_keys(self) -> list[Hashable]:
        cached = getattr(self, "_pool_keys", None)
        if cached is None:
            cached = [self.key(p) for p in self.pool or []]
            self._pool_keys = cached
        return cached

    def restrict(self, pool: Sequence[Sequence[Any]]) -> "Space":
        """A copy of this discrete space whose asks come only from ``pool`` (a list of points)."""
        if not self.discrete:
            raise SearchError(f"pool of a {self.kind} space", reason="only integer and categorical spaces can be pool-restricted")
        checked = [self.validate(p) for p in pool]
        if not checked:
            raise SearchError("pool", [], "at least one point")
        seen: dict[Hashable, list[Any]] = {}
        for p in checked:
            seen.setdefault(self.key(p), p)
        out = self._copy()
        out._pool = list(seen.values())
        return out

    def _copy(self) -> "Space":
        return self.from_dict({**self.to_dict(), "pool": None})

    # --- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (used in searcher state)."""
        raise NotImplementedError

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Space":
        """Inverse of :meth:`to_dict`."""
        kind = data.get("kind")
        if kind == "box":
            return BoxSpace(data["lower"], data["upper"])
        if kind == "integer":
            space: Space = IntegerSpace(data["lower"], data["upper"], values=data.get("values"))
        elif kind == "categorical":
            space = CategoricalSpace(data["choices"])
        else:
            raise SearchError("space kind", kind, ("box", "integer", "categorical"))
        return space.restrict(data["pool"]) if data.get("pool") else space


class BoxSpace(Space):
    """A continuous box ``[lower, upper]`` (per dimension); ``params`` are floats."""

    kind = "box"

    def __init__(self, lower: Sequence[float], upper: Sequence[float]) -> None:
        lo, up = np.asarray(lower, dtype=float).ravel(), np.asarray(upper, dtype=float).ravel()
        if lo.shape != up.shape or lo.size == 0:
            raise SearchError("box bounds", (list(lo), list(up)), "lower and upper of the same non-zero length")
        if not np.all(np.isfinite(lo)) or not np.all(np.isfinite(up)) or np.any(up <= lo):
            raise SearchError("box bounds", (list(lo), list(up)), "finite lower < upper in every dimension")
        self.lower, self.upper = lo, up
        self.dim = self.num_features = int(lo.size)

    @property
    def discrete(self) -> bool:
        return False

    @property
    def size(self) -> float:
        return math.inf

    def to_features(self, params_list):
        x = np.asarray(params_list, dtype=float).reshape(-1, self.dim)
        return (x - self.lower) / (self.upper - self.lower)

    def from_features(self, z):
        z = np.clip(np.asarray(z, dtype=float).reshape(-1, self.dim), 0.0, 1.0)
        return (self.lower + z * (self.upper - self.lower)).tolist()

    def validate(self, params):
        x = np.asarray(params, dtype=float).ravel()
        if x.size != self.dim or np.any(x < self.lower) or np.any(x > self.upper) or not np.all(np.isfinite(x)):
            raise SearchError("box point", list(params), f"{self.dim} floats inside the bounds")
        return x.tolist()

    def to_dict(self):
        return {"kind": "box", "lower": self.lower.tolist(), "upper": self.upper.tolist()}


class IntegerSpace(Space):
    """Integer vectors, ``lower[i] <= x[i] <= upper[i]`` (inclusive), or ordinal digits with explicit ``values``.

    Args:
        lower, upper: per-dimension inclusive bounds (ignored where ``values`` is given; pass ``None``).
        values: optional per-dimension tuples of allowed ints, in their natural order (e.g. a GPUNet digit's
            values); ``params`` are then those values, not their indices.
    """

    kind = "integer"

    def __init__(
        self,
        lower: Sequence[int] | None,
        upper: Sequence[int] | None,
        *,
        values: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if values is None:
            if lower is None or upper is None or len(lower) != len(upper) or len(lower) == 0:
                raise SearchError("integer bounds", (lower, upper), "lower and upper of the same non-zero length")
            for i, (lo, up) in enumerate(zip(lower, upper)):
                if int(lo) != lo or int(up) != up or up < lo:
                    raise SearchError(f"integer bounds[{i}]", (lo, up), "integers with lower <= upper")
            values = [tuple(range(int(lo), int(up) + 1)) for lo, up in zip(lower, upper)]
        vals = [tuple(int(v) for v in vs) for vs in values]
        if not vals or any(len(v) == 0 or len(set(v)) != len(v) for v in vals):
            raise SearchError("integer values", values, "distinct allowed values in every dimension")
        self.values = [tuple(sorted(v)) for v in vals]
        self._index = [{v: i for i, v in enumerate(vs)} for vs in self.values]
        self.lower = [v[0] for v in self.values]
        self.upper = [v[-1] for v in self.values]
        self.cards = np.array([len(v) for v in self.values])
        self.dim = self.num_features = len(self.values)
        self._contiguous = all(v == tuple(range(v[0], v[-1] + 1)) for v in self.values)

    @classmethod
    def from_search_space(cls, space: Any, pool: Sequence[Sequence[int]] | np.ndarray | None = None) -> "IntegerSpace":
        """A GPUNet space (:class:`gpunet.space.SearchSpace`: 41 digits, more with block digits) as an ordinal integer space.

        ``params`` are architecture vectors of digit *values* (what ``space.decode`` takes). With ``pool`` (an
        `N x d` array or list of vectors, e.g. one latency tier's networks) asks come only from the pool.
        """
        out = cls(None, None, values=[d.values for d in space.digits])
        if pool is not None:
            out = out.restrict([list(map(int, p)) for p in np.asarray(pool).tolist()])
        return out

    @property
    def size(self) -> float:
        return float(len(self.pool)) if self.pool is not None else float(np.prod(self.cards.astype(float)))

    def indices(self, params_list) -> np.ndarray:
        """Per-digit indices of points, an `n x dim` int64 array."""
        return np.array([[self._index[j][int(v)] for j, v in enumerate(p)] for p in params_list], dtype=np.int64).reshape(-1, self.dim)

    def to_features(self, params_list):
        return (self.indices(params_list) + 0.5) / self.cards

    def from_features(self, z):
        z = np.clip(np.asarray(z, dtype=float).reshape(-1, self.dim), 0.0, 1.0)
        idx = np.minimum(np.floor(z * self.cards).astype(np.int64), self.cards - 1)
        return [[self.values[j][i] for j, i in enumerate(row)] for row in idx]

    def validate(self, params):
        if len(params) != self.dim:
            raise SearchError("integer point length", len(params), self.dim)
        out = []
        for j, v in enumerate(params):
            if int(v) != v or int(v) not in self._index[j]:
                allowed = f"an int in {self.lower[j]}..{self.upper[j]}" if self._contiguous else self.values[j]
                raise SearchError(f"integer point[{j}]", v, allowed)
            out.append(int(v))
        return out

    def to_dict(self):
        d: dict[str, Any] = {"kind": "integer", "lower": list(self.lower), "upper": list(self.upper)}
        if not self._contiguous:
            d["values"] = [list(v) for v in self.values]
        d["pool"] = self.pool
        return d


class CategoricalSpace(Space):
    """One choice per dimension from ``choices[i]`` (a list of JSON-able values); one-hot features."""

    kind = "categorical"

    def __init__(self, choices: Sequence[Sequence[Any]]) -> None:
        if not choices or any(len(c) == 0 for c in choices):
            raise SearchError("categorical choices", choices, "at least one choice per dimension")
        self.choices = [list(c) for c in choices]
        self._index = [{self._h(v): i for i, v in enumerate(c)} for c in self.choices]
        if any(len(ix) != len(c) for ix, c in zip(self._index, self.choices)):
            raise SearchError("categorical choices", choices, "distinct choices in every dimension")
        self.cards = np.array([len(c) for c in self.choices])
        self.offsets = np.concatenate([[0], np.cumsum(self.cards)[:-1]])
        self.dim = len(self.choices)
        self.num_features = int(self.cards.sum())

    @staticmethod
    def _h(v: Any) -> Hashable:
        return tuple(v) if isinstance(v, list) else v

    @property
    def size(self) -> float:
        return float(len(self.pool)) if self.pool is not None else float(np.prod(self.cards.astype(float)))

    def indices(self, params_list) -> np.ndarray:
        """Per-dimension choice indices, an `n x dim` int64 array."""
        return np.array([[self._index[j][self._h(v)] for j, v in enumerate(p)] for p in params_list], dtype=np.int64).reshape(-1, self.dim)

    def to_features(self, params_list):
        idx = self.indices(params_list)
        z = np.zeros((idx.shape[0], self.num_features))
        for j in range(self.dim):
            z[np.arange(idx.shape[0]), self.offsets[j] + idx[:, j]] = 1.0
        return z

    def from_features(self, z):
        z = np.asarray(z, dtype=float).reshape(-1, self.num_features)
        out = []
        for row in z:
            out.append([self.choices[j][int(np.argmax(row[o : o + c]))] for j, (o, c) in enumerate(zip(self.offsets, self.cards))])
        return out

    def key(self, params):
        return tuple(self._h(v) for v in params)

    def validate(self, params):
        if len(params) != self.dim:
            raise SearchError("categorical point length", len(params), self.dim)
        for j, v in enumerate(params):
            if self._h(v) not in self._index[j]:
                raise SearchError(f"categorical point[{j}]", v, self.choices[j])
        return list(params)

    def to_dict(self):
        return {"kind": "categorical", "choices": self.choices, "pool": self.pool}
