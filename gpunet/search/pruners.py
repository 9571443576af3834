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

Torch-free.
"""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

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

    def prune(self, trial: Curve, step: int, others: Sequence[Curve]) -> Decision:
        """Whether ``trial`` stops after ``step`` (1-based), judged against the curves of ``others`` (the trial
        itself among them is skipped).

        Raises:
            PrunerError: ``step`` is not in ``1..len(trial.values)``.
        """
        if not 1 <= step <= len(trial.values):
            raise PrunerError("step", step, f"1..{len(trial.values)} (the steps the curve has reached)")
        if step < self.warmup_steps or (self.max_steps is not None and step >= self.max_steps):
            return CONTINUE
        return self._decide(trial, step, [c for c in others if c.trial_id != trial.trial_id])

    @abstractmethod
    def _decide(self, trial: Curve, step: int, others: list[Curve]) -> Decision:
        """The rule itself, after the warm-up and last-step checks."""

    def settings(self) -> dict[str, Any]:
        """The pruner's settings, JSON-ready."""
        return {"name": self.name, "warmup_steps": self.warmup_steps, "min_peers": self.min_peers, "max_steps": self.max_steps}


class NopPruner(Pruner):
    """Never prunes (``rule: none``)."""

    name = "none"

    def _decide(self, trial: Curve, step: int, others: list[Curve]) -> Decision:
        return CONTINUE


class MedianPruner(Pruner):
    """The median stopping rule of Google Vizier (Golovin et al. 2017, 3.2.2).

    At step ``s``: ``best = max(trial.values[:s])``; for each *completed* other trial that reached ``s``, its running
    average ``mean(values[:s])``; the trial is pruned iff ``best < median(running averages)`` (strictly worse). Trials
    still running or stopped early are not completed trials and do not count (as in Optuna's ``MedianPruner`` and
    Ray Tune's ``MedianStoppingRule``).
    """

    name = "median"

    def _decide(self, trial: Curve, step: int, others: list[Curve]) -> Decision:
        averages = [statistics.fmean(c.values[:step]) for c in others if c.completed and len(c.values) >= step]
        if len(averages) < self.min_peers:
            return CONTINUE
        best, median = max(trial.values[:step]), statistics.median(averages)
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

    def _decide(self, trial: Curve, step: int, others: list[Curve]) -> Decision:
        rung = self.rung_of(step)
        if rung is None:
            return CONTINUE
        recorded = [c.values[step - 1] for c in others if len(c.values) >= step]
        if len(recorded) < self.min_peers:
            return CONTINUE
        mine = trial.values[step - 1]
        ranked = sorted([*recorded, mine], reverse=True)
        keep = max(1, len(ranked) // self.reduction_factor)
        threshold = ranked[keep - 1]
        if mine < threshold:
            return Decision(True, f"ASHA: {mine:.4f} at rung {rung} (epoch {step}) is not in the top {keep} of "
                                  f"{len(ranked)} (threshold {threshold:.4f}, eta {self.reduction_factor})")
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
