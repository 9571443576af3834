"""The controller at scale (issue 13, item 8): long-polled RequestWork, group-committed state writes that lose
nothing acknowledged when the controller is SIGKILLed, and the load benchmark's ``lost_results``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from controller_helpers import micro_spec, trainer_request
from gpunet import rpc
from gpunet.controller import ControllerServer, SearchController
from gpunet.controller.state import FINISHED, PHASE_PROFILING, ControllerState
from gpunet.rpc import pb
from gpunet.rpc.client import ControllerClient, ControllerUnavailable
from gpunet.sqlite import CommitFailed, GroupCommit, open_database
from gpunet_worker.client import work_loop

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "scale-token"


def profile_over_grpc(stub, ctl: SearchController, worker_id: str = "prof") -> None:
    """Be the profiler over gRPC until the latency table is full (FAKE_LAYER_MS per layer, as fake_profile)."""
    from controller_helpers import FAKE_LAYER_MS

    md = rpc.auth_metadata(TOKEN)
    for _ in range(400):
        if ctl.state.phase != PHASE_PROFILING:
            return
        reply = stub.RequestWork(pb.WorkRequest(worker_id=worker_id, kind=pb.WORKER_KIND_PROFILER, device="test-cpu"),
                                 timeout=5, metadata=md)
        if reply.WhichOneof("work") != "layers":
            time.sleep(0.05)
            continue
        task = reply.layers
        ms = [pb.LayerMeasurement(layer_key_json=k, latency_ms=FAKE_LAYER_MS, runs=1) for k in task.layer_keys_json]
        stub.ReportLatencies(pb.LatencyReport(worker_id=worker_id, batch_id=task.batch_id, lease_id=task.lease_id,
                                              measurements=ms), timeout=5, metadata=md)


@pytest.fixture
def profiling_server(tmp_path: Path):
    """A served controller still in phase Profiling: a trainer has nothing to do until a profiler fills the table."""
    ctl = SearchController(micro_spec(), tmp_path, lease_s=30.0)
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0").start()
    yield srv
    srv.stop()


def held_request(stub, worker_id: str, max_wait_s: float, timeout_s: float = 30.0) -> tuple[pb.WorkResponse, float]:
    request = trainer_request(worker_id)
    request.max_wait_s = max_wait_s
    start = time.monotonic()
    reply = stub.RequestWork(request, timeout=timeout_s, metadata=rpc.auth_metadata(TOKEN))
    return reply, time.monotonic() - start


def test_a_long_poll_returns_as_soon_as_work_appears(profiling_server: ControllerServer) -> None:
    srv = profiling_server
    stub = rpc.pb_grpc.SearchControllerServiceStub(grpc.insecure_channel(srv.address))
    assert srv.controller.state.phase == PHASE_PROFILING
    with futures.ThreadPoolExecutor(3) as pool:
        held = [pool.submit(held_request, stub, f"idle-{i}", 25.0) for i in range(2)]
        time.sleep(1.0)
        assert not any(f.done() for f in held), "an idle trainer's call is held while there is no work"
        appeared = time.monotonic()
        profile_over_grpc(stub, srv.controller)  # the table fills, the controller stratifies and proposes
        answers = [f.result(timeout=20) for f in held]
    for reply, took in answers:
        assert reply.WhichOneof("work") == "candidate", reply
        assert took < 1.0 + (time.monotonic() - appeared) + 0.5 < 10.0, "answered when work appeared, not at the timeout"
    assert len({reply.candidate.candidate_id for reply, _ in answers}) == 2, "each waiter got its own candidate"


def test_a_long_poll_times_out_with_wait_and_an_old_client_gets_wait_at_once(profiling_server: ControllerServer) -> None:
    stub = rpc.pb_grpc.SearchControllerServiceStub(grpc.insecure_channel(profiling_server.address))
    reply, took = held_request(stub, "idle", 0.6)
    from gpunet.controller.service import HOLD_JITTER

    assert reply.WhichOneof("work") == "wait" and 0.6 * HOLD_JITTER - 0.02 <= took < 3.0  # held, jittered
    assert reply.wait.retry_after_s == 0.0, "held for the whole wait: ask again at once"
    old, took = held_request(stub, "old", 0.0)  # a request without the field
    assert old.WhichOneof("work") == "wait" and took < 0.5 and old.wait.retry_after_s > 0
    with pytest.raises(grpc.RpcError) as err:
        held_request(stub, "bad", -1.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_wait_s" in err.value.details()


def test_a_hold_is_capped_to_one_and_a_half_leases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker may ask for a long hold, but the controller must hear from an idle worker inside the roster's
    window of two leases (1.6 s here): with a 0.8 s lease, a 30 s ask is held HOLD_LEASES x 0.8 = 1.2 s at the
    most (the jitter's top, fixed here), and a 0.5 s ask 0.5 s."""
    from gpunet.controller import service
    from gpunet.controller.service import HOLD_LEASES

    monkeypatch.setattr(service.random, "uniform", lambda low, high: high)  # the longest hold the jitter allows
    ctl = SearchController(micro_spec(), tmp_path, lease_s=0.8)
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0").start()
    try:
        stub = rpc.pb_grpc.SearchControllerServiceStub(grpc.insecure_channel(srv.address))
        for asked, held in ((30.0, HOLD_LEASES * 0.8), (0.5, 0.5)):
            reply, took = held_request(stub, "idle", asked)
            assert reply.WhichOneof("work") == "wait"
            assert held - 0.02 <= took < held + 0.3, (asked, took)
    finally:
        srv.stop()


def test_a_worker_loop_long_polls_and_its_stop_ends_the_wait(profiling_server: ControllerServer) -> None:
    stop = threading.Event()
    client = ControllerClient(profiling_server.address, TOKEN, timeout_s=5.0, stop=stop)
    calls = []
    original = client.call

    def counting(method, request, **kwargs):
        calls.append(request.max_wait_s if method == "RequestWork" else None)
        return original(method, request, **kwargs)

    client.call = counting
    done = []
    thread = threading.Thread(target=lambda: done.append(work_loop(client, trainer_request("w"), "candidate", print, stop)))
    thread.start()
    time.sleep(1.5)
    from gpunet.rpc.client import LONG_POLL_S

    assert calls == [LONG_POLL_S], "one held call, not a poll every second"
    started = time.monotonic()
    stop.set()
    thread.join(5)
    assert done == [0] and time.monotonic() - started < 2.0, "SIGTERM's stop ends a held call at once"
    client.close()


def test_group_commit_shares_one_commit_keeps_the_newest_write_and_reports_a_failed_batch(tmp_path: Path) -> None:
    from gpunet.controller.state import FILE_FORMAT

    conn = open_database(tmp_path / "s.sqlite", FILE_FORMAT, error=lambda p, r: ValueError(r))
    commits = GroupCommit(conn)
    put = "INSERT OR REPLACE INTO candidates VALUES (?, ?)"

    def stage(i: int) -> int:
        return commits.stage({("c", i % 50): (put, (f"c{i % 50}", json.dumps({"v": i})))})

    tickets = [stage(i) for i in range(400)]
    assert not commits.done(tickets[0])
    commits.flush(tickets[0])  # an early ticket's flush takes every write staged so far
    assert all(commits.done(t) for t in tickets) and commits.batches == 1
    rows = dict(conn.execute("SELECT id, data FROM candidates").fetchall())
    assert len(rows) == 50 and json.loads(rows["c7"]) == {"v": 357}, "one row per key, its newest version"

    def writer(i: int) -> None:  # concurrent stage + flush from threads: each returns only once committed
        ticket = stage(1000 + i)
        commits.flush(ticket)
        assert commits.done(ticket)

    with futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(200)))
    assert json.loads(dict(conn.execute("SELECT id, data FROM candidates").fetchall())["c49"]) == {"v": 1199}
    bad = commits.stage({"x": ("INSERT INTO no_such_table VALUES (1)", ())})
    with pytest.raises(CommitFailed, match="no_such_table"):
        commits.flush(bad)
    with pytest.raises(CommitFailed):  # still staged: retried by the next flush, which fails again
        commits.flush()


SERVE = """
import sys
sys.path[:0] = [{root!r}, {root!r} + "/tests", {root!r} + "/worker"]
from controller_helpers import fake_profile, micro_spec
from gpunet.controller import ControllerServer, SearchController
ctl = SearchController(micro_spec(budget=200, epochs=1), sys.argv[1], lease_s=30.0)
fake_profile(ctl)
srv = ControllerServer(ctl, {token!r}, "127.0.0.1:0").start()
print(srv.address, flush=True)
sys.stdin.read()
"""


def test_results_acknowledged_before_a_sigkill_are_in_the_reloaded_state(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", SERVE.format(root=str(ROOT), token=TOKEN), str(state_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address, "the controller subprocess started"
        stub = rpc.connect(address, TOKEN)
        accepted: list[str] = []
        lock = threading.Lock()

        def trainer(i: int) -> None:
            for _ in range(2):
                request = trainer_request(f"t{i}")
                request.max_wait_s = 5.0  # proposals come a few at a time
                reply = stub.RequestWork(request, timeout=15)
                if reply.WhichOneof("work") != "candidate":
                    return
                task = reply.candidate
                answer = stub.ReportResult(pb.ResultReport(worker_id=f"t{i}", candidate_id=task.candidate_id,
                                                           lease_id=task.lease_id, top1=0.5, epochs=1), timeout=10)
                if answer.accepted:
                    with lock:
                        accepted.append(task.candidate_id)

        with futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(trainer, range(8)))
        os.kill(proc.pid, signal.SIGKILL)  # right after the last acknowledgement
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(accepted) >= 8, "most trainers had a result accepted"
    saved = ControllerState.load(state_dir)
    lost = [c for c in accepted if saved.candidates[c].state not in FINISHED]
    assert lost == [], f"acknowledged results lost by the crash: {lost}"


def test_the_load_benchmark_loses_no_result(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "worker")]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "controller_load.py"), "--workers", "40", "--procs", "1",
                          "--seconds", "4", "--epochs", "2", "--epoch-seconds", "1", "--algorithm", "random", "--warmup", "0",
                          "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["results_accepted"] > 0 and summary["lost_results"] == 0 and summary["errors"] == {}
    assert {r["rpc"] for r in summary["rpcs"]} >= {"RequestWork", "ReportResult"}
    assert all(k in summary["rpcs"][0] for k in ("p50_ms", "p99_ms", "max_ms"))
    assert summary["cpu_s"]["controller"] > 0 and summary["cpu_s"]["clients"] > 0


def test_the_roster_counts_active_workers_by_kind_as_they_come_and_go() -> None:
    from gpunet.controller.leases import Roster

    roster = Roster(window_s=10)
    roster.saw("a", pb.WORKER_KIND_TRAINER, 0)
    roster.saw("b", pb.WORKER_KIND_PROFILER, 5)
    roster.saw("a", pb.WORKER_KIND_TRAINER, 8)  # heard from again: counted once, from its latest sighting
    assert (roster.active(9), roster.active(9, pb.WORKER_KIND_TRAINER), roster.active(9, pb.WORKER_KIND_PROFILER)) == (2, 1, 1)
    assert (roster.active(15), roster.active(15, pb.WORKER_KIND_PROFILER)) == (1, 0)  # b out of the window
    roster.saw("b", pb.WORKER_KIND_TRAINER, 16)  # back, now training
    assert (roster.active(17.9, pb.WORKER_KIND_TRAINER), roster.active(18, pb.WORKER_KIND_TRAINER)) == (2, 1)
    assert roster.active(26) == 0


def test_a_candidate_row_is_what_asdict_gives_and_shares_nothing_with_the_candidate() -> None:
    import dataclasses

    from gpunet.controller.state import Candidate

    cand = Candidate(id="t0-c0001", tier=0, trial_id=3, vector=[1, 2], latency_ms=0.5, history=[0.1, 0.2],
                     events=["granted"], architecture={"stages": [{"filters": 8}]}, scaling={"target_ms": 1.0},
                     final={"kind": "winner"}, training={"epochs": 2}, top1_test=0.4)
    row = cand.to_dict()
    assert row == dataclasses.asdict(cand)
    row["history"].append(0.9)
    row["architecture"]["stages"][0]["filters"] = 16
    assert cand.history == [0.1, 0.2] and cand.architecture == {"stages": [{"filters": 8}]}
    assert Candidate.from_dict(json.loads(json.dumps(cand.to_dict()))) == cand


def test_held_calls_are_woken_one_per_spacing_and_wakes_asked_for_meanwhile_are_one() -> None:
    import asyncio

    from gpunet.controller.service import WorkWaiters

    async def main() -> tuple[list[float], float]:
        waiters = WorkWaiters(asyncio.get_running_loop(), spacing_s=0.05)
        woken: list[float] = []

        async def held(i: int) -> None:
            if await waiters.wait(pb.WORKER_KIND_TRAINER, 5.0):
                woken.append(time.monotonic())
                waiters.wake_one(pb.WORKER_KIND_TRAINER)  # as a held call that got work does: the next one tries

        tasks = [asyncio.ensure_future(held(i)) for i in range(4)]
        await asyncio.sleep(0)
        start = time.monotonic()
        for _ in range(10):  # a burst of wakes (driver rounds, releases): one wake, then one per spacing
            waiters.wake_each_kind()
        await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
        return woken, start

    woken, start = asyncio.run(main())
    assert len(woken) == 4
    assert woken[0] - start < 0.5  # the first at once (a loop turn; loose for a loaded machine)
    gaps = [b - a for a, b in zip(woken, woken[1:])]
    assert all(g >= 0.045 for g in gaps), gaps  # unpaced, the chain woke them within a millisecond


def test_expired_leases_match_a_walk_of_the_book_and_skip_it_while_none_can_be_due() -> None:
    import random

    from gpunet.controller.leases import CANDIDATE, LeaseBook

    class CountingDict(dict):
        walks = 0

        def values(self):  # noqa: ANN201
            CountingDict.walks += 1
            return super().values()

    rng = random.Random(0)
    numbers = iter(range(10_000))
    book = LeaseBook(30.0, lambda: next(numbers))
    book._by_work = CountingDict()
    now = 0.0
    for step in range(2_000):
        now += rng.uniform(-2.0, 3.0)  # a clock that also goes back (a lowered deadline must still be found)
        op = rng.random()
        held = list(dict.values(book._by_work))
        if op < 0.4 or not held:
            book.grant(CANDIDATE, f"c{rng.randrange(50)}", f"w{rng.randrange(50)}", now)
        elif op < 0.8:
            book.renew(rng.choice(held), now)
        else:
            book.release(rng.choice(held))
        expected = [lease for lease in dict.values(book._by_work) if lease.deadline < now]
        assert book.expired(now) == expected
    CountingDict.walks = 0
    fresh = LeaseBook(30.0, lambda: next(numbers))
    fresh._by_work = CountingDict()
    for i in range(100):
        fresh.grant(CANDIDATE, f"c{i}", f"w{i}", 0.0)
    walks_before = CountingDict.walks
    assert fresh.expired(29.0) == [] and CountingDict.walks == walks_before  # no deadline can have passed: no walk
    assert len(fresh.expired(31.0)) == 100


def test_a_driver_step_inside_the_round_interval_takes_no_view_of_the_tier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller_helpers import fake_profile

    ctl = SearchController(micro_spec(), tmp_path, lease_s=30.0)
    fake_profile(ctl)
    ctl.step()  # stratifies and runs the first searcher round of each tier
    stage = ctl.searching
    assert stage.pools and any(c for c in ctl.state.candidates.values())
    views: list[int] = []
    real_view = stage._tier_view
    monkeypatch.setattr(stage, "_tier_view", lambda tier: views.append(tier) or real_view(tier))
    last = dict(stage._last_round)
    stage.drive(min(last.values()) + stage.round_interval_s / 2)  # every tier inside its interval
    assert views == []  # skipped before the walk of its untold candidates
    assert stage.done() is False and views == []  # below the budget: not done, without a walk either
    ctl.close()
