"""`gpunet run`: a full local search with real profilers and trainers, interrupted by Ctrl-C and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpunet.controller.state import ControllerState
from controller_helpers import write_spec

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                                reason="dataset-fashion-mnist not installed")


def finished(out: Path) -> dict[str, float]:
    try:
        data = ControllerState.load(out).to_dict()
    except FileNotFoundError:
        return {}
    return {c["id"]: c["top1"] for c in data["candidates"] if c["state"] in ("completed", "stopped")}


def gpunet_run(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpunet", "run", str(spec), "--out", str(out), "--workers", "2", "--profilers", "1",
            "--profiler-runs", "3", "--lease-seconds", "10", "--no-display", *extra]


def test_full_local_run_survives_ctrl_c_and_resumes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "search.yaml", name="local-run", budget=2, epochs=2, train_subset=400, val_subset=200,
                      tiers=(0.3, 1.0), tolerance=0.9, algorithm="lamcts-bo")
    # Real onnxruntime latencies of the micro space are 0.15-0.35 ms on these machines, more under load; both tiers
    # (0.03-0.57 ms and 0.1-1.9 ms) hold them whatever the load.
    out = tmp_path / "out"
    first = subprocess.Popen(gpunet_run(spec, out), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 150
    while not finished(out) and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    before = finished(out)
    assert before, "a first candidate finished before Ctrl-C"
    first.send_signal(signal.SIGINT)
    log, _ = first.communicate(timeout=60)
    assert first.returncode == 130, log
    assert "rerun with --out" in log and "interrupted" in log
    assert not list((out / "logs").glob("*.log")) or all(p.stat().st_size > 0 for p in (out / "logs").glob("*.log"))

    second = subprocess.run(gpunet_run(spec, out, "--json"), cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert second.returncode == 0, second.stderr[-3000:]
    hub = json.loads(second.stdout)
    assert [t["target_ms"] for t in hub["tiers"]] == [0.3, 1.0]
    for tier in hub["tiers"]:
        if tier["candidate_id"] is None:
            continue
        assert set(tier) >= {"target_ms", "candidate_id", "vector", "top1", "latency_ms_estimated", "latency_ms_measured",
                             "params_m", "gflops"}
        assert len(tier["vector"]) == 41 and 0.0 <= tier["top1"] <= 1.0
        assert tier["latency_ms_estimated"] > 0 and tier["latency_ms_measured"] > 0 and tier["params_m"] > 0 and tier["gflops"] > 0
        onnx_path = out / tier["onnx"]
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"input": np.zeros((1, 1, 28, 28), dtype=np.float32)})[0]
        assert logits.shape == (1, 10)
    assert any(t["candidate_id"] for t in hub["tiers"])
    assert json.loads((out / "hub.json").read_text())["tiers"] == hub["tiers"]
    lines = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)) == 4  # 2 per tier, none duplicated by the interruption
    assert all({c["id"]: c["top1"] for c in lines}[cid] == top1 for cid, top1 in before.items())
    assert (out / "pareto.png").stat().st_size > 1000 and "| tier (ms) |" in (out / "hub.md").read_text()
    assert (out / "latency.sqlite").exists() and (out / "state.sqlite").exists() and (out / "state.json").exists()

    # A third run of a finished search trains nothing and rewrites the outputs.
    third = subprocess.run(gpunet_run(spec, out), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "Succeeded" in third.stdout
    assert len((out / "candidates.jsonl").read_text().splitlines()) == 4


def test_live_display_renders_phase_table_fill_states_tiers_and_eta() -> None:
    from rich.console import Console

    from gpunet.controller.local import eta_seconds, render_status, status_line
    from gpunet.rpc import pb

    status = pb.SearchStatus(phase=pb.SEARCH_PHASE_SEARCHING, search_name="demo",
                             latency_table=pb.LatencyTableProgress(layers_needed=100, layers_measured=100),
                             candidates=pb.CandidateCounts(queued=1, running=2, completed=3, stopped=1, total=7, budget=12),
                             tiers=[pb.TierStatus(index=0, target_ms=0.2, pool_size=50, evaluated=4, best_candidate_id="t0-c0002",
                                                  best_top1=0.853, best_latency_ms=0.21)])
    console = Console(record=True, width=140)
    console.print(render_status(status, started=time.time() - 100))
    text = console.export_text()
    for words in ("Searching", "100/100 layers", "2 running", "3 completed", "tier 0.2 ms", "85.30%", "ETA"):
        assert words in text
    assert eta_seconds(status, time.time() - 100, time.time()) == pytest.approx(100 / 4 * 8, rel=0.05)
    assert "best 0.2ms:85.3%" in status_line(status, time.time())
    assert "DEGRADED" not in status_line(status, time.time())
    status.degraded.CopyFrom(pb.Degraded(reason="OSError", message="state.sqlite: OSError: No space left", errors=2))
    console = Console(record=True, width=140)
    console.print(render_status(status, started=time.time() - 100))
    assert "No space left" in console.export_text()
    assert "DEGRADED: state.sqlite: OSError: No space left" in status_line(status, time.time())


def test_local_run_refuses_to_start_without_the_installed_worker_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from controller_helpers import micro_spec
    from gpunet.controller.local import LocalRun
    from gpunet.errors import GpunetError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gpunet_worker" else real(name, *a))
    with pytest.raises(GpunetError, match=r"gpunet_worker: not importable by .*; expected the gpunet-nas distribution installed"):
        LocalRun(micro_spec(), tmp_path / "out")
    assert not (tmp_path / "out" / "state.sqlite").exists()


def test_local_run_with_scaling_trains_and_measures_the_lacs_family(tmp_path: Path) -> None:
    import yaml

    spec = write_spec(tmp_path / "search.yaml", name="local-lacs", budget=1, epochs=1, train_subset=200, val_subset=100,
                      tiers=(0.3,), tolerance=0.9)
    doc = yaml.safe_load(spec.read_text())
    doc["spec"]["scaling"] = {"targetsMs": [5.0], "depthMultipliers": [1.0, 2.0], "widthMultipliers": [1.0, 1.5],
                              "resolutionMultipliers": [1.0], "candidatesPerTarget": 1}
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"
    run = subprocess.run(gpunet_run(spec, out, "--json"), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    hub = json.loads(run.stdout)
    base, (member,) = hub["tiers"][0], hub["family"]
    assert base["candidate_id"] and member["candidate_id"] == "s0-c0000" and member["base_candidate_id"] == base["candidate_id"]
    # 5 ms affords the deepest and widest scaled version of the base network (real latencies are well under 1 ms)
    assert (member["depth_mult"], member["width_mult"], member["resolution"]) == (2.0, 1.5, 28)
    assert member["latency_ms_estimated"] > base["latency_ms_estimated"] and member["latency_ms_estimated"] <= 5.0
    assert member["latency_ms_measured"] > 0 and member["latency_measured_on"]["backend"] == "onnxruntime"
    assert 0.0 <= member["top1"] <= 1.0 and member["params_m"] > base["params_m"] and member["weights"] and member["onnx"]
    assert member["vector"] == [] and member["architecture"]["stages"][2]["layers"] == 2 * base["architecture"]["stages"][2]["layers"]
    assert json.loads((out / "hub.json").read_text())["family"] == hub["family"] and "LACS" in (out / "hub.md").read_text()
    import torch

    import gpunet.hub

    model = gpunet.hub.load(out, 5.0, family=True)  # the member's trained weights, by its target
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - member["params_m"]) < 1e-3
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_local_run_trains_stage2_and_a_baseline_and_writes_table3(tmp_path: Path) -> None:
    """Real trainers and a real profiler: the tier winner trained again (stage 2), a timm baseline trained and
    measured end to end, both tested on the test split, the hub written with them."""
    import yaml

    spec = write_spec(tmp_path / "search.yaml", name="local-stage2", budget=1, epochs=1, train_subset=200,
                      val_subset=100, tiers=(0.3,), tolerance=0.9)
    doc = yaml.safe_load(spec.read_text())
    doc["spec"]["training"]["final"] = {"epochs": 2}
    doc["spec"]["baselines"] = [{"model": "mobilenetv3_small_050"}]
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"
    run = subprocess.run(gpunet_run(spec, out, "--json"), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    hub = json.loads(run.stdout)
    tier, (base,) = hub["tiers"][0], hub["baselines"]
    assert tier["final_candidate_id"] == f"f0-{tier['candidate_id']}" and tier["final_epochs"] == 2
    assert 0.0 <= tier["top1_test"] <= 1.0 and tier["weights"] and tier["latency_ms_measured"] > 0
    assert base["model"] == "mobilenetv3_small_050" and base["epochs"] == 2 and 0.0 <= base["top1_test"] <= 1.0
    assert base["latency_ms_measured"] > 0 and base["latency_measured_on"]["backend"] == "onnxruntime"
    assert tier["vs_baselines"]["equal_accuracy"]["baseline"] == "mobilenetv3_small_050"
    assert "Table 3 layout" in (out / "hub.md").read_text() and (out / "pareto.png").stat().st_size > 0
