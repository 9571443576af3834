"""Stage 2 of the search: stratify the sampled networks into latency tiers, then one searcher per tier proposes
candidates ahead of the trainers (GPUNet paper 3.2-3.3), and the early-stopping rule.

- :meth:`SearchStage.stratify` estimates every Sobol-sampled network from the latency table and groups them into
  the tiers of ``spec.latency.tiers`` (:func:`gpunet.sampling.stratify`), written once to ``stratification.json``.
- With ``spec.algorithm.objective: mnas`` there is one "tier": every sampled network with a latency, and its
  searcher maximises the MnasNet reward (:func:`gpunet.objectives.mnas_reward`) instead of top-1.
- Each tier's searcher (:func:`gpunet.search.create` over the tier's pool, in this thread or its own process,
  :mod:`.proposer`) is told finished results and asked for proposals in *rounds*; each round writes a new searcher
  snapshot (``searchers/tier-<t>-v<k>.json``) and the state names the current one. Proposals are asked ahead of
  demand (:meth:`SearchStage.lookahead`), so a free trainer never waits on a model fit.
- :func:`stopping_decision` asks the early-stopping pruner (:mod:`gpunet.search.pruners`, :func:`pruner_of` the
  spec) about a trainer's epoch report.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ..fileio import write_json_atomic
from ..rpc import pb
from ..search.pruners import Curve, PeerIndex
from ..spec import SearchSpec, TrainingSpec
from .leases import Roster
from .state import COMPLETED, FAILED, FINISHED, QUEUED, Candidate, ControllerState, score_of

if TYPE_CHECKING:  # pragma: no cover
    from ..latency import LatencyTable, LatencyTarget
    from ..search.pruners import Pruner
    from .trainers import TrainerDesk

#: Most networks kept per tier pool (the first ones in Sobol order): bounds the searchers' cost and state size.
MAX_POOL = 4096
#: Most proposals asked of one searcher per driver round (a searcher's ask cost grows with the batch).
MAX_ASK_PER_STEP = 16
#: Results are told to a searcher at most this often (seconds) while no new proposal is needed: each round
#: writes a searcher snapshot.
TELL_PERIOD_S = 1.0
#: Least time between two searcher rounds of a tier (seconds): a round (tell, ask, snapshot) holds the GIL for
#: milliseconds to tens of milliseconds, so under many workers proposals come in batches rather than one by one.
MIN_ROUND_INTERVAL_S = 0.5
#: The states whose result a searcher is told.
_TELLABLE = frozenset((*FINISHED, FAILED))


def pruner_of(training: TrainingSpec) -> "Pruner":
    """The pruner of ``spec.training.earlyStopping`` (:func:`gpunet.search.pruners.create_pruner`); ``enabled:
    false`` is rule ``none``. The last epoch (``training.epochs``) is never stopped."""
    from ..search.pruners import create_pruner

    rule = training.early_stopping
    return create_pruner(rule.rule if rule.enabled else "none", warmup_steps=rule.min_epochs, min_peers=rule.min_peers,
                         max_steps=training.epochs, min_resource=rule.min_resource,
                         reduction_factor=rule.reduction_factor)


def curve_of(cand: Candidate, score: Callable[[Candidate, float], float] | None = None) -> "Curve":
    """A candidate's learning curve for the pruner: its top-1 per epoch, or with ``score`` (a candidate and a top-1
    -> what the search maximises, e.g. the MnasNet reward of :func:`~.state.score_of`) their scores; ``completed``
    for state ``completed``."""
    values = tuple(cand.history) if score is None else tuple(score(cand, t) for t in cand.history)
    return Curve(cand.id, values, cand.state == COMPLETED)


def stopping_decision(pruner: "Pruner", candidates: "Iterable[Candidate] | PeerIndex", cand: Candidate, epoch: int,
                      score: Callable[[Candidate, float], float] | None = None) -> tuple[int, str]:
    """Whether ``cand`` goes on after ``epoch``: ``(pb.ProgressAction, reason)``, as ``pruner`` decides.

    The pruner sees the learning curve of ``cand`` (:func:`curve_of`, with ``score``) and those of the other
    candidates of its tier: ``candidates`` (all of them; the tier's are picked), or a :class:`PeerIndex` of the
    tier's curves made with the same ``score`` (what the controller keeps; ``cand``'s own curve in it is skipped).
    """
    if not 1 <= epoch <= len(cand.history):  # a report the history does not hold: nothing to judge
        return pb.PROGRESS_ACTION_CONTINUE, ""
    if not isinstance(candidates, PeerIndex):
        candidates = PeerIndex(curve_of(c, score) for c in candidates if c.tier == cand.tier and c.id != cand.id)
    decision = pruner.prune(curve_of(cand, score), epoch, candidates)
    if decision.prune:
        return pb.PROGRESS_ACTION_STOP, decision.reason + ("" if score is None else " (mnas reward)")
    return pb.PROGRESS_ACTION_CONTINUE, ""


class TierCurves:
    """Per tier, a :class:`PeerIndex` of its candidates' curves, kept as candidates change (the controller calls
    :meth:`changed` for every candidate it saves), so that an epoch report's decision does not walk every
    candidate. One index per tier and kind of curve (top-1, or the search's score), built on first use.

    Args:
        candidates: the state's candidates by id (read when an index is first built).
        score: the score of a candidate and a top-1 (:func:`~.state.score_of` of the spec).
    """

    def __init__(self, candidates: dict[str, Candidate], score: Callable[[Candidate, float], float]) -> None:
        self._candidates, self._score = candidates, score
        self._indexes: dict[tuple[int, bool], PeerIndex] = {}

    def index(self, tier: int, scored: bool) -> PeerIndex:
        """The tier's index of top-1 curves, or of score curves with ``scored``."""
        key = (tier, scored)
        if key not in self._indexes:
            score = self._score if scored else None
            self._indexes[key] = PeerIndex(curve_of(c, score) for c in self._candidates.values() if c.tier == tier)
        return self._indexes[key]

    def changed(self, cands: Iterable[Candidate]) -> None:
        """Bring the indexes built so far up to date with ``cands`` (changed or new)."""
        if not self._indexes:
            return
        for cand in cands:
            for (tier, scored), index in self._indexes.items():
                if tier == cand.tier:
                    index.update(curve_of(cand, self._score if scored else None))


class SearchStage:
    """The latency tiers, their searchers and the proposals ahead.

    Args:
        spec: the search.
        state: the controller's state (``next_number`` and ``searcher_versions`` per tier are kept here).
        state_dir: where ``stratification.json`` and ``searchers/`` live.
        desk: new proposals are queued there.
        roster: active trainers set how many proposals are asked ahead.
        lock: the controller's lock; :meth:`drive` takes it around state changes, never around a searcher round.
        save: persists the state header and the given candidates (with the lock held).
        max_pool: most networks per tier pool.
        round_interval_s: least time between two searcher rounds of a tier.
        searcher_processes: run each tier's searcher in its own process (:class:`~.proposer.ProcessSearcher`).
        searcher_priority: that process's CPU priority (:data:`~.proposer.SEARCHER_PRIORITIES`).
    """

    def __init__(self, spec: SearchSpec, state: ControllerState, state_dir: Path, desk: "TrainerDesk", roster: Roster,
                 lock: threading.RLock, save: Callable[..., None], *, max_pool: int = MAX_POOL,
                 round_interval_s: float = MIN_ROUND_INTERVAL_S, searcher_processes: bool = False,
                 searcher_priority: str = "nice") -> None:
        self.searcher_priority = searcher_priority
        self.spec, self.space, self.state, self.dir = spec, spec.space(), state, state_dir
        self.desk, self.roster, self.lock, self.save = desk, roster, lock, save
        self.max_pool, self.round_interval_s, self.searcher_processes = max_pool, round_interval_s, searcher_processes
        #: ``stratification.json``'s tiers: ``{"target_ms", "pool", "latency_ms", ...}`` per tier.
        self.pools: list[dict[str, Any]] = []
        self.searchers: list[Any] = []
        self._pool_latency: list[dict[tuple[int, ...], float]] = []
        self._last_round: dict[int, float] = {}
        # _tier_view's running counts: candidates seen so far, members per tier, not yet told per tier.
        self._viewed = 0
        self._members: dict[int, int] = {}
        self._untold: dict[int, list[Candidate]] = {}

    @property
    def path(self) -> Path:
        return self.dir / "stratification.json"

    def stratify(self, table: "LatencyTable", target: "LatencyTarget", vectors: np.ndarray) -> tuple[bool, str]:
        """Estimate ``vectors`` (``n x 41``) from ``table``, group them into the tiers, write ``stratification.json``
        and start the searchers. Returns ``(ok, message)``: not ok when no tier has any network."""
        from ..sampling import LatencyEstimator, Tier, stratify, tiers_from_targets

        latency = LatencyEstimator(self.space, table, target).estimate(vectors, allow_missing=True)
        if self.spec.algorithm.objective == "mnas":  # one search over the whole space, no stratification
            target_ms = self.spec.algorithm.target_ms
            tiers = [Tier(f"mnas {target_ms:g}ms", 0.0, math.inf, target_ms)]
        else:
            tiers = tiers_from_targets(list(self.spec.latency.tiers), self.spec.latency.tolerance)
        pools = stratify(vectors, latency, tiers, pool_size=self.max_pool, space=self.space)
        finite = latency[np.isfinite(latency)]
        span = [float(finite.min()), float(finite.max())] if finite.size else None
        write_json_atomic(self.path, {"format": "gpunet-stratification/v1", "target": self.state.target,
                                      "samples": int(len(vectors)), "seed": self.spec.algorithm.seed,
                                      "latency_ms_range": span, "tiers": [p.to_dict() for p in pools]})
        with self.lock:
            self.load()
            empty = [p["target_ms"] for p in self.pools if not p["pool"]]
            if len(empty) == len(self.pools):
                return False, (f"no sampled network lies in any latency tier {list(self.spec.tier_targets)} ms "
                               f"(estimated latencies span {span} ms); spec.latency is fixed for a search, so start a new "
                               f"search (a new metadata.name, or a new --out for gpunet run) whose spec.latency.tiers lie "
                               f"inside that span")
            self.state.next_number = [0] * len(self.pools)
            self.state.searcher_versions = [0] * len(self.pools)
            return True, f"tiers without networks: {empty} ms" if empty else ""

    def load(self) -> None:
        """Read ``stratification.json`` and start each tier's searcher from its current snapshot."""
        from .proposer import LocalSearcher, ProcessSearcher

        self.pools = json.loads(self.path.read_text())["tiers"]
        self._pool_latency = [{tuple(v): float(l) for v, l in zip(p["pool"], p["latency_ms"])} for p in self.pools]
        if not self.state.searcher_versions:
            self.state.searcher_versions = [0] * len(self.pools)
            self.state.next_number = [0] * len(self.pools)
        algo = self.spec.algorithm
        algorithm = {"name": algo.name, "seed": algo.seed, "initial_samples": algo.initial_samples, "budget": algo.budget,
                     "options": dict(algo.options)}
        kind = functools.partial(ProcessSearcher, priority=self.searcher_priority) if self.searcher_processes else LocalSearcher
        self.searchers = []
        for t, pool in enumerate(self.pools):
            version = self.state.searcher_versions[t]
            snapshot = str(self._snapshot_path(t, version)) if version else None
            self.searchers.append(kind(algorithm, self.spec.search_space, pool["pool"], t, snapshot) if pool["pool"] else None)

    def _snapshot_path(self, tier: int, version: int) -> Path:
        return self.dir / "searchers" / f"tier-{tier}-v{version}.json"

    def close(self) -> None:
        for searcher in self.searchers:
            if searcher is not None:
                searcher.close()

    # --- budgets -------------------------------------------------------------------------------------------
    def tier_budget(self, tier: int) -> int:
        """Candidates tier ``tier`` will propose in all: ``spec.algorithm.budget``, or fewer for a small pool."""
        return min(self.spec.algorithm.budget, len(self.pools[tier]["pool"])) if self.pools else 0

    def budget(self) -> int:
        """Candidates the search will propose in all (before stratification: the spec's budget for every tier),
        plus at most ``candidatesPerTarget`` scaled networks per target of phase Scaling."""
        scaled = self.spec.scaling.candidates_per_target * len(self.spec.scaling.targets_ms)
        if self.pools:
            return sum(self.tier_budget(t) for t in range(len(self.pools))) + scaled
        return self.spec.algorithm.budget * len(self.spec.tier_targets) + scaled

    def lookahead(self, now: float) -> int:
        """Proposals to keep queued per tier: one more than each tier's share of the active trainers."""
        trainers = self.roster.active(now, pb.WORKER_KIND_TRAINER)
        return min(MAX_ASK_PER_STEP, max(1, math.ceil(max(trainers, 1) / max(len(self.pools), 1))) + 1)

    # --- the driver's part ---------------------------------------------------------------------------------
    def drive(self, now: float) -> None:
        """One searcher round per tier that has results to tell or too few proposals queued (rate-limited).

        A tier inside its round interval is skipped before its view is taken: the view walks the tier's untold
        candidates (every running one), and the driver steps after every grant and result."""
        for tier, searcher in enumerate(self.searchers):
            if searcher is None:
                continue
            since = now - self._last_round.get(tier, 0.0)
            if since < self.round_interval_s:
                continue
            with self.lock:
                members, untold = self._tier_view(tier)
                to_tell = [c for c in untold if c.state in _TELLABLE]
                queued = sum(1 for c in untold if c.state == QUEUED)  # a queued candidate is never told
                want = min(self.lookahead(now) - queued, self.tier_budget(tier) - members)
                tells = [(c.trial_id, c.state == FAILED, score_of(self.spec, c)) for c in to_tell]
            endgame = members >= self.tier_budget(tier)
            if not to_tell and want <= 0:
                continue
            if want <= 0 and not endgame and since < TELL_PERIOD_S:
                continue
            self._last_round[tier] = now
            version = self.state.searcher_versions[tier] + 1
            proposals = searcher.round(tells, max(want, 0), self._snapshot_path(tier, version))
            with self.lock:
                for cand in to_tell:
                    cand.told = True
                new = [self._candidate(tier, trial_id, vector, now) for trial_id, vector in proposals]
                for cand in new:
                    self.desk.add(cand)
                old = self.state.searcher_versions[tier]
                self.state.searcher_versions[tier] = version
                self.save(*to_tell, *new)
            if old:
                self._snapshot_path(tier, old).unlink(missing_ok=True)

    def _candidate(self, tier: int, trial_id: int, vector: list[int], now: float) -> Candidate:
        number = self.state.next_number[tier]
        self.state.next_number[tier] += 1
        return Candidate(id=f"t{tier}-c{number:04d}", tier=tier, trial_id=trial_id, vector=vector, created=now,
                         latency_ms=self._pool_latency[tier].get(tuple(vector), float("nan")))

    def done(self) -> bool:
        """Every tier has proposed its budget and told its searcher every result."""
        self._catch_up()
        for tier, searcher in enumerate(self.searchers):
            if searcher is None:
                continue
            if self._members.get(tier, 0) < self.tier_budget(tier):  # the common case, without a walk of untold
                return False
            if self._tier_view(tier)[1]:
                return False
        return True

    def _catch_up(self) -> None:
        """Count the candidates added since the last call (candidates are only ever added)."""
        cands = self.state.candidates
        if len(cands) != self._viewed:
            for cand in itertools.islice(cands.values(), self._viewed, None):
                self._members[cand.tier] = self._members.get(cand.tier, 0) + 1
                if not cand.told:
                    self._untold.setdefault(cand.tier, []).append(cand)
            self._viewed = len(cands)

    def _tier_view(self, tier: int) -> tuple[int, list[Candidate]]:
        """``(members, untold)`` of a tier: its number of candidates and those whose result its searcher has not
        been told yet, caught up with the candidates added since the last call (``told`` is only ever set), so a
        driver round costs O(untold), not O(candidates)."""
        self._catch_up()
        untold = self._untold[tier] = [c for c in self._untold.get(tier, []) if not c.told]
        return self._members.get(tier, 0), untold
