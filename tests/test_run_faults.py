"""`gpunet run` under faults: dead workers, a second owner of the state directory, a killed run, workers that
cannot start (issue 13 items 4-6)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller_helpers import fake_profile, micro_spec, trainer_request
from gpunet.controller.local import LocalRun, WorkerProcess


def dead_process(signal_name: str = "SIGKILL") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", f"import os, signal; os.kill(os.getpid(), signal.{signal_name})"])
    proc.wait()
    return proc


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A LocalRun whose worker processes are stand-ins: spawning records the worker id and starts a sleeper."""
    local = LocalRun(micro_spec(), tmp_path / "out", workers=1, profilers=0)
    local.spawned = []

    def spawn(role: str, index: int) -> WorkerProcess:
        local.spawned.append(f"local-{role}-{index}")
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        return WorkerProcess(role, f"local-{role}-{index}", proc, open(tmp_path / f"{role}-{index}.log", "a"))

    monkeypatch.setattr(local, "_spawn", spawn)
    yield local
    local.close()
    local.controller.close()


def test_a_dead_trainers_lease_is_a_failed_attempt_and_never_goes_to_its_restarted_process(run: LocalRun) -> None:
    ctl = run.controller
    fake_profile(ctl)
    assert ctl.state.phase == "Searching"
    first = ctl.request_work(trainer_request("local-trainer-0")).candidate  # what the worker process took
    run.procs = [WorkerProcess("trainer", "local-trainer-0", dead_process(), open(run.out / "t.log", "a"))]
    run.supervise()
    assert run.spawned == ["local-trainer-0"], "the dead process was restarted"
    cand = ctl.state.candidates[first.candidate_id]
    assert cand.failures == 1 and cand.state == "queued" and "SIGKILL" in cand.error
    again = ctl.request_work(trainer_request("local-trainer-0")).candidate
    assert again.lease_id != first.lease_id, "the restarted process got a new lease, not its predecessor's"
    # The second death of the same candidate's trainer (maxRetries: 1) fails the candidate with its error.
    run.procs[0].proc.kill()
    run.procs[0].proc.wait()
    run.supervise()
    cand = ctl.state.candidates[again.candidate_id]
    assert cand.state == "failed" and "local-trainer-0 died" in cand.error
    assert ctl.leases.held_by("local-trainer-0") is None


def test_a_second_owner_of_the_state_directory_is_refused_and_the_first_goes_on(run: LocalRun) -> None:
    from gpunet.controller.lock import StateDirLockedError

    before = sorted(p.name for p in run.out.iterdir())
    with pytest.raises(StateDirLockedError, match=rf"in use by pid {os.getpid()} .*choose another --out"):
        LocalRun(micro_spec(), run.out)
    assert sorted(p.name for p in run.out.iterdir()) == before
    fake_profile(run.controller)  # the first run's controller is untouched and works on
    assert run.controller.state.phase == "Searching"


SPEC = "search.yaml"


def test_second_gpunet_run_and_controller_exit_at_once_and_write_nothing(tmp_path: Path) -> None:
    from controller_helpers import write_spec
    from gpunet.controller.lock import StateDirLock
    from gpunet.rpc import TOKEN_ENV

    spec = write_spec(tmp_path / SPEC)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        run = subprocess.run([sys.executable, "-m", "gpunet", "run", str(spec), "--out", str(out), "--no-display"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and f"in use by pid {holder.pid}" in run.stderr, run.stderr
        env = dict(os.environ, **{TOKEN_ENV: "t"})
        ctl = subprocess.run([sys.executable, "-m", "gpunet.controller", "--spec", str(spec), "--state-dir", str(out),
                              "--port", "0"], capture_output=True, text=True, timeout=120, env=env)
        assert ctl.returncode == 3 and f"in use by pid {holder.pid}" in ctl.stderr, ctl.stderr
        assert sorted(p.name for p in out.iterdir()) == ["owner.lock"], "the second owners wrote nothing"
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock of a killed owner: the next one gets it at once.
    with StateDirLock(out):
        pass


HOLD_LOCK = """
import sys, time
from gpunet.controller.lock import StateDirLock
StateDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        kids |= {int(k) for k in task.read_text().split()}
    return kids


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_sigkilled_gpunet_run(tmp_path: Path) -> None:
    from controller_helpers import write_spec

    spec = write_spec(tmp_path / SPEC)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "gpunet", "run", str(spec), "--out", str(out), "--no-display",
                            "--workers", "1", "--profilers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        workers: set[int] = set()
        while time.time() < deadline and len(workers) < 2:
            workers = {k for k in children(run.pid) if "gpunet_worker" in Path(f"/proc/{k}/cmdline").read_text()}
            time.sleep(0.2)
        assert len(workers) == 2, "a profiler and a trainer were started"
        time.sleep(3)  # let them get past start-up
        run.kill()
        run.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), "every worker died with its gpunet run"
    finally:
        run.kill()


def test_a_worker_that_cannot_start_stops_the_run_with_its_reason(run: LocalRun) -> None:
    from gpunet.controller.errors import WorkerCannotStartError
    from gpunet.errors import EXIT_CANNOT_START

    log = run.out / "logs" / "local-profiler-0.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("starting\ngpunet_worker: cannot start: torch: a CUDA GPU is missing\n")
    proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({EXIT_CANNOT_START})"])
    proc.wait()
    run.procs = [WorkerProcess("profiler", "local-profiler-0", proc, open(log, "a"))]
    with pytest.raises(WorkerCannotStartError, match=r"profiler local-profiler-0: .*torch: a CUDA GPU is missing"):
        run.supervise()
    assert run.spawned == [], "a worker that cannot start is not restarted"


def test_gpunet_run_with_a_backend_that_cannot_start_stops_within_seconds(tmp_path: Path) -> None:
    import torch
    import yaml

    from controller_helpers import micro_doc

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here: the cuda backend starts")
    doc = micro_doc()
    doc["spec"]["latency"].update(backend="torch", device="cuda")  # valid when parsed; no GPU is a runtime fault
    spec = tmp_path / SPEC
    spec.write_text(yaml.safe_dump(doc))
    started = time.time()
    run = subprocess.run([sys.executable, "-m", "gpunet", "run", str(spec), "--out", str(tmp_path / "out"), "--no-display",
                          "--workers", "1", "--profilers", "1"], capture_output=True, text=True, timeout=180)
    took = time.time() - started
    assert run.returncode == 1, run.stderr[-2000:]
    assert "profiler local-profiler-0" in run.stderr and "a CUDA" in run.stderr, run.stderr[-2000:]
    assert took < 60, f"stopped after {took:.0f} s"
