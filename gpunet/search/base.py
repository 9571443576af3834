"""The ask/tell contract shared by every searcher: :class:`Trial` and :class:`Searcher`.

A searcher proposes points with :meth:`Searcher.ask`, learns their values with :meth:`Searcher.tell` (values are
*maximised*) or :meth:`Searcher.tell_failed`, and never asks a point that is already observed, failed or pending.

Reproducibility: all randomness of the ``k``-th ask comes from ``numpy.random.default_rng([seed, k])`` (and a
torch seed drawn from it), and everything else a proposal depends on is the trial history, which
:meth:`Searcher.state_dict` stores as plain JSON. So a searcher restored with :meth:`Searcher.load_state_dict`
gives the same next asks as the original.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from .spaces import SearchError, Space

#: Statuses of a trial.
PENDING, COMPLETE, FAILED = "pending", "complete", "failed"

#: Tries of rejection sampling before an ask gives up finding an unused point (discrete spaces).
_MAX_REJECTION_TRIES = 64


@dataclass
class Trial:
    """One proposed point. ``params`` is a list of floats (box), ints (integer) or choices (categorical)."""

    id: int
    params: list[Any]
    status: str = PENDING
    value: float | None = None


@dataclass(frozen=True)
class Option:
    """A searcher option: default value and a check that returns None for a valid value, else what was expected
    (e.g. ``"an int >= 1"``; it ends up after "expected" in the :class:`SearchError`)."""

    default: Any
    check: Callable[[Any], str | None]
    help: str = ""


def positive_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "an int >= 1"


def nonneg_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "an int >= 0"


def positive_float(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v) else "a number > 0"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    """A check that accepts exactly one of ``choices`` (strings)."""
    expected = "one of " + ", ".join(choices)
    return lambda v: None if isinstance(v, str) and v in choices else expected


class Searcher:
    """Base class of all searchers (see the module docstring for the contract).

    Subclasses set ``name`` and ``OPTIONS`` and implement :meth:`_propose`; optional extra state goes through
    :meth:`_extra_state` / :meth:`_load_extra_state` and is updated in :meth:`_on_tell`.
    """

    name: str = ""
    OPTIONS: dict[str, Option] = {}

    def __init__(self, space: Space, seed: int = 0, **options: Any) -> None:
        if not isinstance(space, Space):
            raise SearchError("space", type(space).__name__, "a BoxSpace, IntegerSpace or CategoricalSpace")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise SearchError("seed", seed, "an int >= 0")
        self.space, self.seed = space, seed
        self.options = self._check_options(options)
        self.trials: dict[int, Trial] = {}
        self._next_id = 0
        self._asks = 0
        self._seen: set[Hashable] = set()
        self._tell_order: dict[int, int] = {}
        self._post_init()

    def _post_init(self) -> None:
        """Hook for subclasses after options are known."""

    # --- options --------------------------------------------------------------------------------------------------
    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        out = {k: o.default for k, o in cls.OPTIONS.items()}
        for key, value in options.items():
            if key not in cls.OPTIONS:
                raise SearchError(f"option of {cls.name!r}", key, sorted(cls.OPTIONS) or "no options")
            expected = cls.OPTIONS[key].check(value)
            if expected:
                raise SearchError(f"option {key!r} of {cls.name!r}", value, expected)
            out[key] = value
        return out

    # --- the contract ---------------------------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Trial]:
        """Propose ``n`` new points, distinct from every observed, failed and pending one.

        Raises:
            SearchError: ``n`` is not a positive int, or a discrete space has fewer than ``n`` unused points.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SearchError("ask n", n, "an int >= 1")
        if self.space.discrete and self.space.size - len(self._seen) < n:
            left = int(self.space.size - len(self._seen))
            raise SearchError("ask n", n, f"at most {left}", reason=f"only {left} unused points left in the space")
        rng = np.random.default_rng([self.seed, self._asks])
        self._asks += 1
        proposed = self._propose(n, rng)
        out: list[Trial] = []
        for params in proposed[:n]:
            params = self.space.validate(params)
            key = self.space.key(params)
            if key in self._seen:  # a model may propose a used point: replace it by an unused random one
                params = self.random_unseen(1, rng)[0]
                key = self.space.key(params)
            self._seen.add(key)
            out.append(self._new_trial(params))
        while len(out) < n:
            params = self.random_unseen(1, rng)[0]
            self._seen.add(self.space.key(params))
            out.append(self._new_trial(params))
        return out

    def tell(self, trial_id: int, value: float) -> None:
        """Record the (maximised) value of a pending trial. A non-finite value counts as a failure."""
        trial = self._pending_trial(trial_id)
        value = float(value)
        if not math.isfinite(value):
            self.tell_failed(trial_id)
            return
        trial.status, trial.value = COMPLETE, value
        self._on_tell(trial)

    def observe(self, params: Sequence[Any], value: float) -> Trial:
        """Record an evaluation made elsewhere (a warm start, e.g. results of an earlier search) as a completed
        trial; the point is then never asked. Raises :class:`SearchError` for an invalid or already used point."""
        params = self.space.validate(params)
        key = self.space.key(params)
        if key in self._seen:
            raise SearchError("observed point", params, reason="already asked or observed")
        self._seen.add(key)
        trial = self._new_trial(params)
        self.tell(trial.id, value)
        return trial

    def tell_failed(self, trial_id: int) -> None:
        """Record that a pending trial failed: it is not modelled and never asked again."""
        self._pending_trial(trial_id).status = FAILED

    # --- views ----------------------------------------------------------------------------------------------------
    @property
    def pending(self) -> list[Trial]:
        return [t for t in self.trials.values() if t.status == PENDING]

    @property
    def completed(self) -> list[Trial]:
        return [t for t in self.trials.values() if t.status == COMPLETE]

    @property
    def best(self) -> Trial | None:
        """The completed trial with the highest value (the earliest on ties), or None."""
        done = self.completed
        return max(done, key=lambda t: (t.value, -t.id)) if done else None

    def observations(self) -> tuple[np.ndarray, np.ndarray]:
        """Features and values of completed trials: an `n x num_features` array and an `n` array (tell order)."""
        done = sorted(self.completed, key=lambda t: self._tell_order.get(t.id, t.id))
        if not done:
            return np.zeros((0, self.space.num_features)), np.zeros(0)
        return self.space.to_features([t.params for t in done]), np.array([t.value for t in done], dtype=float)

    def pending_features(self) -> np.ndarray:
        """Features of pending trials, an `p x num_features` array."""
        pend = self.pending
        return self.space.to_features([t.params for t in pend]) if pend else np.zeros((0, self.space.num_features))

    # --- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: plain JSON (lists, numbers, strings)."""
        return {
            "algorithm": self.name,
            "seed": self.seed,
            "options": dict(self.options),
            "space": self.space.to_dict(),
            "next_id": self._next_id,
            "asks": self._asks,
            "trials": [asdict(t) for t in self.trials.values()],
            "tell_order": [[k, v] for k, v in self._tell_order.items()],
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the searcher must have the same algorithm (and a matching space)."""
        if state.get("algorithm") != self.name:
            raise SearchError("state algorithm", state.get("algorithm"), (self.name,))
        if Space.from_dict(state["space"]).to_dict() != self.space.to_dict():
            raise SearchError("state space", state["space"].get("kind"), f"this searcher's {self.space.kind} space",
                              reason="the state was saved for another space")
        self.seed = int(state["seed"])
        self.options = self._check_options(state.get("options", {}))
        self._next_id, self._asks = int(state["next_id"]), int(state["asks"])
        self.trials = {}
        self._seen = set()
        for t in state["trials"]:
            trial = Trial(int(t["id"]), list(t["params"]), t["status"], t["value"])
            self.trials[trial.id] = trial
            self._seen.add(self.space.key(trial.params))
        self._tell_order = {int(k): int(v) for k, v in state.get("tell_order", [])}
        self._post_init()
        self._load_extra_state(state.get("extra") or {})

    # --- for subclasses -------------------------------------------------------------------------------------------
    def _propose(self, n: int, rng: np.random.Generator) -> list[list[Any]]:
        raise NotImplementedError

    def _on_tell(self, trial: Trial) -> None:
        """Hook after a successful tell (e.g. TuRBO's trust-region update)."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def random_unseen(self, n: int, rng: np.random.Generator) -> list[list[Any]]:
        """``n`` uniformly random points not yet used (from the pool where the space has one)."""
        if self.space.pool is not None:
            free = self.unused_pool_indices()
            pick = rng.choice(len(free), size=min(n, len(free)), replace=False)
            return [list(self.space.pool[free[i]]) for i in pick]
        out: list[list[Any]] = []
        keys: set[Hashable] = set()
        for _ in range(_MAX_REJECTION_TRIES):
            for p in self.space.from_features(rng.random((max(n, 8), self.space.num_features))):
                k = self.space.key(p)
                if k not in self._seen and k not in keys:
                    out.append(p)
                    keys.add(k)
                    if len(out) == n:
                        return out
        raise SearchError("ask n", n, reason="could not find unused points by sampling; the space is nearly exhausted")

    def unused_pool_indices(self) -> np.ndarray:
        """Indices into ``space.pool`` of points never asked, an int64 array."""
        return np.array([i for i, k in enumerate(self.space.pool_keys()) if k not in self._seen], dtype=np.int64)

    def snap_to_unused(self, z: np.ndarray, taken: set[Hashable] | None = None) -> list[list[Any]]:
        """Map features ``z`` (an `n x num_features` array) to distinct unused points: the nearest unused pool
        member for a pool-restricted space, else the decoded point (a random unused one if that one is used)."""
        taken = set(taken or ())
        out: list[list[Any]] = []
        if self.space.pool is not None:
            free = self.unused_pool_indices()
            pz = self.space.pool_features()[free]
            keys = self.space.pool_keys()
            mask = np.array([keys[i] not in taken for i in free], dtype=bool)
            for row in np.atleast_2d(z):
                if not mask.any():
                    break
                d = np.sum((pz - row) ** 2, axis=1)
                d[~mask] = np.inf
                j = int(np.argmin(d))
                mask[j] = False
                out.append(list(self.space.pool[free[j]]))
            return out
        for p in self.space.from_features(np.atleast_2d(z)):
            k = self.space.key(p)
            if k in self._seen or k in taken:
                continue
            taken.add(k)
            out.append(p)
        return out

    def _pending_trial(self, trial_id: int) -> Trial:
        trial = self.trials.get(trial_id)
        if trial is None:
            raise SearchError("trial id", trial_id, reason="no such trial")
        if trial.status != PENDING:
            raise SearchError("trial id", trial_id, "the id of a pending trial", reason=f"the trial is already {trial.status}")
        self._tell_order[trial_id] = len(self._tell_order)
        return trial

    def _new_trial(self, params: list[Any]) -> Trial:
        trial = Trial(self._next_id, params)
        self.trials[trial.id] = trial
        self._next_id += 1
        return trial
