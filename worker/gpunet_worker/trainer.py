"""The trainer worker: pull a candidate, train it with :func:`gpunet.train.train_candidate`, report each epoch.

Protocol (see ``proto/gpunet/nas/v1/controller.proto``):

1. ``RequestWork`` until a candidate comes (``Wait``: sleep ``retry_after_s``; ``Done``: exit 0).
2. Train from the given resume checkpoint; after every epoch the checkpoint is written atomically and then
   reported with ``ReportProgress``, whose answer says continue, stop (early stopping) or abandon.
   A heartbeat thread renews the lease every ``lease_duration_s / 3`` in between.
3. ``ReportResult`` with the best top-1 (and, for stage 2 — ``evaluate_test`` — the trained network's top-1 on
   the test split, :func:`gpunet.train.test_top1`), then back to 1.

On SIGTERM (a spot node's notice) training stops at the next batch, the lease is released with reason
``preempted`` (pointing at the last complete epoch checkpoint, so at most one epoch is redone) and the process
exits 0. A training error releases the lease with reason ``failed``. A missing dataset is not the candidate's
fault: the lease is released with reason ``shutdown`` and the process exits with ``EXIT_CANNOT_START``.

A worker whose lease is gone never writes into the state directory again: training stops, and no checkpoint is
written, once the controller answers ``abandon`` or once the lease's deadline has passed by this worker's own
clock (:class:`LeaseClock`: the deadline counts from when the renewing request was *sent*, so it is never later
than the controller's, whatever the network's delay and without trusting the two machines' clocks to agree).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any

import grpc

from gpunet.rpc import pb
from gpunet.rpc.client import ControllerClient, ControllerUnavailable

from .client import WorkerCannotStart, work_loop

log = logging.getLogger("gpunet_worker")
#: The log line of a finished epoch (benchmarks/gpu_suite.py reads the epoch and checkpoint seconds from it).
#: Each wait between heartbeats is ``lease / 3`` times a random factor in ``1 +- HEARTBEAT_JITTER``. The trainers
#: granted work in one driver round would otherwise beat in step for as long as they train, and every beat would
#: reach the controller as one burst (client-go jitters its periodic calls, ``wait.Jitter``, for the same reason).
#: The longest wait, ``0.37 * lease``, still renews the lease twice before it runs out.
HEARTBEAT_JITTER = 0.1
EPOCH_LOG = "%s epoch %d: top-1 %.4f, %.0f images/s, epoch %.3f s, checkpoint %.3f s -> %s"


class LeaseClock:
    """When this worker's lease runs out, by its own monotonic clock.

    Args:
        duration_s: the lease duration (``TrainingAssignment.lease_duration_s``).
        sent_at: ``time.monotonic()`` when the request that granted the lease was sent (or anything earlier).
    """

    def __init__(self, duration_s: float, sent_at: float) -> None:
        self.duration_s = float(duration_s)
        self._deadline = sent_at + self.duration_s
        self._lock = threading.Lock()

    def renewed(self, sent_at: float) -> None:
        """A report sent at ``sent_at`` (monotonic) was answered with a renewed lease."""
        with self._lock:
            self._deadline = max(self._deadline, sent_at + self.duration_s)

    def valid(self) -> bool:
        """True while the lease may still be ours."""
        return time.monotonic() < self._deadline


class TrainerWorker:
    """One trainer process. ``preempted`` is set by the SIGTERM handler (or a test)."""

    def __init__(self, client: ControllerClient, worker_id: str, device: str = "cpu", seed: int = 0) -> None:
        self.client, self.worker_id, self.device, self.seed = client, worker_id, device, seed
        self.preempted = threading.Event()
        self._datasets: dict[Any, Any] = {}
        self.trained = 0
        import gpunet.train  # noqa: F401 - import torch, timm and torchvision now, not while a lease runs

    # --- main loop -----------------------------------------------------------------------------------------
    def run(self) -> int:
        """Work until the search is done (exit code 0), SIGTERM (0) or the controller is unreachable (1)."""
        request = pb.WorkRequest(worker_id=self.worker_id, kind=pb.WORKER_KIND_TRAINER, device=self.device)
        return work_loop(self.client, request, "candidate", self.train, self.preempted)

    def _data(self, training: Any, arch: Any) -> Any:
        from gpunet.data import build_datasets

        key = (repr(training.dataset), repr(training.recipe), arch.resolution, arch.in_chans)
        if key not in self._datasets:
            self._datasets.clear()
            self._datasets[key] = build_datasets(training.dataset, training.recipe, arch.resolution, arch.in_chans)
        return self._datasets[key]

    def train(self, task: pb.TrainingAssignment) -> str:
        """Train one candidate under its lease; returns how it ended (completed, stopped, interrupted, ...)."""
        from gpunet.baselines import network_from_dict
        from gpunet.data import DatasetMissingError
        from gpunet.spec import parse_training
        from gpunet.train import EpochReport, test_top1, train_candidate

        log.info("training %s (attempt %d, lease %s, from epoch %d)", task.candidate_id, task.attempt, task.lease_id, task.start_epoch)
        abandoned = threading.Event()
        lease = LeaseClock(task.lease_duration_s or 1e9, time.monotonic() - task.lease_duration_s * 0.05)
        last = {"checkpoint": task.resume_checkpoint, "epoch": task.start_epoch}
        beat = threading.Thread(target=self._heartbeat, args=(task, abandoned, lease), daemon=True)
        beat.start()

        def on_epoch(report: EpochReport) -> int:
            """Report the epoch; the controller's ``pb.ProgressAction`` is what training does next."""
            last["checkpoint"], last["epoch"] = report.checkpoint_path, report.epoch
            sent_at = time.monotonic()
            try:
                answer = self.client.call("ReportProgress", pb.ProgressReport(
                    worker_id=self.worker_id, candidate_id=task.candidate_id, lease_id=task.lease_id, epoch=report.epoch,
                    top1=report.top1, train_loss=report.train_loss, checkpoint_path=report.checkpoint_path,
                    epoch_s=report.epoch_s, images_per_s=report.images_per_s))
            except ControllerUnavailable:
                return pb.PROGRESS_ACTION_ABANDON
            log.info(EPOCH_LOG, task.candidate_id, report.epoch, report.top1, report.images_per_s, report.epoch_s,
                     report.checkpoint_s, pb.ProgressAction.Name(answer.action))
            if answer.action == pb.PROGRESS_ACTION_ABANDON:
                abandoned.set()
            else:
                lease.renewed(sent_at)
            return answer.action

        def lease_held() -> bool:
            """Whether this worker may still write the candidate's checkpoint."""
            return not abandoned.is_set() and lease.valid()

        try:
            training = parse_training(json.loads(task.training_json))
            arch = network_from_dict(json.loads(task.architecture_json))
            datasets = self._data(training, arch)
            outcome = train_candidate(arch, training, task.checkpoint_path, task.resume_checkpoint or None, device=self.device,
                                      on_epoch=on_epoch, should_stop=lambda: self.preempted.is_set() or not lease_held(),
                                      may_write=lease_held, seed=self.seed, datasets=datasets)
            tested: dict[str, float] = {}
            if task.evaluate_test and outcome.status == "completed" and outcome.checkpoint_path:
                tested["top1_test"] = test_top1(outcome.checkpoint_path, training, device=self.device, seed=self.seed)
        except DatasetMissingError as exc:  # this machine's fault, not the candidate's: give it back and stop
            abandoned.set()
            self._release(task, pb.RELEASE_REASON_SHUTDOWN, last, f"dataset missing: {exc}")
            raise WorkerCannotStart("dataset", reason=str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - any training error fails this attempt, not the worker
            abandoned.set()
            log.exception("training %s failed", task.candidate_id)
            self._release(task, pb.RELEASE_REASON_FAILED, last, f"{type(exc).__name__}: {exc}")
            return "failed"
        finally:
            abandoned.set()  # stops the heartbeat thread
            beat.join(timeout=5)
        if self.preempted.is_set() and outcome.status == "interrupted":
            self._release(task, pb.RELEASE_REASON_PREEMPTED, last, "SIGTERM")
            return "preempted"
        if outcome.status in ("completed", "stopped"):
            try:
                answer = self.client.call("ReportResult", pb.ResultReport(
                    worker_id=self.worker_id, candidate_id=task.candidate_id, lease_id=task.lease_id, top1=outcome.best_top1,
                    epochs=outcome.epochs, stopped_early=outcome.status == "stopped", checkpoint_path=outcome.checkpoint_path,
                    train_s=outcome.train_s, restarted_from_scratch=outcome.restarted_from_scratch,
                    restart_reason=outcome.restart_reason, **tested))
                log.info("%s %s: top-1 %.4f (accepted: %s %s)", task.candidate_id, outcome.status, outcome.best_top1,
                         answer.accepted, answer.reason)
                self.trained += 1
            except ControllerUnavailable as exc:
                log.error("%s", exc)
        return outcome.status

    def _heartbeat(self, task: pb.TrainingAssignment, stop: threading.Event, lease: LeaseClock) -> None:
        period = max(0.2, task.lease_duration_s / 3.0)
        while not stop.wait(period * random.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)):
            sent_at = time.monotonic()
            try:
                answer = self.client.stub.ReportProgress(pb.ProgressReport(
                    worker_id=self.worker_id, candidate_id=task.candidate_id, lease_id=task.lease_id, heartbeat=True),
                    timeout=self.client.timeout_s)
            except grpc.RpcError as exc:
                log.warning("heartbeat of %s failed: %s", task.candidate_id, exc.code().name)
                continue
            if answer.action == pb.PROGRESS_ACTION_ABANDON:
                log.warning("%s: lease %s is gone (%s); abandoning", task.candidate_id, task.lease_id, answer.reason)
                stop.set()
            else:
                lease.renewed(sent_at)

    def _release(self, task: pb.TrainingAssignment, reason: int, last: dict[str, Any], message: str) -> None:
        try:
            answer = self.client.call("ReleaseLease", pb.ReleaseRequest(
                worker_id=self.worker_id, lease_id=task.lease_id, reason=reason, checkpoint_path=last["checkpoint"] or "",
                epoch=int(last["epoch"]), message=message[:500]), give_up_s=10.0)
            log.info("released lease %s of %s (%s): requeued=%s", task.lease_id, task.candidate_id,
                     pb.ReleaseReason.Name(reason), answer.requeued)
        except (ControllerUnavailable, grpc.RpcError) as exc:
            log.error("could not release lease %s: %s", task.lease_id, exc)
