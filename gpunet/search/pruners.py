"""Early-stopping rules (pruners), apart from the searchers as in Optuna (``optuna.pruners``): the controller asks a
pruner whether a running candidate goes on after an epoch; the searchers know nothing of early stopping.

A pruner looks at learning curves (:class:`Curve`: the value to maximise after each step, e.g. the validation top-1
after each epoch, or the MnasNet reward of that top-1) and answers a :class:`Decision`:

- :class:`MedianPruner`: the median stopping rule of Google Vizier (Golovin et al., KDD 2017, section 3.2.2):
  "stop a pending trial x_t at step s if the trial's best objective value by step s is strictly worse than the
  median value of the running averages o^_{1:s} of all completed trials' objectives reported up to step s".
- :class:`ASHAPruner`: asynchronous successive halving (Li et al., MLSys 2020, Algorithm 2) as a stopping rule:
  rung ``k`` lies at step ``min_resource * eta^k``; a trial reaching a rung goes on only if its value there is among
  the top ``1/eta`` of the values recorded at that rung so far (at least the single best), as in Optuna's
  ``SuccessiveHalvingPruner`` and Ray Tune's ``ASHAScheduler``, which cannot pause trials either.
- :class:`NopPruner`: never stops.

Both rules share a warm-up (no decision before step ``warmup_steps``), a minimum of peers (no decision while
fewer than ``min_peers`` other curves count), and the last step is never pruned (nothing is left to save). They
hold no state: every decision is a function of the curves given, which the controller keeps in its own state, so
a restarted controller decides as before and there is no state dict to save.

The curves come as a list or as a :class:`PeerIndex`, which keeps what the rules read (per step, the values reached
and the completed curves' running averages) sorted as curves change: a decision then costs O(log n) plus a copy at
worst, where a list of n curves costs O(n * steps). The controller keeps one per tier, so that an epoch report costs
the same after 10 or 10,000 candidates.

Torch-free.
"""

from __future__ import annotations

import bisect
import math
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..errors import GpunetError

#: Names accepted by :func:`create_pruner` (``spec.training.earlyStopping.rule``).
PRUNERS = ("median", "asha", "none")


class PrunerError(GpunetError, ValueError):
    """A pruner setting or a question to a pruner that makes no sense (a step the curve has not reached)."""


@dataclass(frozen=True)
class Curve:
    """One trial's learning curve.

    Attributes:
        trial_id: names the trial (a curve with the asking trial's id among the others is ignored).
        values: ``values[s - 1]`` is the value after step ``s`` (an epoch), to be maximised; one per step reached.
        completed: the trial ran to its end (not running, not stopped early, not failed).
    """

    trial_id: str
    values: tuple[float, ...]
    completed: bool = False


@dataclass(frozen=True)
class Decision:
    """A pruner's answer: ``prune`` (stop the trial now) and, when pruned, why (for the candidate's events)."""

    prune: bool
    reason: str = ""


CONTINUE = Decision(False)


class PeerIndex:
    """The curves a pruner judges against, indexed for its questions.

    Per step ``s`` it keeps, sorted: the values ``values[s - 1]`` of every curve that reached ``s``, and the running
    averages ``mean(values[:s])`` of every completed curve that reached ``s``. :meth:`update` replaces a trial's
    curve (its old values leave the index), so the index follows curves that grow, complete or are cut back (a
    resumed trial that reports an epoch again). A NaN value is indexed as ``-inf`` (the worst).

    Args:
        curves: the curves to start with (one per trial id; a later one replaces an earlier one).
    """

    def __init__(self, curves: Iterable[Curve] = ()) -> None:
        self._curves: dict[str, Curve] = {}
        self._values: dict[int, list[float]] = {}
        self._averages: dict[int, list[float]] = {}
        for curve in curves:
            self.update(curve)

    def __len__(self) -> int:
        return len(self._curves)

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self._curves

    def update(self, curve: Curve) -> None:
        """Put ``curve`` in, in place of the trial's earlier curve (O(steps * log n) per changed step)."""
        old = self._curves.get(curve.trial_id)
        if old == curve:
            return
        if old is not None:
            self._edit(old, bisect_remove)
        self._curves[curve.trial_id] = curve
        self._edit(curve, bisect.insort)

    def discard(self, trial_id: str) -> None:
        """Take a trial's curve out (nothing when it is not in)."""
        old = self._curves.pop(trial_id, None)
        if old is not None:
            self._edit(old, bisect_remove)

    def values_at(self, step: int, exclude: str | None = None) -> list[float]:
        """The values at ``step`` of the curves that reached it, ascending (the trial ``exclude`` left out)."""
        own = self._own(exclude, step, completed=False)
        return _without(self._values.get(step, []), own)

    def averages_at(self, step: int, exclude: str | None = None) -> list[float]:
        """The running averages up to ``step`` of the completed curves that reached it, ascending (``exclude``
        left out)."""
        own = self._own(exclude, step, completed=True)
        return _without(self._averages.get(step, []), own)

    def _own(self, trial_id: str | None, step: int, completed: bool) -> float | None:
        curve = self._curves.get(trial_id) if trial_id is not None else None
        if curve is None or len(curve.values) < step or (completed and not curve.completed):
            return None
        return _running_average(curve, step) if completed else _finite_or_worst(curve.values[step - 1])

    def _edit(self, curve: Curve, op: Any) -> None:
        for step, value in enumerate(curve.values, start=1):
            op(self._values.setdefault(step, []), _finite_or_worst(value))
            if curve.completed:
                op(self._averages.setdefault(step, []), _running_average(curve, step))


def bisect_remove(values: list[float], value: float) -> None:
    """Remove one ``value`` from the ascending list ``values`` (it must be there)."""
    i = bisect.bisect_left(values, value)
    if i == len(values) or values[i] != value:
        raise PrunerError("value", value, "a value the index holds (the index is out of step with its curves)")
    del values[i]


def _without(values: list[float], value: float | None) -> list[float]:
    if value is None:
        return values
    out = list(values)
    bisect_remove(out, value)
    return out


def _finite_or_worst(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _running_average(curve: Curve, step: int) -> float:
    return _finite_or_worst(statistics.fmean(curve.values[:step]))


def sorted_median(values: Sequence[float]) -> float:
    """The median of an ascending, non-empty sequence (as :func:`statistics.median` computes it)."""
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


class Pruner(ABC):
    """Decides whether a running trial is stopped after a step (Optuna's ``BasePruner.prune``).

    Args:
        warmup_steps: no trial is pruned at a step below this (Optuna's ``n_warmup_steps + 1``; Katib's
            ``start_step``).
        min_peers: no decision while fewer than this many other curves count at the step.
        max_steps: the steps of a full run; a trial is never pruned at step ``max_steps`` or later. None: no limit.

    Raises:
        PrunerError: a setting below 1.
    """

    name = "base"

    def __init__(self, warmup_steps: int = 1, min_peers: int = 1, max_steps: int | None = None) -> None:
        _at_least("warmup_steps", warmup_steps, 1)
        _at_least("min_peers", min_peers, 1)
        if max_steps is not None:
            _at_least("max_steps", max_steps, 1)
        self.warmup_steps, self.min_peers, self.max_steps = warmup_steps, min_peers, max_steps

    def prune(self, trial: Curve, step: int, others: Sequence[Curve] | PeerIndex) -> Decision:
        """Whether ``trial`` stops after ``step`` (1-based), judged against the curves of ``others`` (a list, or a
        :class:`PeerIndex`; the trial's own curve among them is skipped).

        Raises:
            PrunerError: ``step`` is not in ``1..len(trial.values)``.
        """
        if not 1 <= step <= len(trial.values):
            raise PrunerError("step", step, f"1..{len(trial.values)} (the steps the curve has reached)")
        if step < self.warmup_steps or (self.max_steps is not None and step >= self.max_steps):
            return CONTINUE
        peers = others if isinstance(others, PeerIndex) else PeerIndex(c for c in others if c.trial_id != trial.trial_id)
        return self._decide(trial, step, peers)

    @abstractmethod
    def _decide(self, trial: Curve, step: int, peers: PeerIndex) -> Decision:
        """The rule itself, after the warm-up and last-step checks (``peers`` may hold the trial's own curve:
        leave it out)."""

    def settings(self) -> dict[str, Any]:
        """The pruner's settings, JSON-ready."""
        return {"name": self.name, "warmup_steps": self.warmup_steps, "min_peers": self.min_peers, "max_steps": self.max_steps}


class NopPruner(Pruner):
    """Never prunes (``rule: none``)."""

    name = "none"

    def _decide(self, trial: Curve, step: int, peers: PeerIndex) -> Decision:
        return CONTINUE


class MedianPruner(Pruner):
    """The median stopping rule of Google Vizier (Golovin et al. 2017, 3.2.2).

    At step ``s``: ``best = max(trial.values[:s])``; for each *completed* other trial that reached ``s``, its running
    average ``mean(values[:s])``; the trial is pruned iff ``best < median(running averages)`` (strictly worse). Trials
    still running or stopped early are not completed trials and do not count (as in Optuna's ``MedianPruner`` and
    Ray Tune's ``MedianStoppingRule``).
    """

    name = "median"

    def _decide(self, trial: Curve, step: int, peers: PeerIndex) -> Decision:
        averages = peers.averages_at(step, exclude=trial.trial_id)
        if len(averages) < self.min_peers:
            return CONTINUE
        best, median = max(trial.values[:step]), sorted_median(averages)
        if best < median:
            return Decision(True, f"median stopping rule: best {best:.4f} < median {median:.4f} of the running "
                                  f"averages of {len(averages)} completed candidates at epoch {step}")
        return CONTINUE


class ASHAPruner(Pruner):
    """Asynchronous successive halving (ASHA, Li et al. 2020, Algorithm 2) as a stopping rule.

    Rung ``k`` is at step ``min_resource * reduction_factor^k`` (``k = 0, 1, ...``). At a rung step ``r`` the values
    recorded there are ``values[r - 1]`` of every trial that reached ``r`` (running, stopped or completed) plus the
    trial's own; the trial goes on iff its value is at least the ``max(1, n // reduction_factor)``-th best of those
    ``n`` values (the top ``1/eta`` is promoted). At other steps it goes on.

    Args:
        min_resource: steps of the first rung (``r`` in the paper).
        reduction_factor: ``eta`` (at least 2).
        warmup_steps, min_peers, max_steps: see :class:`Pruner`; ``min_peers`` counts the other values at the rung
            (Optuna's ``bootstrap_count``).
    """

    name = "asha"

    def __init__(self, min_resource: int = 1, reduction_factor: int = 3, warmup_steps: int = 1, min_peers: int = 1,
                 max_steps: int | None = None) -> None:
        super().__init__(warmup_steps, min_peers, max_steps)
        _at_least("min_resource", min_resource, 1)
        _at_least("reduction_factor", reduction_factor, 2)
        self.min_resource, self.reduction_factor = min_resource, reduction_factor

    def rung_of(self, step: int) -> int | None:
        """The rung ``k`` whose step is ``step`` (``step == min_resource * eta^k``), or None."""
        if step < self.min_resource or step % self.min_resource:
            return None
        k = round(math.log(step // self.min_resource, self.reduction_factor))
        return k if self.min_resource * self.reduction_factor ** k == step else None

    def _decide(self, trial: Curve, step: int, peers: PeerIndex) -> Decision:
        rung = self.rung_of(step)
        if rung is None:
            return CONTINUE
        recorded = peers.values_at(step, exclude=trial.trial_id)  # ascending
        if len(recorded) < self.min_peers:
            return CONTINUE
        mine = _finite_or_worst(trial.values[step - 1])
        keep = max(1, (len(recorded) + 1) // self.reduction_factor)
        # ``mine`` is below the keep-th best of recorded + [mine] iff at least ``keep`` recorded values beat it;
        # then those are the best ``keep`` and the threshold is the last of them.
        better = len(recorded) - bisect.bisect_right(recorded, mine)
        if better >= keep:
            threshold = recorded[len(recorded) - keep]
            return Decision(True, f"ASHA: {mine:.4f} at rung {rung} (epoch {step}) is not in the top {keep} of "
                                  f"{len(recorded) + 1} (threshold {threshold:.4f}, eta {self.reduction_factor})")
        return CONTINUE

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "min_resource": self.min_resource, "reduction_factor": self.reduction_factor}


def create_pruner(rule: str, *, warmup_steps: int = 1, min_peers: int = 1, max_steps: int | None = None,
                  min_resource: int = 1, reduction_factor: int = 3) -> Pruner:
    """The pruner named ``rule`` (:data:`PRUNERS`) with its settings (``min_resource`` and ``reduction_factor`` are
    ASHA's). Raises :class:`PrunerError` for an unknown name or a bad setting."""
    if rule == "median":
        return MedianPruner(warmup_steps, min_peers, max_steps)
    if rule == "asha":
        return ASHAPruner(min_resource, reduction_factor, warmup_steps, min_peers, max_steps)
    if rule == "none":
        return NopPruner(warmup_steps, min_peers, max_steps)
    raise PrunerError("rule", rule, PRUNERS)


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PrunerError(name, value, f"an integer >= {low}")
