"""The profiler worker: pull batches of layer keys, measure them with the configured latency backend, report.

The worker tells the controller its backend's device name (``WorkRequest.device``); the first profiler fixes the
search's latency target, and profilers on another device are sent away. On SIGTERM the measurements made so far
are reported (the rest of the batch is planned again) and the process exits 0.

In phase Finalizing the controller hands out whole networks instead (``NetworkMeasurementAssignment``): the worker
builds the architecture, measures its end-to-end latency with the same backend and reports it (or the error) in a
``LatencyReport`` whose ``network`` is set.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from gpunet.rpc import pb
from gpunet.rpc.client import ControllerClient, ControllerUnavailable

from .client import work_loop

log = logging.getLogger("gpunet_worker")


class ProfilerWorker:
    """One profiler process measuring with ``backend`` (a :class:`gpunet.latency.LatencyBackend`)."""

    def __init__(self, client: ControllerClient, worker_id: str, backend: Any) -> None:
        self.client, self.worker_id, self.backend = client, worker_id, backend
        self.preempted = threading.Event()
        self.measured = 0

    def run(self) -> int:
        """Profile batches until the controller says done (exit code 0), SIGTERM (0) or it is unreachable (1)."""
        request = pb.WorkRequest(worker_id=self.worker_id, kind=pb.WORKER_KIND_PROFILER, device=self.backend.device_name())
        return work_loop(self.client, request, ("layers", "network"), self.handle, self.preempted)

    def handle(self, task: pb.ProfilingAssignment | pb.NetworkMeasurementAssignment) -> int:
        """One assignment: a batch of layers (:meth:`profile`) or a whole network (:meth:`measure_network`)."""
        if isinstance(task, pb.NetworkMeasurementAssignment):
            return self.measure_network(task)
        return self.profile(task)

    def _leased(self, task: Any, work: Any) -> Any:
        """Run ``work()`` while a heartbeat thread keeps ``task``'s lease alive."""
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(task, done), daemon=True)
        beat.start()
        try:
            return work()
        finally:
            done.set()
            beat.join(timeout=5)

    def profile(self, task: pb.ProfilingAssignment) -> int:
        """Measure one batch and report it; returns the number of layers measured."""
        from gpunet.latency import LayerKey

        keys = [LayerKey.from_json(text) for text in task.layer_keys_json]
        results: list[pb.LayerMeasurement] = []
        self._leased(task, lambda: self._measure(keys, task, results))
        self._report(task, results)
        return len(results)

    def measure_network(self, task: pb.NetworkMeasurementAssignment) -> int:
        """Measure one whole network end to end and report it (or why it could not be measured); returns 1 when
        it was measured."""
        import json

        from gpunet.arch import Architecture
        from gpunet.baselines import TimmNetwork
        from gpunet.errors import GpunetError

        log.info("measuring network %s end to end", task.measurement_id)
        try:
            kind = task.WhichOneof("network")
            if kind == "architecture_json":
                arch = Architecture.from_dict(json.loads(task.architecture_json))
            elif kind == "timm_network_json":
                arch = TimmNetwork.from_dict(json.loads(task.timm_network_json))
            else:
                raise ValueError(f"network kind {kind!r} is not known to this worker")
            m = self._leased(task, lambda: self.backend.measure_network(arch))
            result = pb.NetworkMeasurement(latency_ms=m.median_ms, spread_ms=m.spread_ms, runs=m.runs,
                                           backend_version=m.backend_version, device_name=self.backend.device_name())
        except (GpunetError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot measure network %s: %s", task.measurement_id, exc)
            result = pb.NetworkMeasurement(error=f"{type(exc).__name__}: {exc}"[:500])
        if self.preempted.is_set() and result.error:
            return 0  # SIGTERM: the lease goes back on release/expiry, not as a failed try
        try:
            answer = self.client.call("ReportLatencies", pb.LatencyReport(
                worker_id=self.worker_id, batch_id=task.measurement_id, lease_id=task.lease_id, network=result,
                device=self.backend.version()), give_up_s=30.0 if self.preempted.is_set() else None)
            log.info("network %s: %s (accepted: %s %s)", task.measurement_id,
                     result.error or f"{result.latency_ms:.4f} ms", answer.accepted, answer.reason)
        except ControllerUnavailable as exc:
            log.error("%s", exc)
        return 0 if result.error else 1

    def _measure(self, keys: list[Any], task: pb.ProfilingAssignment, results: list[pb.LayerMeasurement]) -> None:
        from gpunet.latency import LatencyError

        for key, text in zip(keys, task.layer_keys_json):
            if self.preempted.is_set():
                break
            try:
                m = self.backend.measure_layer(key)
                results.append(pb.LayerMeasurement(layer_key_json=text, latency_ms=m.median_ms, spread_ms=m.spread_ms,
                                                   runs=m.runs, backend_version=m.backend_version))
            except (LatencyError, RuntimeError, ValueError) as exc:
                log.warning("cannot measure %s: %s", key.text, exc)
                results.append(pb.LayerMeasurement(layer_key_json=text, error=f"{type(exc).__name__}: {exc}"[:500]))

    def _heartbeat(self, task: Any, done: threading.Event) -> None:
        """Renew the assignment's lease by asking for work again (the controller answers with the same one)."""
        import grpc

        period = max(0.2, (task.lease_duration_s or 30.0) / 3.0)
        while not done.wait(period):
            try:
                self.client.stub.RequestWork(pb.WorkRequest(worker_id=self.worker_id, kind=pb.WORKER_KIND_PROFILER,
                                                            device=self.backend.device_name()), timeout=self.client.timeout_s)
            except grpc.RpcError as exc:
                log.warning("heartbeat of lease %s failed: %s", task.lease_id, exc.code().name)

    def _report(self, task: pb.ProfilingAssignment, results: list[pb.LayerMeasurement]) -> None:
        try:
            answer = self.client.call("ReportLatencies", pb.LatencyReport(
                worker_id=self.worker_id, batch_id=task.batch_id, lease_id=task.lease_id, measurements=results,
                device=self.backend.version()), give_up_s=30.0 if self.preempted.is_set() else None)
            log.info("batch %s: %d layers measured, %d stored (accepted: %s)", task.batch_id, len(results), answer.stored, answer.accepted)
        except ControllerUnavailable as exc:
            log.error("%s", exc)
        self.measured += len(results)
