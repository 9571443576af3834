"""The trainers' side of the controller (stage 2): queued candidates leased to trainers, their epoch reports,
results and releases (GPUNet paper 3.3.3: a free client asks for work, trains and reports back).

A candidate is ``queued`` (proposed, waiting), ``running`` (leased: exactly the candidates with a lease in the
:class:`~gpunet.controller.leases.LeaseBook`), or finished: ``completed``, ``stopped`` (early stopping) or
``failed`` (more than ``spec.training.maxRetries`` failed attempts: a release with reason ``failed``, or a lease
that expired because its trainer died or hung; preemptions do not count). Re-queued work resumes from the candidate's
last epoch checkpoint. Every method expects the controller's lock held and returns the candidate to save, if any.

The same desk serves stage 2 in phase Finalizing (:mod:`.stage2`): the tier winners trained again and the baselines
are candidates with their own training (``Candidate.training``) and ``evaluate_test`` set, leased, renewed, expired
and resumed from their checkpoints like any other.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter as Tally
from pathlib import Path
from typing import Callable

from ..rpc import TERMINAL_PHASES, pb
from ..spec import SearchSpec
from .errors import UnknownWorkError, check_id, require
from .leases import CANDIDATE, Lease, LeaseBook, Roster
from .metrics import ControllerMetrics
from .paths import CheckpointPaths
from .finalizing import PHASE_FINALIZING
from .state import (COMPLETED, FAILED, FINISHED, PHASE_SCALING, PHASE_SEARCHING, QUEUED, RUNNING, STOPPED, Candidate, ControllerState,
                    architecture_of, target_ms_of)

log = logging.getLogger(__name__)

#: Decides, after epoch ``e`` of a candidate, whether it goes on: ``(pb.ProgressAction, reason)``.
StoppingRule = Callable[[Candidate, int], tuple[int, str]]


class TrainerDesk:
    """Hands out candidates under leases and takes the trainers' reports.

    Args:
        spec: the search.
        state: the controller's state; its running candidates' leases are granted again here (a restart).
        state_dir: where ``checkpoints/<candidate>/<lease>.pt`` live.
        leases: the search's lease book.
        roster: who was heard from when (a current progress report counts).
        metrics: the controller's metrics.
        should_stop: the early-stopping rule.
        now: the time of construction (fresh deadlines for leases that survived a restart).
    """

    def __init__(self, spec: SearchSpec, state: ControllerState, state_dir: Path, leases: LeaseBook, roster: Roster,
                 metrics: ControllerMetrics, should_stop: StoppingRule, now: float) -> None:
        self.spec, self.space, self.state, self.dir = spec, spec.space(), state, state_dir
        self.leases, self.roster, self.metrics, self.should_stop = leases, roster, metrics, should_stop
        self.paths = CheckpointPaths(state_dir)
        self.training_json = json.dumps(spec.training.to_dict())
        self._queued: dict[str, Candidate] = {}
        self.tier_count: Tally = Tally()
        for cand in state.candidates.values():
            self.tier_count[cand.tier] += 1
            if cand.checkpoint and self.paths.inside(cand.checkpoint, cand.id) is None:
                cand.note(f"{now:.0f}: checkpoint {cand.checkpoint[:200]} lies outside {self.paths.folder(cand.id)}; dropped")
                cand.checkpoint = ""
                if cand.state in (QUEUED, RUNNING):
                    cand.epoch = 0  # the next attempt starts from scratch
            if cand.state == RUNNING and self.leases.held_by(cand.worker_id) is not None:
                cand.note(f"{now:.0f}: {cand.worker_id} holds another lease; requeued")
                self._set_state(cand, QUEUED)
            if cand.state == QUEUED:
                self._queued[cand.id] = cand
            if cand.state == RUNNING:  # the worker keeps training and reports to this controller
                self.leases.grant(CANDIDATE, cand.id, cand.worker_id, now, lease_id=cand.lease_id)

    def add(self, cand: Candidate) -> None:
        """A new proposal: queued for the next free trainer."""
        self.state.candidates[cand.id] = self._queued[cand.id] = cand
        self.tier_count[cand.tier] += 1

    def _set_state(self, cand: Candidate, state: str) -> None:
        """Change a candidate's state, keeping the index of queued candidates."""
        if cand.state == QUEUED:
            self._queued.pop(cand.id, None)
        cand.state = state
        if state == QUEUED:
            self._queued[cand.id] = cand

    def _requeue(self, cand: Candidate, lease: Lease, now: float) -> None:
        self.leases.release(lease)
        self._set_state(cand, QUEUED)
        cand.lease_id, cand.requeued_at, cand.stop_requested = "", now, False

    def lookup(self, candidate_id: str) -> Candidate:
        cand = self.state.candidates.get(candidate_id)
        if cand is None:
            raise UnknownWorkError("candidate_id", candidate_id, reason=f"not a candidate of search {self.state.name!r}")
        return cand

    # --- work ----------------------------------------------------------------------------------------------
    def work(self, req: pb.WorkRequest, now: float) -> tuple[pb.WorkResponse, Candidate | None]:
        """A free trainer's request: the next queued candidate under a new lease, Wait or Done."""
        phase = self.state.phase
        stage2_left = phase == PHASE_FINALIZING and any(
            c.final and c.state in (QUEUED, RUNNING) for c in self.state.candidates.values())
        if phase in TERMINAL_PHASES or (phase == PHASE_FINALIZING and not stage2_left):
            return pb.WorkResponse(done=pb.Done(reason=f"search {phase.lower()}: no candidate left to train")), None
        if phase not in (PHASE_SEARCHING, PHASE_SCALING, PHASE_FINALIZING):
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=2.0, reason=f"latency table being prepared ({phase})")), None
        queued = list(self._queued.values())
        if not queued and stage2_left:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=2.0, reason="stage 2: every network is being trained")), None
        if not queued:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=1.0, reason="no candidate queued; proposals being computed")), None
        load = self.tier_count - Tally(c.tier for c in queued)
        # Re-queued work first (oldest first), then the tier with the least work done, then the oldest proposal.
        cand = min(queued, key=lambda c: (c.requeued_at == 0, c.requeued_at, load[c.tier], c.created, c.id))
        lease = self.leases.grant(CANDIDATE, cand.id, req.worker_id, now)
        self._set_state(cand, RUNNING)
        cand.worker_id, cand.lease_id, cand.lease_granted = req.worker_id, lease.id, now
        cand.attempts += 1
        cand.note(f"{now:.0f}: lease {cand.lease_id} to {req.worker_id} (attempt {cand.attempts}, from epoch {cand.epoch})")
        return pb.WorkResponse(candidate=self.assignment(lease)), cand

    def assignment(self, lease: Lease) -> pb.TrainingAssignment:
        """The assignment of a candidate lease (also the answer to a repeated request)."""
        cand = self.state.candidates[lease.work_id]
        arch = architecture_of(self.space, cand)
        target_ms = target_ms_of(self.spec, cand)
        return pb.TrainingAssignment(
            candidate_id=cand.id, lease_id=lease.id, tier_index=cand.tier,
            target_ms=target_ms if math.isfinite(target_ms) else 0.0, vector=cand.vector,
            architecture_json=json.dumps(arch.to_dict()),
            training_json=json.dumps(cand.training) if cand.training else self.training_json,
            resume_checkpoint=cand.checkpoint, checkpoint_path=self.paths.assigned(cand.id, lease.id),
            lease_deadline_unix_s=lease.deadline, lease_duration_s=self.leases.duration_s, attempt=cand.attempts,
            start_epoch=cand.epoch, evaluate_test=bool(cand.final),
        )

    def epochs_of(self, cand: Candidate) -> int:
        """Epochs of a candidate's training: its own (stage 2) or the search's ``spec.training.epochs``."""
        return int(cand.training["epochs"]) if cand.training else self.spec.training.epochs

    # --- reports -------------------------------------------------------------------------------------------
    def progress(self, req: pb.ProgressReport, now: float) -> tuple[pb.ProgressResponse, Candidate | None]:
        """One finished epoch (or a heartbeat) of a candidate; answers continue, stop or abandon."""
        check_id(req.worker_id, "worker_id")
        check_id(req.candidate_id, "candidate_id")
        check_id(req.lease_id, "lease_id")
        cand = self.lookup(req.candidate_id)
        epochs = self.epochs_of(cand)
        if not req.heartbeat:
            require(1 <= req.epoch <= epochs, "epoch", req.epoch, f"1..{epochs} (completed epochs)")
            require(math.isfinite(req.top1) and 0.0 <= req.top1 <= 1.0, "top1", req.top1, "a fraction in [0, 1]")
            require(bool(req.checkpoint_path), "checkpoint_path", reason="required with an epoch report")
        checkpoint = self.paths.check("checkpoint_path", req.checkpoint_path, cand.id)
        lease = self.leases.of(CANDIDATE, cand.id)
        if lease is None or lease.id != req.lease_id or lease.worker_id != req.worker_id:
            self.metrics.reports_ignored.labels("progress").inc()
            return pb.ProgressResponse(action=pb.PROGRESS_ACTION_ABANDON,
                                       reason=f"lease {req.lease_id} is not current (candidate {cand.state})"), None
        self.roster.saw(req.worker_id, pb.WORKER_KIND_TRAINER, now)
        deadline = self.leases.renew(lease, now)
        if req.heartbeat:
            return pb.ProgressResponse(action=pb.PROGRESS_ACTION_CONTINUE, lease_deadline_unix_s=deadline), None
        duplicate = req.epoch == cand.epoch and checkpoint == cand.checkpoint
        if not duplicate:
            if req.epoch <= cand.epoch:
                cand.note(f"{now:.0f}: epoch went back from {cand.epoch} to {req.epoch} (resume checkpoint unusable)")
            history = cand.history[: req.epoch - 1]
            history += [history[-1] if history else req.top1] * (req.epoch - 1 - len(history))
            cand.history = history + [float(req.top1)]
            cand.epoch = req.epoch
            self._replace_checkpoint(cand, checkpoint)
        action, reason = self.should_stop(cand, req.epoch)
        if action == pb.PROGRESS_ACTION_STOP and not cand.stop_requested:
            cand.stop_requested = True
            cand.note(f"{now:.0f}: early stop at epoch {req.epoch}: {reason}")
        response = pb.ProgressResponse(action=action, lease_deadline_unix_s=deadline, reason=reason)
        return response, None if duplicate else cand

    def _replace_checkpoint(self, cand: Candidate, path: str) -> None:
        """Point the candidate at its newest checkpoint (a path :meth:`CheckpointPaths.check` passed) and delete
        the previous one, if it lies in the candidate's folder."""
        old, cand.checkpoint = cand.checkpoint, path
        if old and old != path:
            self.paths.delete(old, cand.id)

    def result(self, req: pb.ResultReport, now: float) -> tuple[pb.ResultResponse, Candidate | None]:
        """The final result of a candidate; duplicate and late results are ignored."""
        check_id(req.worker_id, "worker_id")
        check_id(req.candidate_id, "candidate_id")
        check_id(req.lease_id, "lease_id")
        cand = self.lookup(req.candidate_id)
        epochs = self.epochs_of(cand)
        require(math.isfinite(req.top1) and 0.0 <= req.top1 <= 1.0, "top1", req.top1, "a fraction in [0, 1]")
        require(0 <= req.epochs <= epochs, "epochs", req.epochs, f"0..{epochs}")
        if req.HasField("top1_test"):
            require(math.isfinite(req.top1_test) and 0.0 <= req.top1_test <= 1.0, "top1_test", req.top1_test,
                    "a fraction in [0, 1]")
        checkpoint = self.paths.check("checkpoint_path", req.checkpoint_path, cand.id)
        lease = self.leases.of(CANDIDATE, cand.id)
        if cand.state in FINISHED or cand.state == FAILED or lease is None or lease.id != req.lease_id:
            self.state.duplicate_reports += 1
            self.metrics.reports_ignored.labels("result").inc()
            if cand.state in FINISHED or cand.state == FAILED:
                what = "duplicate" if cand.lease_id == req.lease_id else "late"
                return pb.ResultResponse(accepted=False, reason=f"{what}: candidate already {cand.state}"), None
            return pb.ResultResponse(accepted=False, reason=f"late: lease {req.lease_id} is not current"), None
        self.leases.release(lease)
        self._set_state(cand, STOPPED if req.stopped_early else COMPLETED)
        cand.top1 = float(max(req.top1, max(cand.history, default=0.0)))
        cand.epoch = max(cand.epoch, req.epochs)
        if checkpoint:
            self._replace_checkpoint(cand, checkpoint)
        cand.finished = now
        if cand.final and req.HasField("top1_test"):
            cand.top1_test = float(req.top1_test)
        if req.restarted_from_scratch:
            cand.restarts_from_scratch += 1
            cand.note(f"{now:.0f}: restarted from scratch: {req.restart_reason or 'resume checkpoint unusable'}")
        cand.note(f"{now:.0f}: {cand.state} by {req.worker_id}: top-1 {cand.top1:.4f} after {cand.epoch} epochs")
        return pb.ResultResponse(accepted=True), cand

    # --- leases taken back ---------------------------------------------------------------------------------
    def release(self, lease: Lease, req: pb.ReleaseRequest, now: float) -> tuple[pb.ReleaseResponse, Candidate]:
        """A lease given back (SIGTERM, a failure, a lost pod): re-queue, or fail after too many failed attempts."""
        cand = self.state.candidates[lease.work_id]
        checkpoint = self.paths.check("checkpoint_path", req.checkpoint_path, cand.id)
        if checkpoint and req.epoch > cand.epoch:
            self._replace_checkpoint(cand, checkpoint)
            cand.epoch = req.epoch
            cand.history = cand.history[: req.epoch]
        reason = pb.ReleaseReason.Name(req.reason).removeprefix("RELEASE_REASON_").lower()
        cand.note(f"{now:.0f}: {req.worker_id} released lease {cand.lease_id}: {reason} {req.message}".rstrip())
        requeued = True
        if req.reason == pb.RELEASE_REASON_PREEMPTED:
            cand.preemptions += 1
            self._requeue(cand, lease, now)
        elif req.reason == pb.RELEASE_REASON_FAILED:
            requeued = self._failed_attempt(cand, lease, req.message or "the trainer failed (no message)", now)
        else:
            self._requeue(cand, lease, now)
        return pb.ReleaseResponse(released=True, work_id=cand.id, requeued=requeued, lease_id=lease.id), cand

    def expire(self, lease: Lease, now: float) -> Candidate:
        """A lease past its deadline: the trainer died or hung, a failed attempt (:meth:`_failed_attempt`)."""
        cand = self.state.candidates[lease.work_id]
        cand.lease_expiries += 1
        cand.note(f"{now:.0f}: lease {cand.lease_id} of {cand.worker_id} expired")
        self._failed_attempt(cand, lease, f"lease {lease.id} of {lease.worker_id} expired: no report for "
                                          f"{self.leases.duration_s:g} s (the trainer died or hung)", now)
        return cand

    def _failed_attempt(self, cand: Candidate, lease: Lease, error: str, now: float) -> bool:
        """Count a failed attempt of ``cand`` (a failed release, a lease expiry, a dead worker): re-queued while it
        has at most ``spec.training.maxRetries`` failed attempts, else ``failed`` with ``error``, for the searcher
        to be told (a poison candidate, e.g. one whose training runs out of memory, cannot use up every trainer).
        Returns True when re-queued."""
        cand.failures += 1
        self.state.failures += 1
        cand.error = error[:500]
        if cand.failures <= self.spec.training.max_retries:
            self._requeue(cand, lease, now)
            return True
        self.leases.release(lease)
        self._set_state(cand, FAILED)
        cand.finished = now
        cand.note(f"{now:.0f}: failed after {cand.failures} failed attempts: {cand.error}")
        return False
