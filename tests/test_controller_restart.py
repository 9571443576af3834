"""A controller process killed with SIGKILL mid-search and restarted: nothing lost, nothing trained twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpunet.controller.state import ControllerState
from controller_helpers import fake_profile, micro_spec, write_spec
from gpunet.controller import SearchController
from gpunet.rpc import TOKEN_ENV

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "restart-token"
pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                                reason="dataset-fashion-mnist not installed")


def state(path: Path) -> dict:
    try:
        return ControllerState.load(path).to_dict()
    except FileNotFoundError:
        return {}


def finished(path: Path) -> dict[str, float]:
    return {c["id"]: c["top1"] for c in state(path).get("candidates", []) if c["state"] in ("completed", "stopped")}


def test_controller_killed_and_restarted_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    spec_kwargs = dict(budget=4, epochs=2, train_subset=300, early_stopping=False)
    spec_file = write_spec(tmp_path / "search.yaml", **spec_kwargs)
    state_dir = tmp_path / "state"
    ctl = SearchController(micro_spec(**spec_kwargs), state_dir)  # stage 1 with a fake profiler, then hand over
    fake_profile(ctl)
    ctl.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, **{TOKEN_ENV: TOKEN}, PYTHONPATH=os.pathsep.join([str(ROOT / "worker"), os.environ.get("PYTHONPATH", "")]))
    controller_cmd = [sys.executable, "-m", "gpunet.controller", "--spec", str(spec_file), "--state-dir", str(state_dir),
                      "--host", "127.0.0.1", "--port", str(port), "--lease-seconds", "20", "--exit-when-done", "--linger-seconds", "5", "--no-outputs"]
    log = open(tmp_path / "controller.log", "w")
    controller = subprocess.Popen(controller_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    trainers = [subprocess.Popen([sys.executable, "-m", "gpunet_worker", "trainer", "--controller", f"127.0.0.1:{port}",
                                  "--worker-id", f"t{i}", "--threads", "1"], env=env,
                                 stdout=open(tmp_path / f"t{i}.log", "w"), stderr=subprocess.STDOUT) for i in range(2)]
    try:
        deadline = time.time() + 120
        while not finished(state_dir) and time.time() < deadline:
            time.sleep(0.05)
        before = finished(state_dir)
        assert before, "a first result before the kill"
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        time.sleep(1.0)  # workers see UNAVAILABLE and back off
        controller = subprocess.Popen(controller_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        assert controller.wait(150) == 0, (tmp_path / "controller.log").read_text()[-3000:]
        assert [t.wait(60) for t in trainers] == [0, 0]
    finally:
        for p in [controller, *trainers]:
            if p.poll() is None:
                p.kill()
    final = state(state_dir)
    assert final["phase"] == "Succeeded"
    cands = final["candidates"]
    assert len(cands) == 4 and len({c["id"] for c in cands}) == 4 and len({tuple(c["vector"]) for c in cands}) == 4
    assert all(c["state"] == "completed" and c["told"] for c in cands)
    after = {c["id"]: c["top1"] for c in cands}
    assert all(after[cid] == top1 for cid, top1 in before.items()), "results from before the kill are kept"
    for c in cands:  # each candidate was trained to completion exactly once
        assert sum(" completed by " in e for e in c["events"]) == 1
    retried = sum("retrying" in (tmp_path / f"t{i}.log").read_text() for i in range(2))
    assert retried >= 1, "the workers reconnected with backoff"
