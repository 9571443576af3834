"""The processes of a cluster test and the scripted workers of the pods that never run.

- :class:`ControllerProcess`: the real search controller (``python -m gpunet.controller``) of one NASSearch, as a
  local process on a unix socket, with the spec and token the operator put into the search's ConfigMap and
  Secret (what the controller pod would mount).
- :class:`OperatorProcess`: ``python -m gpunet_operator`` with the chart's arguments and environment, under a
  kubeconfig of the chart's ServiceAccount (RBAC applies), killable and restartable.
- :class:`ScriptedTrainer` / :func:`fill_latency_table`: what the trainer and profiler in a pod would say to the
  controller over gRPC: hold a lease, report an epoch with its checkpoint, fill the latency table.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gpunet import rpc
from gpunet.rpc import pb, tls

ROOT = Path(__file__).resolve().parents[2]
#: The controller's port inside its socket name (``GPUNET_CONTROLLER_ADDRESS`` template, see the operator settings).
CONTROLLER_PORT = 50051
#: Every fake layer measurement of the scripted profiler, in ms.
FAKE_LAYER_MS = 0.01
#: Every fake end-to-end network measurement of the scripted profiler (phase Finalizing), in ms.
FAKE_NETWORK_MS = 0.5
#: The device the scripted profilers say they measure on.
SIM_DEVICE = "sim-gpu"


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process that runs this checkout's code."""
    paths = [str(ROOT), str(ROOT / "worker"), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), OMP_NUM_THREADS="1", **extra)


def socket_address(sockets: Path, namespace: str, name: str) -> str:
    """The gRPC address of a search's controller under the tests' address template."""
    return f"unix:{sockets}/{namespace}.{name}:{CONTROLLER_PORT}"


@dataclass
class ControllerProcess:
    spec_yaml: str
    token: str
    workdir: Path
    address: str
    proc: subprocess.Popen | None = None
    #: the search's TLS Secret (``ca.crt``, ``tls.crt``, ``tls.key``) and the name its certificate is for; None:
    #: plaintext (the operator's TLS mode ``off``)
    tls_material: dict[str, bytes] | None = None
    server_name: str = ""

    #: the controller's command before its arguments (a wrapper script may stand in for ``-m gpunet.controller``)
    entry: tuple[str, ...] = ("-m", "gpunet.controller")
    #: extra arguments (``--no-outputs`` by default: the search tests stop before the end of the search)
    extra_args: tuple[str, ...] = ("--no-outputs",)

    def start(self, lease_s: float = 120.0) -> "ControllerProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "search.yaml").write_text(self.spec_yaml)
        host = self.address.rsplit(":", 1)[0]
        tls_args: tuple[str, ...] = ()
        credentials = options = None
        if self.tls_material is not None:  # what the controller pod mounts from the TLS Secret
            for key in ("tls.crt", "tls.key"):
                (self.workdir / key).write_bytes(self.tls_material[key])
            tls_args = ("--tls-cert", str(self.workdir / "tls.crt"), "--tls-key", str(self.workdir / "tls.key"))
            credentials = tls.channel_credentials(self.tls_material["ca.crt"])
            options = tls.channel_options(self.server_name)
        log = open(self.workdir / "controller.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.entry, "--spec", str(self.workdir / "search.yaml"), "--state-dir",
             str(self.workdir / "state"), "--host", host, "--port", str(CONTROLLER_PORT), "--lease-seconds", str(lease_s),
             *tls_args, *self.extra_args], env=python_env(**{rpc.TOKEN_ENV: self.token}), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.stub = rpc.connect(self.address, self.token, options=options, credentials=credentials)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.status()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the controller did not start:\n" + (self.workdir / "controller.log").read_text()[-3000:])
                time.sleep(0.1)

    def status(self) -> pb.SearchStatus:
        return self.stub.GetStatus(pb.StatusRequest(max_candidates=1000), timeout=5)

    def record(self, candidate_id: str) -> pb.CandidateRecord:
        (rec,) = [r for r in self.status().records if r.id == candidate_id]
        return rec

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def controller_of(api: Any, namespace: str, name: str, workdir: Path, sockets: Path, **kwargs: Any) -> ControllerProcess:
    """The controller process of search ``namespace/name`` with what its pod would mount: the spec ConfigMap, the
    token Secret and (when the operator made one) the TLS Secret; not started. ``kwargs`` go to the dataclass."""
    import base64

    from kubernetes import client

    core = client.CoreV1Api(api)
    token = base64.b64decode(core.read_namespaced_secret(f"{name}-token", namespace).data["token"]).decode()
    spec_yaml = core.read_namespaced_config_map(f"{name}-spec", namespace).data["search.yaml"]
    material = {k: base64.b64decode(v) for k, v in core.read_namespaced_secret(f"{name}-tls", namespace).data.items()}
    return ControllerProcess(spec_yaml, token, workdir, socket_address(sockets, namespace, name), tls_material=material,
                             server_name=f"{name}-controller.{namespace}.svc", **kwargs)


def _play_profiler(stub: Any, worker_id: str, kind: str, report: Callable[[Any], int], timeout: float) -> int:
    """Ask for profiler work until the controller says done, handing each assignment of ``kind`` to ``report``
    (which reports it and returns how many measurements it sent). Returns the number reported."""
    reported = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        work = stub.RequestWork(pb.WorkRequest(worker_id=worker_id, kind=pb.WORKER_KIND_PROFILER, device=SIM_DEVICE), timeout=5)
        got = work.WhichOneof("work")
        if got == "done":
            return reported
        if got == kind:
            reported += report(getattr(work, kind))
        else:
            time.sleep(0.2)
    raise TimeoutError(f"the controller never said its {kind} work was done")


def fill_latency_table(stub: Any, worker_id: str) -> int:
    """Play a profiler pod: measure every layer the controller hands out (:data:`FAKE_LAYER_MS` each) until it
    says done. Returns the number of layers reported."""
    def report(task: pb.ProfilingAssignment) -> int:
        ms = [pb.LayerMeasurement(layer_key_json=k, latency_ms=FAKE_LAYER_MS, runs=1) for k in task.layer_keys_json]
        stub.ReportLatencies(pb.LatencyReport(worker_id=worker_id, batch_id=task.batch_id, lease_id=task.lease_id,
                                              measurements=ms), timeout=5)
        return len(ms)

    return _play_profiler(stub, worker_id, "layers", report, timeout=60.0)


def measure_networks(stub: Any, worker_id: str, timeout: float = 60.0) -> int:
    """Play a profiler pod in phase Finalizing: measure every tier winner the controller hands out
    (:data:`FAKE_NETWORK_MS` each) until it says done. Returns the number of networks reported."""
    def report(task: pb.NetworkMeasurementAssignment) -> int:
        m = pb.NetworkMeasurement(latency_ms=FAKE_NETWORK_MS, runs=1, backend_version="scripted", device_name=SIM_DEVICE)
        reply = stub.ReportLatencies(pb.LatencyReport(worker_id=worker_id, batch_id=task.measurement_id,
                                                      lease_id=task.lease_id, network=m), timeout=5)
        assert reply.accepted, reply.reason
        return 1

    return _play_profiler(stub, worker_id, "network", report, timeout)


@dataclass
class ScriptedTrainer:
    """The trainer of one pod (``worker_id`` = the pod's name), driven step by step by the test."""

    stub: Any
    worker_id: str
    lease: pb.TrainingAssignment | None = None
    taken_at: float = 0.0  #: when the current lease was taken (seconds since the epoch)
    #: candidate -> (checkpoint path, epoch) last reported
    checkpoints: dict[str, tuple[str, int]] = field(default_factory=dict)

    def take(self, timeout: float = 30.0) -> pb.TrainingAssignment:
        """Ask for work until a candidate comes (the controller may still be proposing)."""
        deadline = time.monotonic() + timeout
        while True:
            work = self.stub.RequestWork(pb.WorkRequest(worker_id=self.worker_id, kind=pb.WORKER_KIND_TRAINER, device=SIM_DEVICE), timeout=5)
            if work.WhichOneof("work") == "candidate":
                self.lease, self.taken_at = work.candidate, time.time()
                return self.lease
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.worker_id} got no candidate: {work}")
            time.sleep(0.2)

    def report_epoch(self, epoch: int, top1: float = 0.5) -> int:
        """Report one epoch with its checkpoint (the path a real trainer would have written); returns the action."""
        lease = self.lease
        path = f"{lease.checkpoint_path}.epoch{epoch}"
        self.checkpoints[lease.candidate_id] = (path, epoch)
        reply = self.stub.ReportProgress(pb.ProgressReport(worker_id=self.worker_id, candidate_id=lease.candidate_id,
                                                           lease_id=lease.lease_id, epoch=epoch, top1=top1, checkpoint_path=path), timeout=5)
        return reply.action

    def heartbeat(self) -> int:
        """Renew the lease; the answer says whether it is still this trainer's (CONTINUE) or not (ABANDON)."""
        lease = self.lease
        return self.stub.ReportProgress(pb.ProgressReport(worker_id=self.worker_id, candidate_id=lease.candidate_id,
                                                          lease_id=lease.lease_id, heartbeat=True), timeout=5).action

    def finish(self, top1: float, epochs: int) -> bool:
        lease = self.lease
        return self.stub.ReportResult(pb.ResultReport(worker_id=self.worker_id, candidate_id=lease.candidate_id, lease_id=lease.lease_id,
                                                      top1=top1, epochs=epochs), timeout=5).accepted


@dataclass
class OperatorProcess:
    """``python -m gpunet_operator ARGS`` with ``env``; its output goes to ``log``."""

    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> "OperatorProcess":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gpunet_operator", *self.args], env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the operator dies without any cleanup (an OOM kill, a node loss)."""
        if self.running:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")
