"""Chaos: the controller process SIGKILLed at 20 random points of a small search and restarted each time, while
a scripted trainer keeps working through the outages. At the end no acknowledged result is lost, no candidate is
trained to completion twice, and every candidate id is unique in ``candidates.jsonl``."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest

from controller_helpers import fake_profile, micro_spec, write_spec
from gpunet import rpc
from gpunet.controller import SearchController
from gpunet.controller.outputs import write_outputs
from gpunet.controller.state import ControllerState
from gpunet.rpc import pb

TOKEN = "chaos-token"
KILLS = 20
BUDGET = 10
#: The scripted trainer's time per epoch, in s: the search lasts long enough for the kills to land inside it.
EPOCH_S = 0.15
SPEC = dict(budget=BUDGET, epochs=2, early_stopping=False)
pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Controller:
    """``python -m gpunet.controller`` on one port and state directory, killable and restartable."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "gpunet.controller", "--spec", str(write_spec(tmp_path / "search.yaml", **SPEC)),
                    "--state-dir", str(tmp_path / "state"), "--host", "127.0.0.1", "--port", str(self.port),
                    "--lease-seconds", "60", "--no-outputs"]
        self.env = dict(os.environ, **{rpc.TOKEN_ENV: TOKEN})
        self.log = open(tmp_path / "controller.log", "ab")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


def call(stub: Any, method: str, request: Any, stop: Callable[[], bool]) -> Any:
    """One RPC, retried while the controller is down (it is restarted by the test)."""
    while True:
        try:
            return getattr(stub, method)(request, timeout=5)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or stop():
                raise
            time.sleep(0.05)


def test_controller_sigkilled_at_20_random_points_loses_no_result_and_trains_nothing_twice(tmp_path: Path) -> None:
    ctl = SearchController(micro_spec(**SPEC), tmp_path / "state")  # stage 1 with a fake profiler, then hand over
    fake_profile(ctl)
    ctl.close()
    controller = Controller(tmp_path)
    controller.start()
    stub = rpc.connect(f"127.0.0.1:{controller.port}", TOKEN)
    done, kills_done = threading.Event(), threading.Event()
    assigned: dict[str, list[str]] = {}  # candidate -> leases it was handed out under
    accepted: dict[str, float] = {}  # candidate -> the top-1 the controller acknowledged
    errors: list[BaseException] = []

    def trainer() -> None:
        try:
            while not done.is_set():
                work = call(stub, "RequestWork", pb.WorkRequest(worker_id="t0", kind=pb.WORKER_KIND_TRAINER, device="cpu"),
                            done.is_set)
                kind = work.WhichOneof("work")
                if kind == "done":
                    return
                if kind != "candidate":
                    time.sleep(0.02)
                    continue
                lease = work.candidate
                assert lease.candidate_id not in accepted, f"{lease.candidate_id} handed out again after its result"
                assigned.setdefault(lease.candidate_id, []).append(lease.lease_id)
                for epoch in range(lease.start_epoch + 1, 3):
                    time.sleep(EPOCH_S)
                    call(stub, "ReportProgress", pb.ProgressReport(
                        worker_id="t0", candidate_id=lease.candidate_id, lease_id=lease.lease_id, epoch=epoch, top1=0.1 * epoch,
                        checkpoint_path=lease.checkpoint_path), done.is_set)
                if len(accepted) == BUDGET - 1:
                    kills_done.wait()  # the last result waits: every kill lands inside the search
                top1 = 0.5 + 0.01 * len(accepted)
                reply = call(stub, "ReportResult", pb.ResultReport(worker_id="t0", candidate_id=lease.candidate_id,
                                                                   lease_id=lease.lease_id, top1=top1, epochs=2), done.is_set)
                if reply.accepted:
                    assert lease.candidate_id not in accepted, f"{lease.candidate_id} completed twice"
                    accepted[lease.candidate_id] = top1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    worker = threading.Thread(target=trainer, daemon=True)
    worker.start()
    rng = random.Random(13)
    results_at_kill = []
    try:
        for _ in range(KILLS):
            call(stub, "GetStatus", pb.StatusRequest(), lambda: False)  # up and serving
            time.sleep(rng.uniform(0.0, 0.8))  # a random point of the search
            results_at_kill.append(len(accepted))
            controller.kill()
            controller.start()
        kills_done.set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not errors:
            status = call(stub, "GetStatus", pb.StatusRequest(), lambda: False)
            if status.phase == pb.SEARCH_PHASE_SUCCEEDED:
                break
            time.sleep(0.2)
        done.set()
        worker.join(30)
    finally:
        done.set()
        kills_done.set()
        if controller.proc is not None and controller.proc.poll() is None:
            controller.proc.terminate()
            controller.proc.wait(30)
        stub.channel.close()
    assert not errors, errors
    assert controller.starts == KILLS + 1
    assert len(set(results_at_kill)) >= 3, results_at_kill  # the kills are spread over the search
    state = ControllerState.load(tmp_path / "state")
    assert state.phase == "Succeeded", (tmp_path / "controller.log").read_text()[-3000:]
    completed = {c.id: c for c in state.candidates.values() if c.state == "completed"}
    # no acknowledged result lost, none changed; and the search's whole budget was trained, each candidate once
    assert {cid: completed[cid].top1 for cid in accepted} == accepted
    assert len(completed) == BUDGET
    for c in completed.values():
        assert sum(" completed by " in e for e in c.events) == 1, c.events
    hub = write_outputs(micro_spec(**SPEC), tmp_path / "state", tmp_path / "out", measure=False, export=False)
    ids = [json.loads(line)["id"] for line in Path(hub["files"]["candidates"]).read_text().splitlines()]
    assert len(ids) == len(set(ids)) == len(state.candidates)


WRITER = """
import sys, torch
from gpunet.train import save_checkpoint
big = {"format": sys.argv[2], "arch": None, "weights": torch.randn(4_000_000)}  # 16 MB: a kill lands mid-write
print("ready", flush=True)
while True:
    save_checkpoint(sys.argv[1], big)
"""


def test_a_trainer_sigkilled_while_writing_a_checkpoint_leaves_the_last_one_whole(tmp_path: Path) -> None:
    """SIGKILL a process in a loop of checkpoint writes at random moments: the checkpoint file is always the old
    or the new whole checkpoint (written atomically: a temporary file, fsync, rename), never a torn one."""
    import torch

    from gpunet.train import CHECKPOINT_FORMAT

    path = tmp_path / "checkpoints" / "t0-c0000" / "L1.pt"
    rng = random.Random(7)
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), CHECKPOINT_FORMAT], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if path.exists():  # a first write may not have finished before the first kill
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert state["format"] == CHECKPOINT_FORMAT and state["weights"].numel() == 4_000_000, round_
    assert path.exists()
    assert [p.name for p in path.parent.iterdir() if p != path and not p.name.startswith(".")] == []


def test_a_rogue_worker_with_the_token_is_refused_and_touches_nothing_outside_the_root(tmp_path: Path) -> None:
    """A worker with a valid token sends traversal paths, a symlink out of the root, an oversized message, wrong
    lease ids and epochs outside the recipe: every call is refused with a status code, and nothing outside the
    state directory is created, changed or deleted."""
    from gpunet.controller import ControllerServer

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    before = {p: p.stat().st_mtime_ns for p in outside.rglob("*")}
    ctl = SearchController(micro_spec(**SPEC), tmp_path / "state", lease_s=30.0)
    fake_profile(ctl)
    server = ControllerServer(ctl, TOKEN, "127.0.0.1:0").start()
    stub = rpc.connect(server.address, TOKEN)
    try:
        lease = stub.RequestWork(pb.WorkRequest(worker_id="rogue", kind=pb.WORKER_KIND_TRAINER, device="cpu"), timeout=5).candidate
        folder = Path(lease.checkpoint_path).parent
        (folder / "escape").parent.mkdir(parents=True, exist_ok=True)
        (folder / "escape").symlink_to(outside / "precious.txt")

        def progress(**kw: Any) -> pb.ProgressReport:
            fields = dict(worker_id="rogue", candidate_id=lease.candidate_id, lease_id=lease.lease_id, epoch=1, top1=0.5,
                          checkpoint_path=lease.checkpoint_path)
            return pb.ProgressReport(**{**fields, **kw})

        refused = {
            "traversal": ("ReportProgress", progress(checkpoint_path=str(folder / ".." / ".." / ".." / "outside" / "precious.txt"))),
            "absolute": ("ReportProgress", progress(checkpoint_path=str(outside / "precious.txt"))),
            "symlink": ("ReportProgress", progress(checkpoint_path=str(folder / "escape"))),
            "wrong lease": ("ReportProgress", progress(lease_id="L-forged")),
            "epoch 0": ("ReportProgress", progress(epoch=0)),
            "epoch past the recipe": ("ReportProgress", progress(epoch=99)),
            "oversized": ("ReportProgress", progress(checkpoint_path="x" * (5 << 20))),
            "result, wrong lease": ("ReportResult", pb.ResultReport(worker_id="rogue", candidate_id=lease.candidate_id,
                                                                    lease_id="L-forged", top1=0.99, epochs=2)),
            "result, traversal": ("ReportResult", pb.ResultReport(
                worker_id="rogue", candidate_id=lease.candidate_id, lease_id=lease.lease_id, top1=0.99, epochs=2,
                checkpoint_path=str(outside / "precious.txt"))),
            "unknown candidate": ("ReportResult", pb.ResultReport(worker_id="rogue", candidate_id="../../etc",
                                                                  lease_id=lease.lease_id, top1=0.99, epochs=2)),
        }
        answers = {}
        for what, (method, request) in refused.items():
            try:
                reply = getattr(stub, method)(request, timeout=10)
            except grpc.RpcError as exc:
                answers[what] = exc.code().name
                continue
            # refused in the answer: a report under a lease that is not the worker's is told to abandon / not accepted
            answers[what] = "ABANDON" if getattr(reply, "action", None) == pb.PROGRESS_ACTION_ABANDON else \
                "NOT ACCEPTED" if getattr(reply, "accepted", True) is False else f"taken: {reply}"
        refusals = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "ABANDON", "NOT ACCEPTED"}
        assert set(answers.values()) <= refusals, answers
        assert answers["oversized"] == "RESOURCE_EXHAUSTED" and answers["traversal"] == "INVALID_ARGUMENT", answers
        # the lease is still the worker's, with nothing recorded from the refused reports
        record = next(r for r in stub.GetStatus(pb.StatusRequest(max_candidates=100), timeout=5).records if r.id == lease.candidate_id)
        assert (record.state, record.epochs, record.lease_id) == ("running", 0, lease.lease_id)
    finally:
        stub.channel.close()
        server.stop()
    assert {p: p.stat().st_mtime_ns for p in outside.rglob("*")} == before
    assert (outside / "precious.txt").read_text() == "keep me"
