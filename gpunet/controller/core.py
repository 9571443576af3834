"""The search controller: the server of the GPUNet paper's client/server NAS (sections 3.3.3, 4.1).

It runs the search as a phase machine and hands out work under leases:

1. **Profiling** (:mod:`.profiling`): fill the latency table for ``spec.latency.samples`` Sobol-sampled networks
   through profiler workers.
2. **Stratifying** (:mod:`.searching`): estimate every sampled network from the table and group them into the
   latency tiers of ``spec.latency.tiers``.
3. **Searching** (:mod:`.searching`, :mod:`.trainers`): one searcher per tier proposes candidates; trainers train
   them and report top-1 per epoch; the early-stopping pruner ends poor ones.
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
  killed at any moment restarts where it stopped. The server group-commits (:meth:`SearchController.answer`):
  many RPCs' saves share a transaction, and each reply waits for the commit of the batch holding its changes.
- A background *driver* thread computes proposals ahead and does the slow work (planning, stratification,
  searcher fits) outside the lock: RPCs never wait on a GP fit.
- Errors are classified (:mod:`.faults`): a transient one (a locked or full database, an I/O error, a searcher's
  numerical failure) is retried with backoff while the status says *degraded*; a permanent one fails the search
  with what to do. A failed state write keeps its rows for the next write, and the file on disk stays the last
  committed state. A ``Failed`` search is resumed by :meth:`SearchController.resume_failed` (RPC ``ResumeSearch``).

This module keeps the phase machine, the driver and persistence; the RPCs are answered by the stage objects. It
speaks the generated protobuf messages (:mod:`gpunet.rpc`) but knows nothing of gRPC servers; it raises the
domain errors of :mod:`.errors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..fileio import write_json_atomic
from ..latency.profiling import DEFAULT_BATCH_SIZE
from ..rpc import TERMINAL_PHASES, pb, phase_value
from ..spec import SearchSpec
from .errors import caused_by_input, check_id, is_transient, require
from .faults import RETRY_WAIT_MAX_S, RETRY_WAIT_MIN_S, Faults
from .finalizing import DEFAULT_MEASURE_TIMEOUT_S, NETWORK, PHASE_FINALIZING, FinalizingStage, NetworkMeasurements
from .leases import BATCH, CANDIDATE, LeaseBook, Roster
from .metrics import ControllerMetrics
from .profiling import ProfilingStage
from .scaling import ScalingStage
from .searching import MAX_POOL, MIN_ROUND_INTERVAL_S, SearchStage, TierCurves, pruner_of, stopping_decision
from .state import (PHASE_FAILED, PHASE_PROFILING, PHASE_SCALING, PHASE_SEARCHING, PHASE_STRATIFYING, PHASE_SUCCEEDED,
                    STATE_FILE, Candidate, ControllerState, StateStore, score_of)
from .status import DEFAULT_MAX_CANDIDATES, refresh_metrics, search_status
from .trainers import TrainerDesk

log = logging.getLogger(__name__)

#: How often the driver thread wakes up, in seconds.
DRIVER_PERIOD_S = 0.1
#: Least time between two refreshes of the Prometheus gauges from the state (``clock`` seconds; a scrape is
#: every 15 s or more, and a refresh walks every candidate).
METRICS_PERIOD_S = 1.0
#: What a permanently failed search's message advises: for an error of the environment or the code, a resume.
RESUME_ADVICE = ("fix the cause, then resume the search: `gpunet run --resume-failed` with the same --out, or on "
                 "Kubernetes set a new value of the annotation nas.gpunet.dev/resume on the NASSearch")
#: ... and for an error of the spec, whose search-defining sections are fixed once a search started: a new search.
NEW_SEARCH_ADVICE = ("the search-defining sections of a spec are fixed once a search started: correct the spec and "
                     "start a new search (a new metadata.name, or a new --out for gpunet run)")
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
        searcher_priority: those processes' CPU priority (:data:`~.proposer.SEARCHER_PRIORITIES`): ``"idle"`` for
            the controller's own pod (RPCs first), ``"nice"`` where trainers share the machine (``gpunet run``).
        results: in phase Finalizing, have profilers measure each tier winner end to end and write the result
            files into ``state_dir`` (:mod:`.finalizing`); False passes through Finalizing at once (no files).
            The servers (``gpunet run``, ``python -m gpunet.controller``) do; unit tests of the core need not.
        finalize_timeout_s: how long Finalizing waits for profilers to measure the tier winners, in seconds.
        retry_wait_s: ``(first, longest)`` backoff of the driver after a transient error, in seconds (:mod:`.faults`).

    Call :meth:`start` to run the driver thread, :meth:`close` to stop it.
    """

    def __init__(self, spec: SearchSpec, state_dir: str | Path, *, lease_s: float = 60.0,
                 clock: Callable[[], float] = time.time, max_pool: int = MAX_POOL,
                 profile_batch_size: int = DEFAULT_BATCH_SIZE, metrics: ControllerMetrics | None = None,
                 round_interval_s: float = MIN_ROUND_INTERVAL_S, searcher_processes: bool = False,
                 searcher_priority: str = "nice", results: bool = False, finalize_timeout_s: float = DEFAULT_MEASURE_TIMEOUT_S,
                 retry_wait_s: tuple[float, float] = (RETRY_WAIT_MIN_S, RETRY_WAIT_MAX_S)) -> None:
        from ..latency import LatencyTable

        self.spec = spec
        self.space = spec.space()
        self.pruner = pruner_of(spec.training)
        if spec.baselines:  # a misspelt baseline fails the search now, not after it
            from ..baselines import check_baselines

            check_baselines(spec.baselines)
        self.dir = Path(state_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lease_s = float(lease_s)
        self.clock = clock
        self.metrics = metrics or ControllerMetrics()
        self.lock = threading.RLock()
        self.faults = Faults(clock, *retry_wait_s)
        #: Candidates whose last save failed (a transient error): written with the next save.
        self._unsaved: dict[str, Candidate] = {}
        self._save_failed = False
        self.table = LatencyTable(self.dir / "latency.sqlite")
        self.store = StateStore(self.dir / STATE_FILE)
        self.leases = LeaseBook(self.lease_s, self._next_lease_number)
        self.roster = Roster(2 * self.lease_s)
        self._stop = threading.Event()
        self._metrics_due = -math.inf  # next refresh of the gauges (step)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._deferred = threading.local()  # .on: _save stages without waiting (inside answer())
        self._driver_listeners: list[Callable[[], None]] = []
        now = self.clock()
        self.state = self._load(now)
        self.curves = TierCurves(self.state.candidates, self._score)  # the pruner's view of each tier
        self.profiling = ProfilingStage(spec, self.state, self.table, self.leases, self.lock, profile_batch_size)
        self.trainers = TrainerDesk(spec, self.state, self.dir, self.leases, self.roster, self.metrics, self._should_stop, now)
        self.searching = SearchStage(spec, self.state, self.dir, self.trainers, self.roster, self.lock, self._save,
                                     max_pool=max_pool, round_interval_s=round_interval_s, searcher_processes=searcher_processes,
                                     searcher_priority=searcher_priority)
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
        """Persist the state header and the ``changed`` candidates in one transaction (call with the lock held).

        A transient failure (a full disk, a locked database) leaves the file at its last commit, marks the search
        degraded, keeps the rows for the next save and raises. Blocks until committed, except inside
        :meth:`answer`, whose caller waits for the commit itself."""
        if self._closed:
            return
        self.state.updated = self.clock()
        rows = {**self._unsaved, **{c.id: c for c in changed}}
        self.curves.changed(changed)  # every change to a candidate passes here
        try:
            self.store.save(self.state, rows.values(), wait=not getattr(self._deferred, "on", False))
        except Exception as exc:
            if is_transient(exc):
                self._unsaved, self._save_failed = rows, True
                self.faults.note(self.store.path.name, exc)
            raise
        self._unsaved, self._save_failed = {}, False

    def answer(self, method: str, request: Any) -> tuple[Any, int]:
        """Answer an RPC (``method``: ``"request_work"``, ``"report_result"``, ...) without waiting for its commit.

        Returns the response and the state's commit ticket (:meth:`StateStore.save`): the caller must wait until
        the ticket is committed before it sends the response (the server does, asynchronously), so that nothing a
        worker was told is lost by a crash. The ticket covers every change made before the answer, so an answer
        that depends on another call's change (not only its own) is durable too.
        """
        self._deferred.on = True
        try:
            response = getattr(self, method)(request)
        finally:
            self._deferred.on = False
        return response, self.store.commits.staged

    def add_driver_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` from the driver thread after each of its rounds (work may have appeared: proposals,
        re-queued leases, a new phase)."""
        self._driver_listeners.append(fn)

    def _should_stop(self, cand: Candidate, epoch: int) -> tuple[int, str]:
        """The early-stopping decision after ``epoch`` of ``cand``: the pruner's (:func:`.searching.stopping_decision`),
        on mnas rewards with objective mnas and in the Scaling phase."""
        if cand.final:  # stage 2 trains for its whole budget
            return pb.PROGRESS_ACTION_CONTINUE, ""
        rewarded = bool(self.spec.algorithm.objective == "mnas" or cand.scaling)
        score = self._score if rewarded else None
        return stopping_decision(self.pruner, self.curves.index(cand.tier, rewarded), cand, epoch, score)

    def _score(self, cand: Candidate, top1: float) -> float:
        return score_of(self.spec, cand, top1)

    def _next_lease_number(self) -> int:
        self.state.next_lease += 1
        return self.state.next_lease

    def _set_phase(self, phase: str, message: str = "") -> None:
        """Move the phase machine on and save (call with the lock held); Failed remembers the phase it ends."""
        log.info("search %s: phase %s -> %s %s", self.state.name, self.state.phase, phase, message)
        if phase == PHASE_FAILED and self.state.phase != PHASE_FAILED:
            self.state.failed_phase = self.state.phase
        self.state.phase, self.state.message = phase, message
        self._save()

    def resume_failed(self, resume_id: str) -> pb.ResumeResponse:
        """Resume a ``Failed`` search in the phase it failed in (``ResumeSearch``), once per ``resume_id``.

        A search that failed before its stratification was written goes back to Profiling (the table is kept).
        Permanent errors come back if their cause was not fixed: the search then fails again, saying so.

        Raises:
            InvalidRequestError: ``resume_id`` is empty or too long.
        """
        check_id(resume_id, "resume_id")
        with self.lock:
            phase = self.state.phase
            if phase != PHASE_FAILED:
                return pb.ResumeResponse(resumed=False, phase=phase_value(phase), message=f"not Failed but {phase}")
            if resume_id == self.state.resume_id:
                return pb.ResumeResponse(resumed=False, phase=phase_value(phase),
                                         message=f"resume {resume_id!r} was done already; use a new value")
            back = self.state.failed_phase or PHASE_PROFILING
            if back not in (PHASE_PROFILING, PHASE_STRATIFYING) and not self.searching.path.exists():
                back = PHASE_PROFILING
            if back in (PHASE_SEARCHING, PHASE_SCALING, PHASE_FINALIZING) and not self.searching.searchers:
                self.searching.load()
            self.state.resume_id, self.state.failed_phase = resume_id, ""
            self._set_phase(back, f"resumed ({resume_id}) after: {self.state.message}")
            if self._thread is not None and not self._thread.is_alive():  # a permanent error ended the driver
                self._thread = None
                self.start()
        self._wake.set()
        return pb.ResumeResponse(resumed=True, phase=phase_value(back), message=self.state.message)

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
            try:
                self._save()
                write_json_atomic(self.dir / "state.json", self.state.to_dict())
            except Exception as exc:  # noqa: BLE001 - the file keeps its last commit; a restart resumes from it
                if not is_transient(exc):
                    raise
                log.warning("could not save the state on close (%s: %s); %s keeps its last commit",
                            type(exc).__name__, exc, self.store.path)
            self._closed = True  # a driver round still in flight must not write any more
            self.store.close()
        self.searching.close()
        self.table.close()

    def _drive(self) -> None:
        retrying = self.faults.retrying(self._stop)  # transient errors: retried with backoff (degraded)
        while not self._stop.is_set():
            try:
                retrying(self._drive_once)
            except Exception as exc:  # noqa: BLE001 - a permanent error fails the search, visibly
                if self._stop.is_set():
                    return
                log.exception("controller driver failed")
                with self.lock:
                    try:
                        advice = NEW_SEARCH_ADVICE if caused_by_input(exc) else RESUME_ADVICE
                        self._set_phase(PHASE_FAILED, f"{type(exc).__name__}: {exc}; {advice}")
                    except Exception:  # noqa: BLE001 - the phase is Failed in memory; the status says so
                        log.exception("could not save the failed phase")
                return
            for fn in self._driver_listeners:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - a listener (a server being stopped) must not stop the driver
                    log.debug("driver listener failed", exc_info=True)
            self._wake.wait(DRIVER_PERIOD_S)
            self._wake.clear()

    def _drive_once(self) -> None:
        """One driver round; then what a failed save left is written, and the search is healthy again."""
        self.step()
        with self.lock:
            if self._save_failed:
                self._save()
        self.faults.clear()

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
        now = self.clock()
        if now >= self._metrics_due or self.state.phase in TERMINAL_PHASES:  # O(candidates): not every round
            self._metrics_due = now + METRICS_PERIOD_S
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
            return search_status(self.state, self.profiling, self.searching, self.roster, self.clock(), limit,
                                 degraded=self.faults.to_pb())
