"""Phase Finalizing, between Searching and Succeeded: the steps that turn a finished search into its results.

The steps run in order, each until it is done, and the search is ``Succeeded`` only after the last one, so that
a scale-down at ``Succeeded`` (the operator's) never cuts the results off:

0. :class:`~.stage2.FinalTraining` — stage 2: the tier winners trained again and the baselines trained, by the
   trainers under leases (:mod:`.stage2`). The measurements of step 1 wait for it, so that a profiler never times a
   network while trainers share its machine (``gpunet run`` on one CPU).
1. :class:`NetworkMeasurements` — each latency tier's best network is measured end to end by a *profiler*, on the
   search's target device (the latency target the table was measured on), under a lease like a batch of layers.
   The GPUNet paper reports such end-to-end latencies next to the table's estimates, which overestimate because
   TensorRT fuses across layers (section 3.2, Fig. 4). The controller never measures itself: on Kubernetes it is a
   CPU pod, and a number from another device would be wrong under the right name.
2. :class:`WriteResults` — the result files (:func:`gpunet.controller.outputs.write_outputs`): ``hub.json`` (with
   each measurement's ``latency_measured_on``), ``candidates.jsonl``, weights, ONNX, ``hub.md``, ``pareto.png``.

A step is any object with a ``name`` and a ``run(now) -> bool`` (True once done) that the driver calls outside the
controller's lock (:attr:`FinalizingStage.steps`).

Not hanging: a measurement is tried at most :data:`MAX_ATTEMPTS` times (an expired lease or a profiler's error
counts as one). If no profiler of the target device reports within ``measure_timeout_s`` of entering (or resuming)
the phase, the measurements still missing are given up: ``latency_ms_measured`` stays null and
``latency_measurement_error`` says why, and the search still succeeds with its trained networks.

Progress lives in ``finalizing.json`` (:data:`FINALIZING_FORMAT`, written atomically) next to the state: steps
done and every measurement with its result, so a restarted controller neither measures twice nor loses one.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..fileio import write_json_atomic
from ..rpc import pb, phase_name
from ..spec import SearchSpec
from .errors import check_id, require
from .leases import Lease, LeaseBook
from .measurements import FINALIZING_FILE, FINALIZING_FORMAT, NetworkJob, read_progress
from .state import PHASE_SUCCEEDED, ControllerState, architecture_of

log = logging.getLogger(__name__)

#: The phase's name in the state (``pb.SEARCH_PHASE_FINALIZING``).
PHASE_FINALIZING = phase_name(pb.SEARCH_PHASE_FINALIZING)
#: Lease kind of a whole-network measurement (next to ``leases.CANDIDATE`` and ``leases.BATCH``).
NETWORK = "network"
#: Tries of one measurement (lease expiries and reported errors) before it is given up.
MAX_ATTEMPTS = 3
#: Default wait for profilers to measure every tier winner, in seconds (a GPU node may have to be scheduled first).
DEFAULT_MEASURE_TIMEOUT_S = 1800.0


class FinalizingStep(Protocol):
    name: str

    def run(self, now: float) -> bool:
        """Do (part of) the step outside the controller's lock; True once the step is done."""


class NetworkMeasurements:
    """Step 1: the tier winners measured end to end by profilers (see the module docstring).

    Every method but :meth:`run` expects the controller's lock held.
    """

    name = "measure-networks"

    def __init__(self, stage: "FinalizingStage", timeout_s: float) -> None:
        self.stage, self.timeout_s = stage, float(timeout_s)
        self.jobs: dict[str, NetworkJob] = {}
        self._deadline: float | None = None

    def plan(self) -> None:
        """The jobs: one per tier with a finished candidate (its best, as in ``hub.json``, and with stage 2 its
        ``final.topK`` best), one per member of the Scaling phase's family (tier index ``len(tier_targets) + j``),
        and one per baseline (tier ``-1 - j``)."""
        from ..baselines import baseline_network
        from .outputs import best_per_tier, family_members
        from .stage2 import baseline_id, top_candidates

        spec, space = self.stage.spec, self.stage.spec.space()
        candidates = sorted((c for c in self.stage.state.candidates.values() if not c.final), key=lambda c: c.id)
        winners = best_per_tier(candidates, len(spec.tier_targets), spec)
        if spec.scaling.enabled:
            winners += family_members(candidates, spec)
        self.jobs = {f"tier-{t}-{c.id}": NetworkJob(f"tier-{t}-{c.id}", t, c.id, architecture_of(space, c).to_dict())
                     for t, c in enumerate(winners) if c is not None}
        if spec.training.final.epochs:
            measured = {job.candidate_id for job in self.jobs.values()}
            for t in range(len(spec.tier_targets)):
                for c in top_candidates(candidates, t, spec.training.final.top_k, spec):
                    if c.id not in measured:
                        self.jobs[f"tier-{t}-{c.id}"] = NetworkJob(f"tier-{t}-{c.id}", t, c.id,
                                                                   architecture_of(space, c).to_dict())
        for j, b in enumerate(spec.baselines):
            cid = baseline_id(j, b.model)
            self.jobs[f"baseline-{cid}"] = NetworkJob(f"baseline-{cid}", -1 - j, cid, baseline_network(b, space).to_dict())

    def run(self, now: float) -> bool:
        with self.stage.lock:
            if self._deadline is None:
                self._deadline = now + self.timeout_s
                missing = [j.id for j in self.jobs.values() if not j.done]
                if missing:
                    log.info("finalizing: %d tier winners to measure end to end on %s (waiting up to %.0f s for a "
                             "profiler)", len(missing), (self.stage.state.target or {}).get("device"), self.timeout_s)
            if now >= self._deadline:
                self.abandon(f"no profiler on {(self.stage.state.target or {}).get('device')!r} measured it "
                             f"within {self.timeout_s:.0f} s of phase Finalizing")
            return all(j.done for j in self.jobs.values())

    def _give_up(self, job: NetworkJob, error: str) -> None:
        lease = self.stage.leases.of(NETWORK, job.id)
        if lease is not None:
            self.stage.leases.release(lease)
        job.error, job.given_up = error, True
        log.warning("finalizing: %s not measured end to end: %s", job.id, error)

    def abandon(self, reason: str) -> None:
        """Give up every measurement still missing (e.g. ``gpunet run`` cannot keep a profiler alive)."""
        late = [j for j in self.jobs.values() if not j.done]
        for job in late:
            self._give_up(job, reason)
        if late:
            self.stage.save()

    def progress(self) -> str:
        done = sum(j.result is not None for j in self.jobs.values())
        return f"measured {done}/{len(self.jobs)} networks end to end"

    # --- RPCs ----------------------------------------------------------------------------------------------
    def work(self, req: pb.WorkRequest, now: float) -> pb.WorkResponse:
        """A profiler's work request in phase Finalizing: a network under a new lease, Wait or Done."""
        target = self.stage.state.target or {}
        if req.device and req.device != target.get("device"):
            return pb.WorkResponse(done=pb.Done(
                reason=f"this search measures on {target.get('device')!r}; this profiler measures on {req.device!r}"))
        if all(j.done for j in self.jobs.values()):
            return pb.WorkResponse(done=pb.Done(reason="every tier winner is measured"))
        job = next((j for j in self.jobs.values() if not j.done and self.stage.leases.of(NETWORK, j.id) is None), None)
        if job is None:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=2.0, reason="every network to measure is leased"))
        lease = self.stage.leases.grant(NETWORK, job.id, req.worker_id, now)
        job.attempts += 1
        return pb.WorkResponse(network=self.assignment(lease))

    def assignment(self, lease: Lease) -> pb.NetworkMeasurementAssignment | None:
        """The assignment of a network lease (None when its job is gone or done)."""
        job = self.jobs.get(lease.work_id)
        if job is None or job.done:
            return None
        from ..baselines import TIMM_KEY

        lat = self.stage.spec.latency
        network = {"timm_network_json" if TIMM_KEY in job.architecture else "architecture_json": json.dumps(job.architecture)}
        return pb.NetworkMeasurementAssignment(
            measurement_id=job.id, lease_id=lease.id, lease_deadline_unix_s=lease.deadline,
            lease_duration_s=self.stage.leases.duration_s, backend=lat.backend, device=lat.device,
            precision=lat.precision, batch_size=lat.batch_size, **network)

    @staticmethod
    def parse(req: pb.LatencyReport) -> None:
        """Check a network report's fields (without the lock); raises :class:`InvalidRequestError`."""
        check_id(req.worker_id, "worker_id")
        check_id(req.batch_id, "batch_id")
        check_id(req.lease_id, "lease_id")
        m = req.network
        require(not req.measurements, "measurements", f"{len(req.measurements)} layer measurements",
                reason="a network report carries no layer measurements")
        if m.error:
            return
        require(math.isfinite(m.latency_ms) and m.latency_ms > 0, "network.latency_ms", m.latency_ms, "a latency in ms > 0")
        require(math.isfinite(m.spread_ms) and m.spread_ms >= 0, "network.spread_ms", m.spread_ms, ">= 0")
        require(m.runs >= 1, "network.runs", m.runs, ">= 1")
        require(bool(m.device_name), "network.device_name", reason="required: the device the network was measured on")

    def store(self, req: pb.LatencyReport, now: float) -> pb.LatencyResponse:
        """Record a network's measurement (or its error) and end its lease; a late or duplicate report changes
        nothing."""
        job = self.jobs.get(req.batch_id)
        lease = self.stage.leases.of(NETWORK, req.batch_id)
        if job is None or job.done or lease is None or lease.id != req.lease_id:
            return pb.LatencyResponse(accepted=False, reason=f"late or duplicate: {req.batch_id} is not leased under {req.lease_id}")
        m, target = req.network, self.stage.state.target or {}
        if not m.error:
            require(m.device_name == target.get("device"), "network.device_name", m.device_name,
                    repr(target.get("device")), reason="not the search's target device")
        self.stage.leases.release(lease)
        if m.error:
            job.error = m.error[:500]
            if job.attempts >= MAX_ATTEMPTS:
                self._give_up(job, f"{MAX_ATTEMPTS} tries failed; last: {job.error}")
            self.stage.save()
            return pb.LatencyResponse(accepted=True, stored=0)
        job.result = {"latency_ms": float(m.latency_ms), "spread_ms": float(m.spread_ms), "runs": int(m.runs),
                      "backend": target.get("backend"), "backend_version": m.backend_version[:200],
                      "device": m.device_name, "precision": target.get("precision"),
                      "batch_size": target.get("batch_size"), "worker_id": req.worker_id, "measured_unix_s": now}
        job.error = ""
        log.info("finalizing: %s measured end to end by %s: %.4f ms", job.id, req.worker_id, m.latency_ms)
        self.stage.save()
        return pb.LatencyResponse(accepted=True, stored=1)

    def expire(self, lease: Lease) -> None:
        """An expired network lease: a failed try; the job waits for the next profiler or is given up."""
        self.stage.leases.release(lease)
        job = self.jobs.get(lease.work_id)
        if job is None or job.done:
            return
        job.error = f"the lease of {lease.worker_id} expired"
        if job.attempts >= MAX_ATTEMPTS:
            self._give_up(job, f"{MAX_ATTEMPTS} tries failed; last: {job.error}")
        self.stage.save()


class WriteResults:
    """Step 2: the result files, written into the state directory (they read the measurements of step 1)."""

    name = "write-results"

    def __init__(self, stage: "FinalizingStage") -> None:
        self.stage = stage

    def run(self, now: float) -> bool:
        from .outputs import write_outputs

        write_outputs(self.stage.spec, self.stage.dir, phase=PHASE_SUCCEEDED)
        return True


@dataclass
class _Progress:
    format: str = FINALIZING_FORMAT
    steps_done: list[str] = field(default_factory=list)
    networks: list[dict[str, Any]] = field(default_factory=list)


class FinalizingStage:
    """The steps of phase Finalizing and their progress (``finalizing.json``).

    Args:
        spec: the search.
        state: the controller's state (its candidates give the tier winners; its target, the device).
        state_dir: where ``finalizing.json`` and the result files go.
        leases: the search's lease book (network measurements are leased to profilers).
        lock: the controller's lock; :meth:`drive` takes it when needed, every other method expects it held.
        results: measure the tier winners and write the result files (False: the phase passes straight through,
            e.g. ``python -m gpunet.controller --no-outputs``, after stage 2 if the spec asks for it).
        measure_timeout_s: how long to wait for profilers to measure every tier winner.
        desk: the trainers' desk (:class:`~.trainers.TrainerDesk`, which imports this module), for stage 2
            (:mod:`.stage2`); None: no stage 2.
        save: persists the state header and the given candidates (with the lock held); needed with ``desk``.
    """

    def __init__(self, spec: SearchSpec, state: ControllerState, state_dir: Path, leases: LeaseBook,
                 lock: threading.RLock, *, results: bool = True,
                 measure_timeout_s: float = DEFAULT_MEASURE_TIMEOUT_S, desk: Any = None,
                 save: Callable[..., None] | None = None) -> None:
        from .stage2 import FinalTraining

        self.spec, self.state, self.dir, self.leases, self.lock = spec, state, Path(state_dir), leases, lock
        self.measure = NetworkMeasurements(self, measure_timeout_s)
        self.final = FinalTraining(self, desk, save or (lambda *_: None)) if desk is not None else None
        first: list[FinalizingStep] = [self.final] if self.final is not None and self.final.wanted else []
        self.steps: list[FinalizingStep] = first + ([self.measure, WriteResults(self)] if results else [])
        self.steps_done: list[str] = []
        self._planned = False

    @property
    def path(self) -> Path:
        return self.dir / FINALIZING_FILE

    def begin(self, now: float = 0.0) -> None:
        """Plan the phase's work, or resume it from ``finalizing.json`` (call with the lock held)."""
        if self._planned or not self.steps:
            return
        self._planned = True
        if self.final in self.steps:
            self.final.plan(now or self.state.updated)
        data = read_progress(self.dir)
        try:
            self.steps_done = [str(name) for name in data.get("steps_done", [])]
            self.measure.jobs = {j["id"]: NetworkJob.from_dict(j) for j in data.get("networks", [])}
        except (TypeError, KeyError, AttributeError) as exc:
            log.warning("%s is malformed (%s); phase Finalizing starts over", self.path, exc)
            data = {}
        if not data:
            self.steps_done = []
            self.measure.plan()
        self.save()

    def save(self) -> None:
        """Write ``finalizing.json`` (call with the lock held)."""
        progress = _Progress(steps_done=list(self.steps_done), networks=[asdict(j) for j in self.measure.jobs.values()])
        write_json_atomic(self.dir / FINALIZING_FILE, asdict(progress), indent=1)

    def drive(self, now: float) -> bool:
        """Run the steps in order, each until done (the driver thread, outside the lock). True when all are done."""
        with self.lock:
            self.begin(now)
        for step in self.steps:
            if step.name in self.steps_done:
                continue
            if not step.run(now):
                return False
            with self.lock:
                self.steps_done.append(step.name)
                self.save()
            log.info("finalizing: step %s done", step.name)
        return True

    def needs_profiler(self) -> bool:
        """True while tier winners wait for a profiler (call with the lock held)."""
        if self.measure not in self.steps or self.measure.name in self.steps_done:
            return False
        return not self._planned or any(not j.done for j in self.measure.jobs.values())

    def stage2_running(self) -> bool:
        """True while stage 2 is planned and not done (call with the lock held)."""
        return self.final in self.steps and self.final.name not in self.steps_done

    def message(self) -> str:
        """The phase's progress, for the status message."""
        pending = [s.name for s in self.steps if s.name not in self.steps_done]
        if not pending:
            return "results written"
        stage2 = f"{self.final.progress()}; " if self.final in self.steps else ""
        return f"{stage2}{self.measure.progress()}; steps left: {', '.join(pending)}"

    # --- RPCs (with the lock held) -------------------------------------------------------------------------
    def work(self, req: pb.WorkRequest, now: float) -> pb.WorkResponse:
        """A profiler's work request in phase Finalizing (it waits while stage 2 trains)."""
        self.begin(now)
        if self.measure not in self.steps or self.measure.name in self.steps_done:
            return pb.WorkResponse(done=pb.Done(reason="no network left to measure"))
        if self.stage2_running():
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=5.0, reason="stage 2 trains first; the networks are "
                                                "measured after it, without trainers beside them"))
        return self.measure.work(req, now)

    def assignment(self, lease: Lease) -> pb.NetworkMeasurementAssignment | None:
        return self.measure.assignment(lease)

    def expire(self, lease: Lease) -> None:
        self.measure.expire(lease)

