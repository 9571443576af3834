"""The search controller: the server of the GPUNet paper's client/server NAS (sections 3.3.3, 4.1).

It runs the two stages of the search and hands out work under leases:

1. **Profiling**: draw ``spec.latency.samples`` networks with a Sobol sequence, plan the layer keys the latency
   table lacks (:func:`gpunet.latency.plan_profiling`) and hand them to profiler workers in batches. The latency
   target (backend, device name, precision, batch size) is fixed by the first profiler that asks.
2. **Stratifying**: estimate every sampled network's latency from the table and group them into the latency
   tiers of ``spec.latency.tiers`` (:func:`gpunet.sampling.stratify`).
3. **Searching**: one searcher per tier (:func:`gpunet.search.create`, restricted to the tier's pool) proposes
   candidates; trainers train them and report top-1 per epoch; the median stopping rule ends poor ones early.

Fault tolerance:

- Every assignment is a *lease* with a deadline; progress reports and heartbeats renew it. An expired lease puts
  the candidate back in the queue; the next trainer resumes from the last epoch checkpoint.
- Requests are idempotent: a worker asking again gets its current assignment back; a duplicate or late report
  is answered ``accepted = false`` and changes nothing.
- State is saved atomically (:mod:`gpunet.controller.state`) before any reply that depends on it, so a
  controller killed at any moment restarts where it stopped.
- Proposals are computed ahead by a background *driver* thread, which also does the slow work (planning,
  stratification, searcher fits) outside the lock: RPCs never wait on a GP fit.

The core speaks the generated protobuf messages (:mod:`gpunet.rpc`) but knows nothing of gRPC servers; it
raises the domain errors of :mod:`gpunet.controller.errors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import threading
import time
import uuid
from collections import Counter as Tally
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..fileio import write_json_atomic
from ..rpc import TERMINAL_PHASES, pb, phase_value
from ..spec import SearchSpec
from .errors import InvalidRequestError, UnknownWorkError
from .metrics import ControllerMetrics
from .state import (CANDIDATE_STATES, COMPLETED, FAILED, FINISHED, PHASE_FAILED, PHASE_PENDING, PHASE_PROFILING,  # noqa: F401
                    PHASE_SEARCHING, PHASE_STRATIFYING, PHASE_SUCCEEDED, QUEUED, RUNNING, STATE_FILE, STOPPED, Candidate,
                    ControllerState, StateStore)

log = logging.getLogger(__name__)

#: Most networks kept per tier pool (the first ones in Sobol order): bounds the searchers' cost and state size.
MAX_POOL = 4096
#: Layer keys per profiling batch.
PROFILE_BATCH_SIZE = 16
#: Other candidates of a tier that must have reached an epoch before the median stopping rule applies there.
MIN_STOPPING_PEERS = 2
#: Most proposals asked of one searcher per driver round (a searcher's ask cost grows with the batch).
MAX_ASK_PER_STEP = 16
#: Results are told to a searcher at most this often (seconds) while no new proposal is needed: each round
#: writes a searcher snapshot.
TELL_PERIOD_S = 1.0
#: Least time between two searcher rounds of a tier (seconds): a round (tell, ask, snapshot) holds the GIL for
#: milliseconds to tens of milliseconds, so under many workers proposals come in batches rather than one by one.
MIN_ROUND_INTERVAL_S = 0.5
#: How often the driver thread wakes up, in seconds.
DRIVER_PERIOD_S = 0.1
MAX_ID_LENGTH = 253


@dataclass
class ProfilingBatch:
    """Layer keys leased to one profiler (in memory: re-planned from the table after a restart)."""

    id: str
    keys: list[Any]
    key_json: list[str]
    state: str = QUEUED
    lease_id: str = ""
    worker_id: str = ""
    deadline: float = 0.0
    digests: set[str] = field(default_factory=set)


def _spec_digest(spec: SearchSpec) -> str:
    engine = {"space": spec.search_space, "latency": repr(spec.latency), "algorithm": repr(spec.algorithm)}
    return hashlib.sha256(json.dumps(engine, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidRequestError(message)


def _check_id(value: str, name: str) -> None:
    _require(bool(value), f"{name}: required")
    _require(len(value) <= MAX_ID_LENGTH, f"{name}: longer than {MAX_ID_LENGTH} characters")


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

    Call :meth:`start` to run the driver thread, :meth:`close` to stop it.
    """

    def __init__(self, spec: SearchSpec, state_dir: str | Path, *, lease_s: float = 60.0,
                 clock: Callable[[], float] = time.time, max_pool: int = MAX_POOL,
                 profile_batch_size: int = PROFILE_BATCH_SIZE, metrics: ControllerMetrics | None = None,
                 round_interval_s: float = MIN_ROUND_INTERVAL_S, searcher_processes: bool = False) -> None:
        from ..latency import LatencyTable

        self.spec = spec
        self.space = spec.space()
        self.dir = Path(state_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lease_s = float(lease_s)
        self.clock = clock
        self.max_pool = max_pool
        self.profile_batch_size = profile_batch_size
        self.round_interval_s = round_interval_s
        self.searcher_processes = searcher_processes
        self.metrics = metrics or ControllerMetrics()
        self.lock = threading.RLock()
        self.table = LatencyTable(self.dir / "latency.sqlite")
        self.store = StateStore(self.dir / STATE_FILE)
        self._queued: dict[str, Candidate] = {}
        self._tier_count: Tally = Tally()
        self._last_round: dict[int, float] = {}
        self.training_json = json.dumps(spec.training.to_dict())
        self.workers_seen: dict[str, tuple[float, int]] = {}
        self.leases_by_worker: dict[str, tuple[str, str]] = {}
        self.batches: dict[str, ProfilingBatch] = {}
        self.plan_ready = False
        self.layers_needed = 0
        self.layers_measured = 0
        self._samples: np.ndarray | None = None
        self.pools: list[dict[str, Any]] = []
        self.searchers: list[Any] = []
        self._pool_latency: list[dict[tuple[int, ...], float]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._load_or_init()

    # ------------------------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------------------------
    def _load_or_init(self) -> None:
        now = self.clock()
        if self.store.exists():
            self.state = self.store.load()
            if self.state.spec_digest and self.state.spec_digest != _spec_digest(self.spec):
                log.warning("the spec's search space, latency or algorithm changed since %s was written; resuming anyway",
                            self.store.path)
            # Leases survive a restart: the workers keep training and report to the new controller.
            for cand in self.state.candidates.values():
                self._tier_count[cand.tier] += 1
                if cand.state == QUEUED:
                    self._queued[cand.id] = cand
                if cand.state == RUNNING:
                    cand.lease_deadline = now + self.lease_s
                    self.leases_by_worker[cand.worker_id] = ("candidate", cand.id)
            if self.state.phase in (PHASE_SEARCHING, *TERMINAL_PHASES) and (self.dir / "stratification.json").exists():
                self._load_stratification()
            elif self.state.phase in (PHASE_STRATIFYING, PHASE_SEARCHING):
                self.state.phase = PHASE_PROFILING
            log.info("resumed search %s in phase %s with %d candidates", self.state.name, self.state.phase,
                     len(self.state.candidates))
        else:
            self.state = ControllerState(name=self.spec.name, phase=PHASE_PROFILING, started=now, updated=now,
                                         spec_digest=_spec_digest(self.spec))
            self._save()
        self._refresh_metrics()

    def _save(self, *changed: Candidate) -> None:
        """Persist the state header and the ``changed`` candidates in one transaction (call with the lock held)."""
        if self._closed:
            return
        self.state.updated = self.clock()
        self.store.save(self.state, changed)

    def _set_state(self, cand: Candidate, state: str) -> None:
        """Change a candidate's state, keeping the index of queued candidates."""
        if cand.state == QUEUED:
            self._queued.pop(cand.id, None)
        cand.state = state
        if state == QUEUED:
            self._queued[cand.id] = cand

    def _target(self) -> Any:
        from ..latency import LatencyTarget

        return LatencyTarget.from_dict(self.state.target) if self.state.target else None

    def samples(self) -> np.ndarray:
        """The Sobol-sampled networks of stage 1, an ``n x 41`` int64 array (``n = spec.latency.samples``)."""
        if self._samples is None:
            from ..sampling import sobol_vectors

            self._samples = sobol_vectors(self.space, self.spec.latency.samples, seed=self.spec.algorithm.seed)
        return self._samples

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
        for searcher in self.searchers:
            if searcher is not None:
                searcher.close()
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
                    self.state.phase, self.state.message = PHASE_FAILED, f"{type(exc).__name__}: {exc}"
                    self._save()
                return
            self._wake.wait(DRIVER_PERIOD_S)
            self._wake.clear()

    def step(self) -> None:
        """One round of the driver's work (also callable directly, e.g. in tests without the thread)."""
        self.expire_leases()
        phase = self.state.phase
        if phase == PHASE_PROFILING:
            self._drive_profiling()
        if self.state.phase == PHASE_STRATIFYING:
            self._stratify()
        if self.state.phase == PHASE_SEARCHING:
            self._drive_search()
        with self.lock:
            self._refresh_metrics()

    def expire_leases(self) -> int:
        """Put work whose lease has expired back in the queue; returns the number of leases expired."""
        now = self.clock()
        expired = 0
        with self.lock:
            changed = []
            for cand in self.state.candidates.values():
                if cand.state == RUNNING and cand.lease_deadline < now:
                    expired += 1
                    changed.append(cand)
                    cand.lease_expiries += 1
                    cand.note(f"{now:.0f}: lease {cand.lease_id} of {cand.worker_id} expired")
                    self._requeue(cand, now)
                    self.state.lease_expiries += 1
                    self.metrics.lease_expiries.inc()
            for batch in self.batches.values():
                if batch.state == RUNNING and batch.deadline < now:
                    expired += 1
                    self.leases_by_worker.pop(batch.worker_id, None)
                    batch.state, batch.lease_id, batch.worker_id = QUEUED, "", ""
                    self.state.lease_expiries += 1
                    self.metrics.lease_expiries.inc()
            if expired:
                self._save(*changed)
        return expired

    def _requeue(self, cand: Candidate, now: float) -> None:
        if self.leases_by_worker.get(cand.worker_id) == ("candidate", cand.id):
            del self.leases_by_worker[cand.worker_id]
        self._set_state(cand, QUEUED)
        cand.lease_id, cand.requeued_at, cand.stop_requested = "", now, False

    # --- stage 1 -------------------------------------------------------------------------------------------
    def _drive_profiling(self) -> None:
        target = self._target()
        if target is None:
            return
        with self.lock:
            busy = any(b.state in (QUEUED, RUNNING) for b in self.batches.values())
        if busy and self.plan_ready:
            return
        from ..latency import plan_profiling, required_keys

        vectors = self.samples()
        if not self.layers_needed:
            self.layers_needed = len(required_keys(target, vectors=vectors, space=self.space))
        plan = plan_profiling(self.table, target, vectors=vectors, space=self.space, batch_size=self.profile_batch_size)
        with self.lock:
            skip = set(self.state.unmeasurable)
            self.batches = {}
            for batch in plan:
                keys = [k for k in batch.keys if k.digest not in skip]
                if keys:
                    self.batches[batch.batch_id] = ProfilingBatch(batch.batch_id, keys, [k.to_json() for k in keys],
                                                                  digests={k.digest for k in keys})
            missing = sum(len(b.keys) for b in self.batches.values())
            self.layers_measured = self.layers_needed - missing - len(skip)
            self.plan_ready = True
            if not self.batches:
                self.state.phase, self.state.message = PHASE_STRATIFYING, ""
                self._save()

    # --- stage 2 -------------------------------------------------------------------------------------------
    def _stratify(self) -> None:
        from ..sampling import LatencyEstimator, stratify, tiers_from_targets

        target = self._target()
        estimator = LatencyEstimator(self.space, self.table, target)
        vectors = self.samples()
        latency = estimator.estimate(vectors, allow_missing=True)
        tiers = tiers_from_targets(list(self.spec.latency.tiers), self.spec.latency.tolerance)
        pools = stratify(vectors, latency, tiers, pool_size=self.max_pool, space=self.space)
        finite = latency[np.isfinite(latency)]
        data = {
            "format": "gpunet-stratification/v1",
            "target": self.state.target,
            "samples": int(len(vectors)),
            "seed": self.spec.algorithm.seed,
            "latency_ms_range": [float(finite.min()), float(finite.max())] if finite.size else None,
            "tiers": [p.to_dict() for p in pools],
        }
        write_json_atomic(self.dir / "stratification.json", data)
        with self.lock:
            self._load_stratification()
            empty = [p["target_ms"] for p in self.pools if not p["pool"]]
            if len(empty) == len(self.pools):
                rng = data["latency_ms_range"]
                self.state.phase = PHASE_FAILED
                self.state.message = (f"no sampled network lies in any latency tier {list(self.spec.latency.tiers)} ms "
                                      f"(estimated latencies span {rng} ms); change spec.latency.tiers")
            else:
                self.state.phase = PHASE_SEARCHING
                self.state.message = f"tiers without networks: {empty} ms" if empty else ""
                self.state.next_number = [0] * len(self.pools)
                self.state.searcher_versions = [0] * len(self.pools)
            self._save()

    def _load_stratification(self) -> None:
        from .proposer import LocalSearcher, ProcessSearcher

        data = json.loads((self.dir / "stratification.json").read_text())
        self.pools = data["tiers"]
        self._pool_latency = [{tuple(v): float(l) for v, l in zip(p["pool"], p["latency_ms"])} for p in self.pools]
        if not self.state.searcher_versions:
            self.state.searcher_versions = [0] * len(self.pools)
            self.state.next_number = [0] * len(self.pools)
        algo = self.spec.algorithm
        algorithm = {"name": algo.name, "seed": algo.seed, "initial_samples": algo.initial_samples, "options": dict(algo.options)}
        kind = ProcessSearcher if self.searcher_processes else LocalSearcher
        self.searchers = []
        for t, pool in enumerate(self.pools):
            version = self.state.searcher_versions[t]
            snapshot = str(self._snapshot_path(t, version)) if version else None
            self.searchers.append(kind(algorithm, self.spec.search_space, pool["pool"], t, snapshot) if pool["pool"] else None)

    def _snapshot_path(self, tier: int, version: int) -> Path:
        return self.dir / "searchers" / f"tier-{tier}-v{version}.json"

    # --- stage 3 -------------------------------------------------------------------------------------------
    def tier_budget(self, tier: int) -> int:
        """Candidates tier ``tier`` will propose in all: ``spec.algorithm.budget``, or fewer for a small pool."""
        return min(self.spec.algorithm.budget, len(self.pools[tier]["pool"])) if self.pools else 0

    def _lookahead(self, now: float) -> int:
        trainers = sum(1 for seen, kind in self.workers_seen.values()
                       if kind == pb.WORKER_KIND_TRAINER and now - seen < 2 * self.lease_s)
        return min(MAX_ASK_PER_STEP, max(1, math.ceil(max(trainers, 1) / max(len(self.pools), 1))) + 1)

    def _drive_search(self) -> None:
        now = self.clock()
        for tier, searcher in enumerate(self.searchers):
            if searcher is None:
                continue
            with self.lock:
                members = [c for c in self.state.candidates.values() if c.tier == tier]
                to_tell = [(c.id, c.trial_id, c.state, c.best_top1) for c in members
                           if not c.told and c.state in (*FINISHED, FAILED)]
                queued = sum(c.state == QUEUED for c in members)
                want = min(self._lookahead(now) - queued, self.tier_budget(tier) - len(members))
            endgame = len(members) >= self.tier_budget(tier)
            if not to_tell and want <= 0:
                continue
            since = now - self._last_round.get(tier, 0.0)
            if (want <= 0 and not endgame and since < TELL_PERIOD_S) or since < self.round_interval_s:
                continue
            self._last_round[tier] = now
            version = self.state.searcher_versions[tier] + 1
            tells = [(trial_id, state == FAILED, float(top1)) for _, trial_id, state, top1 in to_tell]
            proposals = searcher.round(tells, max(want, 0), self._snapshot_path(tier, version))
            with self.lock:
                changed = []
                for cid, *_ in to_tell:
                    self.state.candidates[cid].told = True
                    changed.append(self.state.candidates[cid])
                for trial_id, vector in proposals:
                    number = self.state.next_number[tier]
                    self.state.next_number[tier] += 1
                    cid = f"t{tier}-c{number:04d}"
                    cand = Candidate(id=cid, tier=tier, trial_id=trial_id, vector=vector, created=now,
                                     latency_ms=self._pool_latency[tier].get(tuple(vector), float("nan")))
                    self.state.candidates[cid] = self._queued[cid] = cand
                    self._tier_count[tier] += 1
                    changed.append(cand)
                old = self.state.searcher_versions[tier]
                self.state.searcher_versions[tier] = version
                self._save(*changed)
            if old:
                self._snapshot_path(tier, old).unlink(missing_ok=True)
        self._check_done()

    def _check_done(self) -> None:
        with self.lock:
            if self.state.phase != PHASE_SEARCHING:
                return
            for tier, searcher in enumerate(self.searchers):
                if searcher is None:
                    continue
                members = [c for c in self.state.candidates.values() if c.tier == tier]
                if len(members) < self.tier_budget(tier) or not all(c.told for c in members):
                    return
            self.state.phase = PHASE_SUCCEEDED
            self.state.message = "search finished"
            self._save()

    # ------------------------------------------------------------------------------------------------------
    # RPCs
    # ------------------------------------------------------------------------------------------------------
    def request_work(self, req: pb.WorkRequest) -> pb.WorkResponse:
        """A free worker asks for work (see the proto for the contract)."""
        _check_id(req.worker_id, "worker_id")
        _require(req.kind in (pb.WORKER_KIND_TRAINER, pb.WORKER_KIND_PROFILER),
                 f"kind: got {req.kind}; expected WORKER_KIND_TRAINER or WORKER_KIND_PROFILER")
        kind_name = "trainer" if req.kind == pb.WORKER_KIND_TRAINER else "profiler"
        with self.lock:
            now = self.clock()
            self.workers_seen[req.worker_id] = (now, req.kind)
            response = self._current_assignment(req.worker_id, now)
            if response is None:
                response = self._train_work(req, now) if req.kind == pb.WORKER_KIND_TRAINER else self._profile_work(req, now)
        self.metrics.work_requests.labels(kind_name, response.WhichOneof("work")).inc()
        if response.WhichOneof("work") in ("candidate", "layers"):
            self._wake.set()
        return response

    def _current_assignment(self, worker_id: str, now: float) -> pb.WorkResponse | None:
        held = self.leases_by_worker.get(worker_id)
        if held is None:
            return None
        kind, work_id = held
        if kind == "candidate":
            cand = self.state.candidates.get(work_id)
            if cand is not None and cand.state == RUNNING and cand.worker_id == worker_id:
                cand.lease_deadline = now + self.lease_s
                return pb.WorkResponse(candidate=self._training_assignment(cand))
        else:
            batch = self.batches.get(work_id)
            if batch is not None and batch.state == RUNNING and batch.worker_id == worker_id:
                batch.deadline = now + self.lease_s
                return pb.WorkResponse(layers=self._profiling_assignment(batch))
        del self.leases_by_worker[worker_id]
        return None

    def _new_lease_id(self) -> str:
        self.state.next_lease += 1
        return f"L{self.state.next_lease}-{uuid.uuid4().hex[:8]}"

    def _train_work(self, req: pb.WorkRequest, now: float) -> pb.WorkResponse:
        phase = self.state.phase
        if phase in TERMINAL_PHASES:
            return pb.WorkResponse(done=pb.Done(reason=f"search {phase.lower()}"))
        if phase != PHASE_SEARCHING:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=2.0, reason=f"latency table being prepared ({phase})"))
        queued = list(self._queued.values())
        if not queued:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=1.0, reason="no candidate queued; proposals being computed"))
        load = self._tier_count - Tally(c.tier for c in queued)
        # Re-queued work first (oldest first), then the tier with the least work done, then the oldest proposal.
        cand = min(queued, key=lambda c: (c.requeued_at == 0, c.requeued_at, load[c.tier], c.created, c.id))
        self._set_state(cand, RUNNING)
        cand.worker_id, cand.lease_id = req.worker_id, self._new_lease_id()
        cand.lease_deadline, cand.lease_granted = now + self.lease_s, now
        cand.attempts += 1
        cand.note(f"{now:.0f}: lease {cand.lease_id} to {req.worker_id} (attempt {cand.attempts}, from epoch {cand.epoch})")
        self.leases_by_worker[req.worker_id] = ("candidate", cand.id)
        self._save(cand)
        return pb.WorkResponse(candidate=self._training_assignment(cand))

    def _training_assignment(self, cand: Candidate) -> pb.TrainingAssignment:
        arch = self.space.decode(cand.vector)
        return pb.TrainingAssignment(
            candidate_id=cand.id, lease_id=cand.lease_id, tier_index=cand.tier,
            target_ms=float(self.spec.latency.tiers[cand.tier]), vector=cand.vector,
            architecture_json=json.dumps(arch.to_dict()), training_json=self.training_json,
            resume_checkpoint=cand.checkpoint, checkpoint_path=str(self.dir / "checkpoints" / cand.id / f"{cand.lease_id}.pt"),
            lease_deadline_unix_s=cand.lease_deadline, lease_duration_s=self.lease_s, attempt=cand.attempts,
            start_epoch=cand.epoch,
        )

    def _profile_work(self, req: pb.WorkRequest, now: float) -> pb.WorkResponse:
        from ..latency import LatencyTarget

        phase = self.state.phase
        if phase != PHASE_PROFILING:
            return pb.WorkResponse(done=pb.Done(reason="latency table complete"))
        lat = self.spec.latency
        if self.state.target is None:
            _require(bool(req.device) and "|" not in req.device,
                     "device: a profiler must name the device it measures on (its backend's device name)")
            self.state.target = LatencyTarget(lat.backend, req.device, lat.precision, lat.batch_size).to_dict()
            self._save()
            self._wake.set()
        elif req.device and req.device != self.state.target["device"]:
            return pb.WorkResponse(done=pb.Done(
                reason=f"this search measures on {self.state.target['device']!r}; this profiler measures on {req.device!r}"))
        if not self.plan_ready:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=0.5, reason="planning the layers to profile"))
        queued = [b for b in self.batches.values() if b.state == QUEUED]
        if not queued:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=1.0, reason="all layer batches are leased"))
        batch = queued[0]
        batch.state, batch.worker_id, batch.lease_id, batch.deadline = RUNNING, req.worker_id, self._new_lease_id(), now + self.lease_s
        self.leases_by_worker[req.worker_id] = ("batch", batch.id)
        return pb.WorkResponse(layers=self._profiling_assignment(batch))

    def _profiling_assignment(self, batch: ProfilingBatch) -> pb.ProfilingAssignment:
        lat = self.spec.latency
        return pb.ProfilingAssignment(batch_id=batch.id, lease_id=batch.lease_id, layer_keys_json=batch.key_json,
                                      backend=lat.backend, device=lat.device, precision=lat.precision,
                                      batch_size=lat.batch_size, lease_deadline_unix_s=batch.deadline,
                                      lease_duration_s=self.lease_s)

    # --- trainer reports -----------------------------------------------------------------------------------
    def _lookup(self, candidate_id: str) -> Candidate:
        cand = self.state.candidates.get(candidate_id)
        if cand is None:
            raise UnknownWorkError(f"candidate_id: {candidate_id!r} is not a candidate of search {self.state.name!r}")
        return cand

    def report_progress(self, req: pb.ProgressReport) -> pb.ProgressResponse:
        """One finished epoch (or a heartbeat) of a candidate; answers continue, stop or abandon."""
        _check_id(req.worker_id, "worker_id")
        _check_id(req.candidate_id, "candidate_id")
        _check_id(req.lease_id, "lease_id")
        if not req.heartbeat:
            _require(1 <= req.epoch <= self.spec.training.epochs,
                     f"epoch: got {req.epoch}; expected 1..{self.spec.training.epochs} (completed epochs)")
            _require(math.isfinite(req.top1) and 0.0 <= req.top1 <= 1.0, f"top1: got {req.top1}; expected a fraction in [0, 1]")
            _require(bool(req.checkpoint_path), "checkpoint_path: required with an epoch report")
        with self.lock:
            cand = self._lookup(req.candidate_id)
            now = self.clock()
            if cand.state != RUNNING or cand.lease_id != req.lease_id or cand.worker_id != req.worker_id:
                self.metrics.reports_ignored.labels("progress").inc()
                return pb.ProgressResponse(action=pb.PROGRESS_ACTION_ABANDON,
                                           reason=f"lease {req.lease_id} is not current (candidate {cand.state})")
            self.workers_seen[req.worker_id] = (now, pb.WORKER_KIND_TRAINER)
            cand.lease_deadline = now + self.lease_s
            if req.heartbeat:
                return pb.ProgressResponse(action=pb.PROGRESS_ACTION_CONTINUE, lease_deadline_unix_s=cand.lease_deadline)
            duplicate = req.epoch == cand.epoch and req.checkpoint_path == cand.checkpoint
            if not duplicate:
                if req.epoch <= cand.epoch:
                    cand.note(f"{now:.0f}: epoch went back from {cand.epoch} to {req.epoch} (resume checkpoint unusable)")
                history = cand.history[: req.epoch - 1]
                history += [history[-1] if history else req.top1] * (req.epoch - 1 - len(history))
                cand.history = history + [float(req.top1)]
                cand.epoch = req.epoch
                old, cand.checkpoint = cand.checkpoint, req.checkpoint_path
                self._discard_checkpoint(old, keep=cand.checkpoint)
            action, reason = self._stopping_decision(cand, req.epoch)
            if action == pb.PROGRESS_ACTION_STOP and not cand.stop_requested:
                cand.stop_requested = True
                cand.note(f"{now:.0f}: early stop at epoch {req.epoch}: {reason}")
            if not duplicate:
                self._save(cand)
            return pb.ProgressResponse(action=action, lease_deadline_unix_s=cand.lease_deadline, reason=reason)

    def _discard_checkpoint(self, path: str, keep: str) -> None:
        if path and path != keep:
            p = Path(path)
            if self.dir / "checkpoints" in p.parents:
                p.unlink(missing_ok=True)

    def _stopping_decision(self, cand: Candidate, epoch: int) -> tuple[int, str]:
        """The median stopping rule (Golovin et al. 2017): after ``minEpochs``, stop a candidate whose best top-1
        up to epoch ``e`` is below the median of the other candidates' (same tier) best top-1 up to ``e``."""
        rule = self.spec.training.early_stopping
        if not rule.enabled or epoch < rule.min_epochs or epoch >= self.spec.training.epochs:
            return pb.PROGRESS_ACTION_CONTINUE, ""
        mine = max(cand.history[:epoch])
        peers = [max(c.history[:epoch]) for c in self.state.candidates.values()
                 if c.tier == cand.tier and c.id != cand.id and len(c.history) >= epoch]
        if len(peers) < MIN_STOPPING_PEERS:
            return pb.PROGRESS_ACTION_CONTINUE, ""
        median = statistics.median(peers)
        if mine < median:
            return pb.PROGRESS_ACTION_STOP, f"median stopping rule: top-1 {mine:.4f} < median {median:.4f} at epoch {epoch}"
        return pb.PROGRESS_ACTION_CONTINUE, ""

    def report_result(self, req: pb.ResultReport) -> pb.ResultResponse:
        """The final result of a candidate; duplicate and late results are ignored."""
        _check_id(req.worker_id, "worker_id")
        _check_id(req.candidate_id, "candidate_id")
        _check_id(req.lease_id, "lease_id")
        _require(math.isfinite(req.top1) and 0.0 <= req.top1 <= 1.0, f"top1: got {req.top1}; expected a fraction in [0, 1]")
        _require(0 <= req.epochs <= self.spec.training.epochs, f"epochs: got {req.epochs}; expected 0..{self.spec.training.epochs}")
        with self.lock:
            cand = self._lookup(req.candidate_id)
            if cand.state in FINISHED or cand.state == FAILED:
                self.state.duplicate_reports += 1
                self.metrics.reports_ignored.labels("result").inc()
                what = "duplicate" if cand.lease_id == req.lease_id else "late"
                return pb.ResultResponse(accepted=False, reason=f"{what}: candidate already {cand.state}")
            if cand.state != RUNNING or cand.lease_id != req.lease_id:
                self.state.duplicate_reports += 1
                self.metrics.reports_ignored.labels("result").inc()
                return pb.ResultResponse(accepted=False, reason=f"late: lease {req.lease_id} is not current")
            now = self.clock()
            self._set_state(cand, STOPPED if req.stopped_early else COMPLETED)
            cand.top1 = float(max(req.top1, max(cand.history, default=0.0)))
            cand.epoch = max(cand.epoch, req.epochs)
            if req.checkpoint_path:
                old, cand.checkpoint = cand.checkpoint, req.checkpoint_path
                self._discard_checkpoint(old, keep=cand.checkpoint)
            cand.finished = now
            if req.restarted_from_scratch:
                cand.restarts_from_scratch += 1
                cand.note(f"{now:.0f}: restarted from scratch: {req.restart_reason or 'resume checkpoint unusable'}")
            cand.note(f"{now:.0f}: {cand.state} by {req.worker_id}: top-1 {cand.top1:.4f} after {cand.epoch} epochs")
            if self.leases_by_worker.get(req.worker_id) == ("candidate", cand.id):
                del self.leases_by_worker[req.worker_id]
            self._save(cand)
        self._wake.set()
        return pb.ResultResponse(accepted=True)

    # --- profiler reports ----------------------------------------------------------------------------------
    def report_latencies(self, req: pb.LatencyReport) -> pb.LatencyResponse:
        """Store a batch's measured layer latencies in the latency table."""
        from ..latency import LayerKey, Measurement

        _check_id(req.worker_id, "worker_id")
        _check_id(req.batch_id, "batch_id")
        _check_id(req.lease_id, "lease_id")
        parsed = []
        for i, m in enumerate(req.measurements):
            try:
                key = LayerKey.from_json(m.layer_key_json)
            except Exception as exc:  # noqa: BLE001 - any parse error is the client's
                raise InvalidRequestError(f"measurements[{i}].layer_key_json: {exc}") from None
            if not m.error:
                _require(math.isfinite(m.latency_ms) and m.latency_ms > 0,
                         f"measurements[{i}].latency_ms: got {m.latency_ms}; expected a latency in ms > 0")
                _require(math.isfinite(m.spread_ms) and m.spread_ms >= 0, f"measurements[{i}].spread_ms: got {m.spread_ms}; expected >= 0")
            parsed.append((key, m))
        with self.lock:
            batch = self.batches.get(req.batch_id)
            if batch is None or batch.state != RUNNING or batch.lease_id != req.lease_id:
                self.metrics.reports_ignored.labels("latencies").inc()
                return pb.LatencyResponse(accepted=False, reason=f"late or duplicate: batch {req.batch_id} is not leased under {req.lease_id}")
            for i, (key, _) in enumerate(parsed):
                _require(key.digest in batch.digests, f"measurements[{i}].layer_key_json: not a key of batch {req.batch_id}")
            target = self._target()
            rows = [(key, Measurement(median_ms=float(m.latency_ms), spread_ms=float(m.spread_ms), runs=max(1, int(m.runs)),
                                      backend=target.backend, backend_version=m.backend_version or req.device or target.backend))
                    for key, m in parsed if not m.error]
            failed = [key.digest for key, m in parsed if m.error]
            stored = self.table.put_many(rows) if rows else 0
            if failed:
                self.state.unmeasurable = sorted(set(self.state.unmeasurable) | set(failed))
                log.warning("%d layers of batch %s could not be measured: %s", len(failed), req.batch_id,
                            next(m.error for _, m in parsed if m.error))
            del self.batches[req.batch_id]
            self.leases_by_worker.pop(req.worker_id, None)
            self.layers_measured += len(rows)
            self.workers_seen[req.worker_id] = (self.clock(), pb.WORKER_KIND_PROFILER)
            self._save()
        self._wake.set()
        return pb.LatencyResponse(accepted=True, stored=int(stored))

    # --- releases ------------------------------------------------------------------------------------------
    def release_lease(self, req: pb.ReleaseRequest) -> pb.ReleaseResponse:
        """Give a lease back (worker: SIGTERM, failure, shutdown; operator: a lost pod)."""
        _check_id(req.worker_id, "worker_id")
        _require(req.reason in (pb.RELEASE_REASON_PREEMPTED, pb.RELEASE_REASON_FAILED, pb.RELEASE_REASON_SHUTDOWN),
                 f"reason: got {req.reason}; expected PREEMPTED, FAILED or SHUTDOWN")
        _require(req.epoch >= 0, f"epoch: got {req.epoch}; expected >= 0")
        with self.lock:
            now = self.clock()
            held = self.leases_by_worker.get(req.worker_id)
            if held is None:
                return pb.ReleaseResponse(released=False)
            kind, work_id = held
            if kind == "batch":
                batch = self.batches.get(work_id)
                if batch is None or (req.lease_id and req.lease_id != batch.lease_id):
                    return pb.ReleaseResponse(released=False, work_id=work_id)
                del self.leases_by_worker[req.worker_id]
                batch.state, batch.lease_id, batch.worker_id = QUEUED, "", ""
                if req.reason == pb.RELEASE_REASON_PREEMPTED:
                    self.state.preemptions += 1
                    self.metrics.preemptions.inc()
                self._save()
                return pb.ReleaseResponse(released=True, work_id=work_id, requeued=True)
            cand = self.state.candidates.get(work_id)
            if cand is None or cand.state != RUNNING or (req.lease_id and req.lease_id != cand.lease_id):
                return pb.ReleaseResponse(released=False, work_id=work_id)
            if req.granted_before_unix_s > 0 and cand.lease_granted >= req.granted_before_unix_s:
                return pb.ReleaseResponse(released=False, work_id=work_id)  # a newer lease than the failure: healthy
            lease_id = cand.lease_id
            if req.checkpoint_path and req.epoch > cand.epoch:
                cand.checkpoint, cand.epoch = req.checkpoint_path, req.epoch
                cand.history = cand.history[: req.epoch]
            reason = pb.ReleaseReason.Name(req.reason).removeprefix("RELEASE_REASON_").lower()
            cand.note(f"{now:.0f}: {req.worker_id} released lease {cand.lease_id}: {reason} {req.message}".rstrip())
            requeued = True
            if req.reason == pb.RELEASE_REASON_PREEMPTED:
                cand.preemptions += 1
                self.state.preemptions += 1
                self.metrics.preemptions.inc()
            elif req.reason == pb.RELEASE_REASON_FAILED:
                cand.failures += 1
                self.state.failures += 1
                if cand.failures > self.spec.training.max_retries:
                    requeued = False
            if requeued:
                self._requeue(cand, now)
            else:
                self.leases_by_worker.pop(req.worker_id, None)
                self._set_state(cand, FAILED)
                cand.finished = now
                cand.note(f"{now:.0f}: failed after {cand.failures} failed attempts")
            self._save(cand)
        self._wake.set()
        return pb.ReleaseResponse(released=True, work_id=work_id, requeued=requeued, lease_id=lease_id)

    # --- status --------------------------------------------------------------------------------------------
    def status(self, req: pb.StatusRequest | None = None) -> pb.SearchStatus:
        """The search's state for the operator and the CLI (bounded per-candidate records)."""
        limit = 200
        if req is not None:
            _require(req.max_candidates >= 0, f"max_candidates: got {req.max_candidates}; expected >= 0")
            limit = req.max_candidates or 200
        with self.lock:
            now = self.clock()
            cands = list(self.state.candidates.values())
            counts = Tally(c.state for c in cands)
            queued_batches = sum(b.state == QUEUED for b in self.batches.values())
            leased_batches = sum(b.state == RUNNING for b in self.batches.values())
            status = pb.SearchStatus(
                phase=phase_value(self.state.phase), message=self.state.message, search_name=self.state.name,
                latency_table=pb.LatencyTableProgress(layers_needed=self.layers_needed, layers_measured=max(0, self.layers_measured),
                                                      batches_queued=queued_batches, batches_leased=leased_batches),
                candidates=pb.CandidateCounts(queued=counts[QUEUED], running=counts[RUNNING], completed=counts[COMPLETED],
                                              stopped=counts[STOPPED], failed=counts[FAILED], total=len(cands),
                                              budget=sum(self.tier_budget(t) for t in range(len(self.pools))) if self.pools
                                              else self.spec.algorithm.budget * len(self.spec.latency.tiers)),
                preemptions=self.state.preemptions, lease_expiries=self.state.lease_expiries,
                active_workers=sum(1 for seen, _ in self.workers_seen.values() if now - seen < 2 * self.lease_s),
                started_unix_s=self.state.started, updated_unix_s=self.state.updated,
            )
            for t, target_ms in enumerate(self.spec.latency.tiers):
                tier = pb.TierStatus(index=t, target_ms=target_ms, pool_size=len(self.pools[t]["pool"]) if self.pools else 0)
                done = [c for c in cands if c.tier == t and c.state in FINISHED]
                tier.evaluated = len(done)
                if done:
                    best = max(done, key=lambda c: (c.top1 or 0.0, c.id))
                    tier.best_candidate_id, tier.best_top1 = best.id, best.top1 or 0.0
                    tier.best_latency_ms = best.latency_ms if math.isfinite(best.latency_ms) else 0.0
                    tier.best_vector.extend(best.vector)
                status.tiers.append(tier)
            recent = sorted(cands, key=lambda c: (c.created, c.id), reverse=True)
            status.records_truncated = len(recent) > limit
            for c in recent[:limit]:
                status.records.append(pb.CandidateRecord(
                    id=c.id, tier_index=c.tier, state=c.state, top1=c.best_top1, epochs=c.epoch,
                    latency_ms=c.latency_ms if math.isfinite(c.latency_ms) else 0.0, attempts=c.attempts,
                    preemptions=c.preemptions, worker_id=c.worker_id, lease_id=c.lease_id if c.state == RUNNING else ""))
        return status

    def _refresh_metrics(self) -> None:
        counts = Tally(c.state for c in self.state.candidates.values())
        for s in CANDIDATE_STATES:
            self.metrics.candidates.labels(s).set(counts[s])
        for t in range(len(self.spec.latency.tiers)):
            done = [c.top1 or 0.0 for c in self.state.candidates.values() if c.tier == t and c.state in FINISHED]
            self.metrics.best_top1.labels(str(t)).set(max(done, default=0.0))
        self.metrics.layers_needed.set(self.layers_needed)
        self.metrics.layers_measured.set(max(0, self.layers_measured))

    # --- helpers for outputs -------------------------------------------------------------------------------
    def candidates(self) -> list[Candidate]:
        with self.lock:
            return [Candidate.from_dict(c.to_dict()) for c in self.state.candidates.values()]
