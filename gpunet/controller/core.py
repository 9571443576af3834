"""The search controller: the server of the GPUNet paper's client/server NAS (sections 3.3.3, 4.1).

It runs the search as a phase machine and hands out work under leases:

1. **Profiling** (:mod:`.profiling`): fill the latency table for ``spec.latency.samples`` Sobol-sampled networks
   through profiler workers.
2. **Stratifying** (:mod:`.searching`): estimate every sampled network from the table and group them into the
   latency tiers of ``spec.latency.tiers``.
3. **Searching** (:mod:`.searching`, :mod:`.trainers`): one searcher per tier proposes candidates; trainers train
   them and report top-1 per epoch; the early-stopping rule ends poor ones.
4. **Scaling** (:mod:`.scaling`, only with ``spec.scaling``): latency-aware compound scaling of a tier winner into
   a family of networks, one per latency target; profilers measure the scaled networks' layers, trainers train
   the closest under each target.
5. **Finalizing** (:mod:`.finalizing`): stage 2 (:mod:`.stage2`, with ``spec.training.final`` or
   ``spec.baselines``) trains the tier winners again and the baselines on the trainers; profilers measure each
   tier's best network and the baselines end to end on the target device, then the result files are written. Then **Succeeded** (or **Failed** at any point).

Fault tolerance:

- Every assignment is a *lease* (:mod:`.leases`) with a deadline; progress reports and heartbeats renew it. An
  expired lease puts the work back in the queue; the next trainer resumes from the last epoch checkpoint.
- Requests are idempotent: a worker asking again gets its current assignment back; a duplicate or late report
  is answered ``accepted = false`` and changes nothing.
- State is saved (:mod:`.state`, one SQLite transaction) before any reply that depends on it, so a controller
  killed at any moment restarts where it stopped.
- A background *driver* thread computes proposals ahead and does the slow work (planning, stratification,
  searcher fits) outside the lock: RPCs never wait on a GP fit.

This module keeps the phase machine, the driver and persistence; the RPCs are answered by the stage objects. It
speaks the generated protobuf messages (:mod:`gpunet.rpc`) but knows nothing of gRPC servers; it raises the
domain errors of :mod:`.errors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..fileio import write_json_atomic
from ..latency.profiling import DEFAULT_BATCH_SIZE
from ..rpc import TERMINAL_PHASES, pb
from ..spec import SearchSpec
from .errors import check_id, require
from .finalizing import DEFAULT_MEASURE_TIMEOUT_S, NETWORK, PHASE_FINALIZING, FinalizingStage, NetworkMeasurements
from .leases import BATCH, CANDIDATE, LeaseBook, Roster
from .metrics import ControllerMetrics
from .profiling import ProfilingStage
from .scaling import ScalingStage
from .searching import MAX_POOL, MIN_ROUND_INTERVAL_S, SearchStage, stopping_decision
from .state import (PHASE_FAILED, PHASE_PROFILING, PHASE_SCALING, PHASE_SEARCHING, PHASE_STRATIFYING, PHASE_SUCCEEDED,
                    STATE_FILE, Candidate, ControllerState, StateStore, score_of)
from .status import DEFAULT_MAX_CANDIDATES, refresh_metrics, search_status
from .trainers import TrainerDesk

log = logging.getLogger(__name__)

#: How often the driver thread wakes up, in seconds.
DRIVER_PERIOD_S = 0.1
#: Reasons a lease may be given back for (UNSPECIFIED is refused).
RELEASE_REASONS = (pb.RELEASE_REASON_PREEMPTED, pb.RELEASE_REASON_FAILED, pb.RELEASE_REASON_SHUTDOWN)


def _spec_digest(spec: SearchSpec) -> str:
    engine = {"space": spec.search_space, "latency": repr(spec.latency), "algorithm": repr(spec.algorithm)}
    if spec.scaling.enabled:  # a search without scaling keeps the digest it had before spec.scaling existed
        engine["scaling"] = repr(spec.scaling)
    return hashlib.sha256(json.dumps(engine, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SearchController:
    """One search (one ``NASSearch``) with its state in ``state_dir``.

    Args:
        spec: the parsed ``NASSearch``.
        state_dir: where state, latency table, stratification, searcher snapshots and checkpoints live.
        lease_s: lease duration in seconds; a worker must report (progress or heartbeat) at least this often.
        clock: seconds since the Unix epoch (injectable for tests).
        max_pool: most networks per tier pool.
        profile_batch_size: layer keys per profiling batch.
        round_interval_s: least time between two searcher rounds of a tier (``clock`` seconds).
        searcher_processes: run each tier's searcher in its own process (:class:`~.proposer.ProcessSearcher`) so
            that its model fits never hold this process's GIL; servers should, tests need not.
        results: in phase Finalizing, have profilers measure each tier winner end to end and write the result
            files into ``state_dir`` (:mod:`.finalizing`); False passes through Finalizing at once (no files).
            The servers (``gpunet run``, ``python -m gpunet.controller``) do; unit tests of the core need not.
        finalize_timeout_s: how long Finalizing waits for profilers to measure the tier winners, in seconds.

    Call :meth:`start` to run the driver thread, :meth:`close` to stop it.
    """

    def __init__(self, spec: SearchSpec, state_dir: str | Path, *, lease_s: float = 60.0,
                 clock: Callable[[], float] = time.time, max_pool: int = MAX_POOL,
                 profile_batch_size: int = DEFAULT_BATCH_SIZE, metrics: ControllerMetrics | None = None,
                 round_interval_s: float = MIN_ROUND_INTERVAL_S, searcher_processes: bool = False,
                 results: bool = False, finalize_timeout_s: float = DEFAULT_MEASURE_TIMEOUT_S) -> None:
        from ..latency import LatencyTable

        self.spec = spec
        self.space = spec.space()
        if spec.baselines:  # a misspelt baseline fails the search now, not after it
            from ..baselines import check_baselines

            check_baselines(spec.baselines)
        self.dir = Path(state_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lease_s = float(lease_s)
        self.clock = clock
        self.metrics = metrics or ControllerMetrics()
        self.lock = threading.RLock()
        self.table = LatencyTable(self.dir / "latency.sqlite")
        self.store = StateStore(self.dir / STATE_FILE)
        self.leases = LeaseBook(self.lease_s, self._next_lease_number)
        self.roster = Roster(2 * self.lease_s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        now = self.clock()
        self.state = self._load(now)
        self.profiling = ProfilingStage(spec, self.state, self.table, self.leases, self.lock, profile_batch_size)
        self.trainers = TrainerDesk(spec, self.state, self.dir, self.leases, self.roster, self.metrics, self._should_stop, now)
        self.searching = SearchStage(spec, self.state, self.dir, self.trainers, self.roster, self.lock, self._save,
                                     max_pool=max_pool, round_interval_s=round_interval_s, searcher_processes=searcher_processes)
        self.scaling = ScalingStage(spec, self.state, self.table, self.profiling, self.trainers, self.lock, self._save,
                                    profile_batch_size)
        self.finalizing = FinalizingStage(spec, self.state, self.dir, self.leases, self.lock, results=results,
                                          measure_timeout_s=finalize_timeout_s, desk=self.trainers, save=self._save)
        phase = self.state.phase
        if phase in (PHASE_SEARCHING, PHASE_SCALING, PHASE_FINALIZING, *TERMINAL_PHASES) and self.searching.path.exists():
            self.searching.load()
        elif phase in (PHASE_STRATIFYING, PHASE_SEARCHING):
            self.state.phase = PHASE_PROFILING  # the stratification was not written: redo it
        self._save()
        with self.lock:
            refresh_metrics(self.metrics, self.state, self.profiling, len(spec.tier_targets))

    # ------------------------------------------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------------------------------------------
    def _load(self, now: float) -> ControllerState:
        if not self.store.exists():
            return ControllerState(name=self.spec.name, phase=PHASE_PROFILING, started=now, updated=now,
                                   spec_digest=_spec_digest(self.spec))
        state = self.store.load()
        if state.spec_digest and state.spec_digest != _spec_digest(self.spec):
            log.warning("the spec's search space, latency or algorithm changed since %s was written; resuming anyway",
                        self.store.path)
        log.info("resumed search %s in phase %s with %d candidates", state.name, state.phase, len(state.candidates))
        return state

    def _save(self, *changed: Candidate) -> None:
        """Persist the state header and the ``changed`` candidates in one transaction (call with the lock held)."""
        if self._closed:
            return
        self.state.updated = self.clock()
        self.store.save(self.state, changed)

    def _should_stop(self, cand: Candidate, epoch: int) -> tuple[int, str]:
        """The early-stopping decision after ``epoch`` of ``cand`` (:func:`.searching.stopping_decision`)."""
        if cand.final:  # stage 2 trains for its whole budget
            return pb.PROGRESS_ACTION_CONTINUE, ""
        rewarded = self.spec.algorithm.objective == "mnas" or cand.scaling
        score = (lambda c, top1: score_of(self.spec, c, top1)) if rewarded else None
        return stopping_decision(self.spec.training, self.state.candidates.values(), cand, epoch, score)

    def _next_lease_number(self) -> int:
        self.state.next_lease += 1
        return self.state.next_lease

    def _set_phase(self, phase: str, message: str = "") -> None:
        """Move the phase machine on and save (call with the lock held)."""
        log.info("search %s: phase %s -> %s %s", self.state.name, self.state.phase, phase, message)
        self.state.phase, self.state.message = phase, message
        self._save()

    def samples(self) -> np.ndarray:
        """The Sobol-sampled networks of stage 1, an ``n x 41`` int64 array (``n = spec.latency.samples``)."""
        return self.profiling.samples()

    def tier_budget(self, tier: int) -> int:
        """Candidates tier ``tier`` will propose in all (see :meth:`.searching.SearchStage.tier_budget`)."""
        return self.searching.tier_budget(tier)

    @property
    def pools(self) -> list[dict]:
        """The latency tiers' pools (``stratification.json``'s tiers); empty before stratification."""
        return self.searching.pools

    def candidates(self) -> list[Candidate]:
        """Copies of every candidate."""
        with self.lock:
            return [Candidate.from_dict(c.to_dict()) for c in self.state.candidates.values()]

    # ------------------------------------------------------------------------------------------------------
    # the driver thread: planning, stratification, proposals ahead, lease expiry, completion
    # ------------------------------------------------------------------------------------------------------
    def start(self) -> "SearchController":
        if self._thread is None:
            self._thread = threading.Thread(target=self._drive, name="gpunet-controller-driver", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self.lock:
            if self._closed:
                return
            self._save()
            write_json_atomic(self.dir / "state.json", self.state.to_dict())
            self._closed = True  # a driver round still in flight must not write any more
            self.store.close()
        self.searching.close()
        self.table.close()

    def _drive(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a driver error fails the search, visibly
                if self._stop.is_set():
                    return
                log.exception("controller driver failed")
                with self.lock:
                    self._set_phase(PHASE_FAILED, f"{type(exc).__name__}: {exc}")
                return
            self._wake.wait(DRIVER_PERIOD_S)
            self._wake.clear()

    def step(self) -> None:
        """One round of the driver's work (also callable directly, e.g. in tests without the thread)."""
        self.expire_leases()
        if self.state.phase == PHASE_PROFILING and self.profiling.plan():
            with self.lock:
                self._set_phase(PHASE_STRATIFYING)
        if self.state.phase == PHASE_STRATIFYING:
            ok, message = self.searching.stratify(self.table, self.profiling.target(), self.samples())
            with self.lock:
                self._set_phase(PHASE_SEARCHING if ok else PHASE_FAILED, message)
        if self.state.phase == PHASE_SEARCHING:
            self.searching.drive(self.clock())
            with self.lock:
                if self.state.phase == PHASE_SEARCHING and self.searching.done():
                    if self.spec.scaling.enabled:
                        self._set_phase(PHASE_SCALING, "search finished; scaling the base tier's winner (LACS)")
                    else:
                        self._set_phase(PHASE_FINALIZING, "search finished; measuring the tier winners, writing results")
        if self.state.phase == PHASE_SCALING:
            finished = self.scaling.drive(self.clock())
            with self.lock:
                if finished:
                    self._set_phase(PHASE_FINALIZING, f"{self.scaling.message}; measuring the winners, writing results")
                elif self.scaling.message != self.state.message:
                    self.state.message = self.scaling.message
                    self._save()
        if self.state.phase == PHASE_FINALIZING:
            finished = self.finalizing.drive(self.clock())
            with self.lock:
                if finished:
                    self._set_phase(PHASE_SUCCEEDED, "search finished; results written")
                elif self.finalizing.message() != self.state.message:
                    self.state.message = self.finalizing.message()
                    self._save()
        with self.lock:
            refresh_metrics(self.metrics, self.state, self.profiling, len(self.spec.tier_targets))

    def expire_leases(self) -> int:
        """Put work whose lease has expired back in the queue; returns the number of leases expired."""
        with self.lock:
            now = self.clock()
            expired = self.leases.expired(now)
            changed = []
            for lease in expired:
                if lease.kind == CANDIDATE:
                    changed.append(self.trainers.expire(lease, now))
                elif lease.kind == NETWORK:
                    self.finalizing.expire(lease)
                else:
                    self.leases.release(lease)  # the batch waits for the next profiler
                self.state.lease_expiries += 1
                self.metrics.lease_expiries.inc()
            if expired:
                self._save(*changed)
        return len(expired)

    # ------------------------------------------------------------------------------------------------------
    # RPCs (see the proto for the contract)
    # ------------------------------------------------------------------------------------------------------
    def request_work(self, req: pb.WorkRequest) -> pb.WorkResponse:
        """A free worker asks for work; a worker holding a lease gets its assignment back, renewed."""
        check_id(req.worker_id, "worker_id")
        require(req.kind in (pb.WORKER_KIND_TRAINER, pb.WORKER_KIND_PROFILER), "kind", req.kind,
                "WORKER_KIND_TRAINER (1) or WORKER_KIND_PROFILER (2)")
        with self.lock:
            now = self.clock()
            self.roster.saw(req.worker_id, req.kind, now)
            response = self._current_assignment(req.worker_id, now)
            if response is None:
                if req.kind == pb.WORKER_KIND_TRAINER:
                    if self.state.phase == PHASE_FINALIZING:
                        self.finalizing.begin(now)  # stage 2 is queued before a trainer hears "done"
                    response, cand = self.trainers.work(req, now)
                    if cand is not None:
                        self._save(cand)
                elif self.state.phase == PHASE_FINALIZING:
                    response = self.finalizing.work(req, now)
                else:
                    response, changed = self.profiling.work(req, now)
                    if changed:
                        self._save()
                        self._wake.set()
        kind_name = "trainer" if req.kind == pb.WORKER_KIND_TRAINER else "profiler"
        self.metrics.work_requests.labels(kind_name, response.WhichOneof("work")).inc()
        if response.WhichOneof("work") in ("candidate", "layers", "network"):
            self._wake.set()
        return response

    def _current_assignment(self, worker_id: str, now: float) -> pb.WorkResponse | None:
        lease = self.leases.held_by(worker_id)
        if lease is None:
            return None
        self.leases.renew(lease, now)
        if lease.kind == CANDIDATE:
            return pb.WorkResponse(candidate=self.trainers.assignment(lease))
        if lease.kind == NETWORK:
            network = self.finalizing.assignment(lease)
            if network is not None:
                return pb.WorkResponse(network=network)
            self.leases.release(lease)
            return None
        assignment = self.profiling.assignment(lease)
        if assignment is not None:
            return pb.WorkResponse(layers=assignment)
        self.leases.release(lease)
        return None

    def report_progress(self, req: pb.ProgressReport) -> pb.ProgressResponse:
        """One finished epoch (or a heartbeat) of a candidate; answers continue, stop or abandon."""
        with self.lock:
            response, changed = self.trainers.progress(req, self.clock())
            if changed is not None:
                self._save(changed)
        return response

    def report_result(self, req: pb.ResultReport) -> pb.ResultResponse:
        """The final result of a candidate; duplicate and late results are ignored."""
        with self.lock:
            response, changed = self.trainers.result(req, self.clock())
            if changed is not None:
                self._save(changed)
        if response.accepted:
            self._wake.set()
        return response

    def report_latencies(self, req: pb.LatencyReport) -> pb.LatencyResponse:
        """Store a batch's measured layer latencies in the latency table, or a network's end-to-end latency."""
        if req.HasField("network"):
            NetworkMeasurements.parse(req)
            with self.lock:
                response = self.finalizing.measure.store(req, self.clock())
                if not response.accepted:
                    self.metrics.reports_ignored.labels("latencies").inc()
                    return response
                self.roster.saw(req.worker_id, pb.WORKER_KIND_PROFILER, self.clock())
            self._wake.set()
            return response
        parsed = self.profiling.parse(req)
        with self.lock:
            response = self.profiling.store(req, parsed)
            if not response.accepted:
                self.metrics.reports_ignored.labels("latencies").inc()
                return response
            self.roster.saw(req.worker_id, pb.WORKER_KIND_PROFILER, self.clock())
            self._save()
        self._wake.set()
        return response

    def release_lease(self, req: pb.ReleaseRequest) -> pb.ReleaseResponse:
        """Give a lease back (worker: SIGTERM, failure, shutdown; operator: a lost pod)."""
        check_id(req.worker_id, "worker_id")
        require(req.reason in RELEASE_REASONS, "reason", req.reason, "RELEASE_REASON_PREEMPTED, _FAILED or _SHUTDOWN")
        require(req.epoch >= 0, "epoch", req.epoch, ">= 0")
        with self.lock:
            lease = self.leases.held_by(req.worker_id)
            if lease is None:
                return pb.ReleaseResponse(released=False)
            if req.lease_id and req.lease_id != lease.id:
                return pb.ReleaseResponse(released=False, work_id=lease.work_id)
            if lease.kind == CANDIDATE and req.granted_before_unix_s > 0 and \
                    self.state.candidates[lease.work_id].lease_granted >= req.granted_before_unix_s:
                return pb.ReleaseResponse(released=False, work_id=lease.work_id)  # newer than the failure: healthy
            if req.reason == pb.RELEASE_REASON_PREEMPTED:
                self.state.preemptions += 1
                self.metrics.preemptions.inc()
            if lease.kind in (BATCH, NETWORK):
                self.leases.release(lease)  # the batch or network waits for the next profiler
                self._save()
                return pb.ReleaseResponse(released=True, work_id=lease.work_id, requeued=True, lease_id=lease.id)
            response, cand = self.trainers.release(lease, req, self.clock())
            self._save(cand)
        self._wake.set()
        return response

    def status(self, req: pb.StatusRequest | None = None) -> pb.SearchStatus:
        """The search's state for the operator and the CLI (bounded per-candidate records)."""
        limit = DEFAULT_MAX_CANDIDATES
        if req is not None:
            require(req.max_candidates >= 0, "max_candidates", req.max_candidates, ">= 0")
            limit = req.max_candidates or DEFAULT_MAX_CANDIDATES
        with self.lock:
            return search_status(self.state, self.profiling, self.searching, self.roster, self.clock(), limit)
