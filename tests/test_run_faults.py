"""`gpunet run` under faults: dead workers, a second owner of the state directory, a killed run, workers that
cannot start (issue 13 items 4-6)."""

from __future__ import annotations

import subprocess
import sys
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
    local.controller.round_interval_s = 0
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
