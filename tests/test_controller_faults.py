"""Transient vs permanent failures of the controller (issue 13, item 3): classified errors, retries with backoff and
the Degraded status, a permanent failure's advice, resuming a Failed search, and a full disk."""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller_helpers import fake_profile, micro_spec, trainer_request
from gpunet.controller import SearchController
from gpunet.controller.errors import TransientError, grpc_status, is_transient
from gpunet.controller.state import ControllerState
from gpunet.errors import SpaceError
from gpunet.rpc import pb
from gpunet.sqlite import CommitFailed
from gpunet.search.gp import GPFitError

FAST_RETRY = (0.01, 0.05)


def wait_for(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def searching(tmp_path: Path, **kwargs: Any) -> SearchController:
    ctl = SearchController(micro_spec(budget=3), tmp_path, round_interval_s=0, retry_wait_s=FAST_RETRY, **kwargs)
    fake_profile(ctl)
    assert ctl.state.phase == "Searching"
    return ctl


def result(task: pb.TrainingAssignment, worker: str, top1: float) -> pb.ResultReport:
    return pb.ResultReport(worker_id=worker, candidate_id=task.candidate_id, lease_id=task.lease_id, top1=top1, epochs=2,
                           checkpoint_path=task.checkpoint_path)


def test_errors_are_classified_transient_or_permanent(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (v TEXT)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("BEGIN IMMEDIATE")  # a real "database is locked"
    holder.execute("ROLLBACK")
    pages = holder.execute("PRAGMA page_count").fetchone()[0]
    holder.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError) as full:  # a real "database or disk is full"
        for _ in range(100):
            holder.execute("INSERT INTO t VALUES (?)", ("x" * 1000,))
    try:
        raise RuntimeError("snapshot write failed") from OSError(errno.ENOSPC, "No space left on device")
    except RuntimeError as exc:
        wrapped = exc
    transient = [locked.value, full.value, OSError(errno.ENOSPC, "full"), OSError(errno.EIO, "I/O error"),
                 GPFitError("GP fit", "8 x 41", reason="NotPSDError"), TransientError("searcher process"), wrapped]
    permanent = [sqlite3.OperationalError("no such table: x"), FileNotFoundError(errno.ENOENT, "gone"),
                 SpaceError("filters", 7, [8, 16]), RuntimeError("a bug"), KeyError("t0-c0001")]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)
    assert grpc_status(full.value)[0] == grpc.StatusCode.UNAVAILABLE  # the worker's client retries it
    assert grpc_status(RuntimeError("a bug"))[0] == grpc.StatusCode.INTERNAL


def test_a_transient_driver_error_is_retried_the_search_is_degraded_and_goes_on(tmp_path: Path) -> None:
    ctl = searching(tmp_path)
    real_drive, calls, seen = ctl.searching.drive, [], []

    def flaky(now: float) -> None:
        calls.append(now)
        if len(calls) <= 3:
            raise GPFitError("GP fit", "3 observations x 41 features", reason="NotPSDError: not positive definite")
        seen.append(ctl.status().degraded.message)
        real_drive(now)

    ctl.searching.drive = flaky
    ctl.start()
    try:
        wait_for(lambda: seen)
        wait_for(lambda: not ctl.status().HasField("degraded"))
        status = ctl.status()
        assert status.phase == pb.SEARCH_PHASE_SEARCHING  # not Failed
        task = ctl.request_work(trainer_request("w1")).candidate
        assert task.candidate_id  # the search goes on
    finally:
        ctl.close()
    assert len(calls) >= 4 and "GPFitError" in seen[0] and "NotPSDError" in seen[0]


def test_a_permanent_error_fails_with_advice_and_a_failed_search_is_resumed_once(tmp_path: Path) -> None:
    ctl = searching(tmp_path)
    real_drive, calls = ctl.searching.drive, []

    def broken(now: float) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("a bug in the driver")
        real_drive(now)

    ctl.searching.drive = broken
    ctl.start()
    try:
        wait_for(lambda: ctl.state.phase == "Failed")
        assert len(calls) == 1  # a permanent error is not retried
        assert "a bug in the driver" in ctl.state.message and "--resume-failed" in ctl.state.message
        assert "nas.gpunet.dev/resume" in ctl.state.message
        assert ctl.state.failed_phase == "Searching"
        answer = ctl.resume_failed("r1")
        assert answer.resumed and answer.phase == pb.SEARCH_PHASE_SEARCHING
        assert not ctl.resume_failed("r1").resumed  # asked twice: done once
        wait_for(lambda: len(calls) >= 2)  # the driver runs again
        assert ctl.state.phase == "Searching"
        assert ctl.request_work(trainer_request("w1")).candidate.candidate_id
    finally:
        ctl.close()
    state = ControllerState.load(tmp_path)
    assert (state.phase, state.resume_id, state.failed_phase) == ("Searching", "r1", "")


def test_an_error_of_the_spec_in_the_driver_advises_a_new_search_not_a_resume(tmp_path: Path) -> None:
    ctl = searching(tmp_path)

    def invalid(now: float) -> None:
        raise SpaceError("stage 4 kernel", 4, [3, 5])

    ctl.searching.drive = invalid
    ctl.start()
    try:
        wait_for(lambda: ctl.state.phase == "Failed")
    finally:
        ctl.close()
    assert "stage 4 kernel: got 4" in ctl.state.message and "start a new search" in ctl.state.message
    assert "--resume-failed" not in ctl.state.message


def test_a_resumed_search_that_fails_again_for_the_same_cause_says_so(tmp_path: Path) -> None:
    ctl = SearchController(micro_spec(tiers=(5.0,), tolerance=0.1), tmp_path, round_interval_s=0)
    fake_profile(ctl)
    assert ctl.state.phase == "Failed" and ctl.state.failed_phase == "Stratifying"
    assert "spec.latency is fixed" in ctl.state.message and "new metadata.name" in ctl.state.message
    assert "--resume-failed" not in ctl.state.message  # resuming cannot cure it: the advice is a new search
    assert ctl.resume_failed("again").resumed
    ctl.step()
    assert ctl.state.phase == "Failed" and "no sampled network lies in any latency tier" in ctl.state.message
    ctl.close()


class FullDisk:
    """A SQLite connection on a disk that is full while ``full`` is set: every COMMIT fails with ENOSPC (where a full
    disk shows: the WAL's write and fsync), after the transaction's statements ran, so it must be rolled back."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.full, self.failed = conn, True, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if self.full and sql == "COMMIT":
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.conn.execute(sql, *args)


#: What a save on a full disk raises: the OSError, or the group commit's CommitFailed that chains it.
FULL_DISK = (OSError, CommitFailed)


def test_a_full_disk_leaves_the_state_valid_and_the_search_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpunet.fileio as fileio

    ctl = searching(tmp_path)
    first = ctl.request_work(trainer_request("w1")).candidate
    second = ctl.request_work(trainer_request("w2")).candidate
    disk = FullDisk(ctl.store._conn)
    ctl.store._conn = ctl.store.commits.conn = disk  # the group commit writes through the same connection
    real_fsync = fileio.os.fsync
    lock = threading.Lock()

    def fsync(fd: int) -> None:  # the atomic writer's files (searcher snapshots, state.json) fail the same way
        with lock:
            if disk.full:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)

    with pytest.raises(FULL_DISK) as exc:  # the RPC is answered UNAVAILABLE; the worker retries
        ctl.report_result(result(first, "w1", 0.61))
    assert grpc_status(exc.value)[0] == grpc.StatusCode.UNAVAILABLE
    assert "No space left" in ctl.status().degraded.message
    assert not ctl.report_result(result(first, "w1", 0.61)).accepted  # the retry: known in memory, not yet saved
    with pytest.raises(FULL_DISK):  # an epoch of the other candidate, which no later driver round touches
        ctl.report_progress(pb.ProgressReport(worker_id="w2", candidate_id=second.candidate_id, lease_id=second.lease_id,
                                              epoch=1, top1=0.4, checkpoint_path=second.checkpoint_path, train_loss=1.0))
    with pytest.raises(FULL_DISK):
        ctl.step()  # the searcher's round (told the result) cannot write its snapshot nor the state
    assert not list((tmp_path / "searchers").glob("*.tmp")), "a failed atomic write leaves no temporary file"
    on_disk = ControllerState.load(tmp_path)  # another reader: the last commit, loadable
    assert on_disk.phase == "Searching" and on_disk.candidates[first.candidate_id].state == "running"
    assert disk.failed >= 1

    disk.full = False  # space again: the next round writes what the failed saves left
    ctl.step()
    ctl._drive_once()
    assert ctl.faults.degraded is None
    on_disk = ControllerState.load(tmp_path)
    assert on_disk.candidates[first.candidate_id].state == "completed" and on_disk.candidates[first.candidate_id].top1 == 0.61
    assert on_disk.candidates[first.candidate_id].told
    assert (on_disk.candidates[second.candidate_id].epoch, on_disk.candidates[second.candidate_id].history) == (1, [0.4])

    disk.full = True  # full again, and the controller stops (or is killed) before it clears
    with pytest.raises(FULL_DISK):
        ctl.report_result(result(second, "w2", 0.55))
    ctl.close()  # does not raise: the file keeps its last commit
    disk.full = False
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)

    ctl2 = SearchController(micro_spec(budget=3), tmp_path, round_interval_s=0, lease_s=0.2)  # a restart resumes
    assert ctl2.state.phase == "Searching"
    assert ctl2.state.candidates[first.candidate_id].top1 == 0.61  # what was committed is kept
    time.sleep(0.3)
    ctl2.step()  # the unsaved result's lease expires: the candidate is trained again, not lost
    for i in range(12):
        answer = ctl2.request_work(trainer_request(f"x{i}"))
        if answer.WhichOneof("work") == "candidate":
            assert ctl2.report_result(result(answer.candidate, f"x{i}", 0.5)).accepted
        ctl2.step()
        if ctl2.state.phase == "Succeeded":
            break
    assert ctl2.state.phase == "Succeeded"
    cands = ctl2.candidates()
    assert len(cands) == 3 and all(c.state == "completed" for c in cands)
    ctl2.close()


def test_a_failed_searcher_round_rolls_back_so_its_retry_tells_each_result_once(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from gpunet.controller import proposer

    spec = micro_spec(budget=3)
    ctl = searching(tmp_path / "search")
    pool = ctl.searching.pools[0]["pool"]
    ctl.close()
    algorithm = {"name": "random", "seed": 0, "initial_samples": 2, "options": {}}
    first = proposer.LocalSearcher(algorithm, spec.search_space, pool, 0, None)
    asked = first.round([], 2, tmp_path / "v1.json")
    tells = [(asked[0][0], False, 0.5)]
    real_write, failures = proposer.write_json_atomic, []

    def full(path: Any, data: Any) -> None:
        if not failures:
            failures.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(proposer, "write_json_atomic", full)
    with pytest.raises(OSError):
        first.round(tells, 1, tmp_path / "v2.json")
    retried = first.round(tells, 1, tmp_path / "v2.json")  # the driver's retry
    once = proposer.LocalSearcher(algorithm, spec.search_space, pool, 0, str(tmp_path / "v1.json"))
    assert once.round(tells, 1, tmp_path / "once.json") == retried
    assert json.loads((tmp_path / "v2.json").read_text()) == json.loads((tmp_path / "once.json").read_text())


def fail(ctl: SearchController, message: str = "RuntimeError: a bug") -> None:
    with ctl.lock:
        ctl._set_phase("Failed", message)  # what the driver does on a permanent error


def test_resume_search_over_grpc_and_gpunet_run_resume_failed(tmp_path: Path) -> None:
    from gpunet import rpc
    from gpunet.cli import build_parser
    from gpunet.controller import ControllerServer
    from gpunet.controller.local import LocalRun

    ctl = searching(tmp_path)
    fail(ctl)
    srv = ControllerServer(ctl, "t0ken", "127.0.0.1:0").start()
    stub = rpc.connect(srv.address, "t0ken")
    try:
        with pytest.raises(grpc.RpcError) as bad:
            stub.ResumeSearch(pb.ResumeRequest(), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "resume_id" in bad.value.details()
        answer = stub.ResumeSearch(pb.ResumeRequest(resume_id="k8s-1"), timeout=5)
        assert answer.resumed and answer.phase == pb.SEARCH_PHASE_SEARCHING
        assert stub.GetStatus(pb.StatusRequest(), timeout=5).phase == pb.SEARCH_PHASE_SEARCHING
        fail(ctl)
        assert not stub.ResumeSearch(pb.ResumeRequest(resume_id="k8s-1"), timeout=5).resumed  # that value was used
    finally:
        stub.channel.close()
        srv.stop()

    kept = LocalRun(micro_spec(budget=3), tmp_path, workers=1, profilers=0)  # without the flag: stays Failed
    assert kept.controller.state.phase == "Failed" and kept.resumed is None
    kept.close()
    run = LocalRun(micro_spec(budget=3), tmp_path, workers=1, profilers=0, resume_failed=True)
    try:
        assert run.resumed.resumed and run.controller.state.phase == "Searching"
    finally:
        run.close()
    args = build_parser().parse_args(["run", "search.yaml", "--resume-failed"])
    assert args.resume_failed


def test_a_searcher_process_reports_a_transient_failure_as_such_and_rolls_back(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing as mp

    from gpunet.controller import proposer

    spec = micro_spec(budget=3)
    ctl = searching(tmp_path / "search")
    pool = ctl.searching.pools[0]["pool"]
    ctl.close()
    real_write, failures = proposer.write_json_atomic, []

    def full(path: Any, data: Any) -> None:
        if not failures:
            failures.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(proposer, "write_json_atomic", full)
    parent, child = mp.Pipe()
    algorithm = {"name": "random", "seed": 0, "initial_samples": 2, "options": {}}
    server = threading.Thread(target=proposer._serve, args=(child, (algorithm, spec.search_space, pool, 0, None)))
    server.start()  # the child process's loop, in a thread here
    searcher = proposer.ProcessSearcher.__new__(proposer.ProcessSearcher)
    searcher._conn, searcher._ready, searcher._proc = parent, False, None
    try:
        with pytest.raises(TransientError, match="No space left"):
            searcher.round([], 2, tmp_path / "v1.json")
        retried = searcher.round([], 2, tmp_path / "v1.json")
        fresh = proposer.LocalSearcher(algorithm, spec.search_space, pool, 0, None).round([], 2, tmp_path / "ref.json")
        assert retried == fresh  # the retry asks what the first try asked: the searcher was rolled back
    finally:
        parent.send(None)
        server.join(10)
