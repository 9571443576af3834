"""Trainer and profiler workers against a real controller on 127.0.0.1: preemption, lease expiry, corrupt
checkpoints, reconnects and profiling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from controller_helpers import fake_profile, micro_spec
from gpunet.controller import ControllerServer, SearchController
from gpunet.controller.local import worker_command
from gpunet.rpc import TOKEN_ENV, pb
from gpunet.rpc.client import ControllerUnavailable

TOKEN = "worker-test-token"
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_data = pytest.mark.skipif(not FMNIST.exists(), reason="dataset-fashion-mnist not installed")


def serve(tmp_path: Path, lease_s: float, **spec_kwargs) -> ControllerServer:
    ctl = SearchController(micro_spec(**spec_kwargs), tmp_path / "state", lease_s=lease_s)
    fake_profile(ctl)
    return ControllerServer(ctl, TOKEN, "127.0.0.1:0").start()


def spawn_trainer(srv: ControllerServer, worker_id: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, **{TOKEN_ENV: TOKEN})  # gpunet_worker comes from the installed distribution
    return subprocess.Popen([*worker_command(), "trainer", "--controller", srv.address, "--worker-id", worker_id,
                             "--threads", "1"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float = 90.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def only_candidate(srv: ControllerServer):
    (cand,) = srv.controller.candidates()
    return cand


@needs_data
def test_sigkilled_trainer_candidate_is_finished_by_another_worker_from_the_last_epoch(tmp_path: Path) -> None:
    srv = serve(tmp_path, lease_s=2.0, budget=1, epochs=3, train_subset=600)
    try:
        a = spawn_trainer(srv, "trainer-a", tmp_path / "a.log")
        wait_for(lambda: only_candidate(srv).epoch >= 1, what="trainer a's first epoch")
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        killed_at_epoch = only_candidate(srv).epoch
        assert killed_at_epoch < 3, "the kill must land mid-candidate"
        b = spawn_trainer(srv, "trainer-b", tmp_path / "b.log")
        wait_for(lambda: srv.controller.state.phase == "Succeeded", what="trainer b to finish the candidate")
        assert b.wait(30) == 0
        cand = only_candidate(srv)
        assert cand.state == "completed" and cand.worker_id == "trainer-b"
        assert cand.lease_expiries == 1 and cand.attempts == 2 and len(cand.history) == 3
        assert any(f"to trainer-b (attempt 2, from epoch {killed_at_epoch})" in e for e in cand.events)
        b_epochs = [int(line.split(" epoch ")[1].split(":")[0]) for line in (tmp_path / "b.log").read_text().splitlines()
                    if f"{cand.id} epoch " in line]
        assert b_epochs == list(range(killed_at_epoch + 1, 4)), "b redoes only the epoch a was in"
        assert Path(cand.checkpoint).exists()
    finally:
        srv.stop()


@needs_data
def test_sigterm_releases_the_lease_as_preempted_and_requeues_at_once(tmp_path: Path) -> None:
    srv = serve(tmp_path, lease_s=120.0, budget=1, epochs=3, train_subset=600)
    try:
        a = spawn_trainer(srv, "trainer-a", tmp_path / "a.log")
        wait_for(lambda: only_candidate(srv).epoch >= 1, what="trainer a's first epoch")
        a.send_signal(signal.SIGTERM)
        assert a.wait(30) == 0
        cand = only_candidate(srv)
        assert cand.state == "queued" and cand.preemptions == 1 and cand.failures == 0 and cand.lease_expiries == 0
        assert srv.controller.status().preemptions == 1
        assert Path(cand.checkpoint).exists() and cand.epoch >= 1
        assert any("released lease" in e and "preempted" in e for e in cand.events)
        # Re-queued at once (the lease had 2 minutes left): the next trainer gets it, from the saved epoch.
        task = srv.controller.request_work(pb.WorkRequest(worker_id="next", kind=pb.WORKER_KIND_TRAINER)).candidate
        assert task.candidate_id == cand.id and task.start_epoch == cand.epoch and task.resume_checkpoint == cand.checkpoint
    finally:
        srv.stop()


@needs_data
def test_corrupt_checkpoint_restarts_from_scratch_and_is_recorded(tmp_path: Path) -> None:
    from gpunet.rpc.client import ControllerClient
    from gpunet_worker.trainer import TrainerWorker

    srv = serve(tmp_path, lease_s=30.0, budget=1, epochs=2, train_subset=300)
    try:
        first = TrainerWorker(ControllerClient(srv.address, TOKEN), "w1")
        thread = threading.Thread(target=first.run)
        thread.start()
        wait_for(lambda: only_candidate(srv).epoch >= 1, what="the first epoch")
        first.preempted.set()
        thread.join(60)
        cand = only_candidate(srv)
        assert cand.state == "queued"
        Path(cand.checkpoint).write_bytes(b"this is not a checkpoint")
        second = TrainerWorker(ControllerClient(srv.address, TOKEN), "w2")
        assert second.run() == 0
        cand = only_candidate(srv)
        assert cand.state == "completed" and cand.restarts_from_scratch == 1 and len(cand.history) == 2
        assert any("restarted from scratch" in e and "unreadable" in e for e in cand.events)
        assert any("epoch went back" in e for e in cand.events)
    finally:
        srv.stop()


def test_client_reconnects_with_backoff_until_the_controller_is_up(tmp_path: Path) -> None:
    from gpunet.rpc.client import ControllerClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ControllerClient(f"127.0.0.1:{port}", TOKEN, timeout_s=1.0, backoff_s=0.1, max_backoff_s=0.5, give_up_s=30)
    answers = []
    t = threading.Thread(target=lambda: answers.append(client.call("GetStatus", pb.StatusRequest())))
    t.start()
    time.sleep(1.5)
    ctl = SearchController(micro_spec(), tmp_path, lease_s=5.0)
    srv = ControllerServer(ctl, TOKEN, f"127.0.0.1:{port}").start()
    try:
        t.join(30)
        assert answers and answers[0].phase == pb.SEARCH_PHASE_PROFILING
        assert client.retries >= 1
    finally:
        client.close()
        srv.stop()


def test_client_gives_up_after_the_configured_time() -> None:
    from gpunet.rpc.client import ControllerClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ControllerClient(f"127.0.0.1:{port}", TOKEN, timeout_s=0.5, backoff_s=0.1, give_up_s=1.0)
    with pytest.raises(ControllerUnavailable, match="unreachable"):
        client.call("GetStatus", pb.StatusRequest())


def test_profiler_worker_fills_the_latency_table(tmp_path: Path) -> None:
    from gpunet.latency import get_backend
    from gpunet.rpc.client import ControllerClient
    from gpunet_worker.profiler import ProfilerWorker

    # Real onnxruntime latencies depend on the machine: one tier wide enough for any of them (0.01..1.99 ms).
    ctl = SearchController(micro_spec(tiers=(1.0,), tolerance=0.99), tmp_path, lease_s=10.0)
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0").start()
    try:
        backend = get_backend("onnxruntime", threads=1, runs=3, warmup=1)
        worker = ProfilerWorker(ControllerClient(srv.address, TOKEN), "p1", backend)
        assert worker.run() == 0  # returns when the controller says the table is complete
        assert worker.measured == 14
        wait_for(lambda: ctl.state.phase == "Searching", timeout=30, what="stratification")
        assert ctl.state.target["device"] == backend.device_name() and ctl.state.target["backend"] == "onnxruntime"
        assert len(ctl.table.medians()) == 14
        assert ctl.status().tiers[0].pool_size > 0
    finally:
        srv.stop()


class _Unreachable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class PartitionedClient:
    """A controller client cut off from the controller after the assignment: every heartbeat fails."""

    timeout_s = 1.0

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stub = self

    def ReportProgress(self, request, timeout=None):  # noqa: N802 - the stub's method name
        raise _Unreachable()

    def call(self, method: str, request, give_up_s=None):
        self.calls.append(method)
        raise ControllerUnavailable("127.0.0.1:1", "ReportProgress", "UNAVAILABLE", "partitioned")


def test_a_trainer_whose_lease_ran_out_stops_and_writes_no_checkpoint(tmp_path: Path) -> None:
    import json

    import torch

    from gpunet_worker.trainer import TrainerWorker

    spec = micro_spec(epochs=2)
    arch = spec.space().decode(spec.space().sample(1, seed=0)[0])

    class Slow(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 64

        def __getitem__(self, i: int):
            time.sleep(0.02)  # an epoch takes > 1 s: longer than the lease
            return torch.zeros(1, 28, 28), i % 10

    ckpt = tmp_path / "checkpoints" / "t0-c0000" / "L1-x.pt"
    task = pb.TrainingAssignment(candidate_id="t0-c0000", lease_id="L1-x", architecture_json=json.dumps(arch.to_dict()),
                                 training_json=json.dumps(spec.training.to_dict()), checkpoint_path=str(ckpt),
                                 lease_duration_s=0.5, attempt=1)
    worker = TrainerWorker(PartitionedClient(), "w1")
    worker._data = lambda training, arch: (Slow(), Slow(), 10)
    started = time.monotonic()
    assert worker.train(task) == "interrupted"
    assert time.monotonic() - started < 1.0, "training stopped once the lease ran out, not at the end of an epoch"
    assert not ckpt.exists() and not ckpt.parent.exists(), "nothing written after the lease was gone"


def test_train_candidate_writes_no_checkpoint_once_it_may_not(tmp_path: Path) -> None:
    import torch

    from gpunet.train import train_candidate

    spec = micro_spec(epochs=2)
    arch = spec.space().decode(spec.space().sample(1, seed=0)[0])
    data = torch.utils.data.TensorDataset(torch.zeros(32, 1, 28, 28), torch.arange(32) % 10)
    ckpt = tmp_path / "c.pt"
    outcome = train_candidate(arch, spec.training, ckpt, datasets=(data, data, 10), may_write=lambda: False)
    assert outcome.status == "abandoned" and outcome.epochs == 0 and not ckpt.exists()


def test_a_trainer_without_its_dataset_gives_the_lease_back_and_exits_cannot_start(tmp_path: Path) -> None:
    from controller_helpers import micro_doc
    from gpunet.errors import EXIT_CANNOT_START
    from gpunet.spec import load_spec

    doc = micro_doc(budget=1)
    doc["spec"]["training"]["dataset"]["path"] = str(tmp_path / "no-such-dataset")
    ctl = SearchController(load_spec(doc), tmp_path / "state", lease_s=30.0)
    fake_profile(ctl)
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0").start()
    try:
        trainer = spawn_trainer(srv, "trainer-a", tmp_path / "a.log")
        assert trainer.wait(120) == EXIT_CANNOT_START
        assert "cannot start" in (tmp_path / "a.log").read_text().splitlines()[-1]
        cand = only_candidate(srv)
        assert cand.state == "queued" and cand.failures == 0, "not the candidate's fault"
        assert any("shutdown dataset missing" in e for e in cand.events)
    finally:
        srv.stop()
