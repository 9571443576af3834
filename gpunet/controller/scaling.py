"""Phase Scaling, between Searching and Finalizing (only with ``spec.scaling``): latency-aware compound scaling
(LACS; EfficientNet-X, Li et al., CVPR 2021) of the base tier's winner into a model family.

1. The base network is the winner of ``spec.scaling.baseTier`` (by :func:`~.state.score_of`, as in ``hub.json``).
   Its depth/width/resolution-scaled versions over the coefficient grid of ``spec.scaling``
   (:func:`gpunet.scaling.family_grid`) contain layers the table has not measured; those are planned into batches
   and leased to profilers like the layers of phase Profiling (:meth:`.profiling.ProfilingStage.add`).
2. With every layer in the table, each family target gets the ``candidatesPerTarget`` scaled networks whose table
   latency is closest under it (:func:`gpunet.scaling.plan_family`). They are queued for the trainers as
   candidates of tier ``len(spec.tier_targets) + j`` (``Candidate.architecture`` and ``Candidate.scaling`` set,
   ``vector`` empty) and trained under leases with the search's recipe.
3. The phase ends when every scaled candidate is finished; the family member of each target is the candidate with
   the best MnasNet reward against it (:func:`gpunet.controller.outputs.family_members`), measured end to end in
   Finalizing and written to ``hub.json``'s ``family`` and ``pareto.png``.

Restarts: the queued candidates are in the state; a restart before they were queued plans again from the table
(the measured layers stay there).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Any, Callable

from ..scaling import family_grid, plan_family
from ..spec import SearchSpec
from .state import FAILED, FINISHED, Candidate, ControllerState, architecture_of

if TYPE_CHECKING:  # pragma: no cover
    from ..latency import LatencyTable
    from .profiling import ProfilingStage
    from .trainers import TrainerDesk

log = logging.getLogger(__name__)



class ScalingStage:
    """The Scaling phase's plan and progress (see the module docstring).

    Args:
        spec: the search (``spec.scaling`` enabled).
        state: the controller's state; scaled candidates join its candidates.
        table: the latency table (read here; the profiling stage writes it).
        profiling: takes the batches of the scaled networks' missing layers.
        desk: the scaled candidates are queued there.
        lock: the controller's lock; :meth:`drive` takes it around state changes.
        save: persists the state header and the given candidates (with the lock held).
        batch_size: layer keys per profiling batch.
    """

    def __init__(self, spec: SearchSpec, state: ControllerState, table: "LatencyTable", profiling: "ProfilingStage",
                 desk: "TrainerDesk", lock: threading.RLock, save: Callable[..., None], batch_size: int) -> None:
        self.spec, self.space, self.state, self.table = spec, spec.space(), state, table
        self.profiling, self.desk, self.lock, self.save, self.batch_size = profiling, desk, lock, save, batch_size
        #: The first tier index of the family (tier ``first + j`` is target ``j``).
        self.first = len(spec.tier_targets)
        self.planned = any(c.scaling for c in state.candidates.values())
        self.message = ""
        self._networks: list[tuple[float, float, float, Any]] | None = None
        self._base: Candidate | None = None

    def members(self) -> list[Candidate]:
        """The scaled candidates (call with the lock held)."""
        return [c for c in self.state.candidates.values() if c.scaling]

    def drive(self, now: float) -> bool:
        """Move the phase on (the driver thread); True once every scaled candidate is trained or nothing is to
        scale."""
        with self.lock:
            if self.planned:
                members = self.members()
                done = sum(c.state in (*FINISHED, FAILED) for c in members)
                if members:  # none: the message says why (no base network, no target met)
                    self.message = f"LACS: {done}/{len(members)} scaled networks trained"
                return done == len(members)
            if self.profiling.batches:
                return False  # the scaled networks' layers are being measured
        if self._networks is None:
            return not self._plan_layers()  # the next round queues the candidates, once the layers are measured
        self._queue(now)
        return False

    def _plan_layers(self) -> bool:
        """Grid the base network's scaled versions and hand the layers the table lacks to the profilers; False
        when there is nothing to scale (no base network)."""
        from ..latency import plan_profiling
        from .outputs import best_per_tier

        with self.lock:
            candidates = sorted(self.state.candidates.values(), key=lambda c: c.id)
            skip = set(self.state.unmeasurable)
        winners, chosen = best_per_tier(candidates, self.first, self.spec), self.spec.scaling.base_tier
        # The chosen tier may be empty (its pool had no network on a slower machine) or all its candidates may
        # have failed: then the nearest tier with a winner is scaled, and the message says so.
        tier = min((t for t, w in enumerate(winners) if w is not None), key=lambda t: (abs(t - chosen), t), default=None)
        if tier is None:
            with self.lock:
                self.planned = True
                self.message = "LACS: no tier has a trained network to scale; the family stays empty"
            log.warning("%s", self.message)
            return False
        base = winners[tier]
        if tier != chosen:
            log.warning("LACS: tier %d (spec.scaling.baseTier) has no trained network; scaling %s, the winner of tier %d, "
                        "the nearest tier with one", chosen, base.id, tier)
        networks = family_grid(architecture_of(self.space, base), self.space, self.spec.scaling)
        plan = plan_profiling(self.table, self.profiling.target(), archs=[a for *_, a in networks],
                              batch_size=self.batch_size, exclude=skip)
        with self.lock:
            self._networks, self._base = networks, base
            if plan:
                self.profiling.add(plan)
                self.message = (f"LACS: measuring {sum(len(b.keys) for b in plan)} layers of {len(networks)} scaled "
                                f"versions of {base.id}")
                log.info("%s", self.message)
        return True

    def _latency(self, arch: Any) -> float:
        from ..latency import estimate_latency
        from ..latency.errors import MissingLayersError

        try:
            return estimate_latency(arch, self.table, self.profiling.target())
        except MissingLayersError:  # a layer no profiler could measure: the network is left out
            return math.nan

    def _queue(self, now: float) -> None:
        """Queue the scaled networks closest under each target for the trainers."""
        assert self._networks is not None and self._base is not None
        scaling = self.spec.scaling
        family = plan_family(self._networks, self._latency, scaling.targets_ms, scaling.candidates_per_target)
        new = []
        for j, member in enumerate(family):
            for k, choice in enumerate(member.choices):
                new.append(Candidate(
                    id=f"s{j}-c{k:04d}", tier=self.first + j, trial_id=k, vector=[], latency_ms=choice.latency_ms,
                    created=now, architecture=choice.architecture.to_dict(),
                    scaling={"target_ms": member.target_ms, "depth_mult": choice.depth_mult,
                             "width_mult": choice.width_mult, "resolution_mult": choice.resolution_mult,
                             "base_candidate_id": self._base.id}))
        unmet = [m.target_ms for m in family if not m.choices]
        with self.lock:
            for cand in new:
                self.desk.add(cand)
            self.planned = True
            self.message = f"LACS: {len(new)} scaled versions of {self._base.id} queued" + \
                (f"; targets no scaled network meets: {unmet} ms" if unmet else "")
            self.save(*new)
        log.info("%s", self.message)

