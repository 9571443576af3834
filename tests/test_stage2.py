"""Stage 2 in phase Finalizing: the tier winners trained again and the baselines trained, under leases, surviving a
trainer kill; the baselines measured end to end; ``hub.json``/``hub.md`` as Table 3; the Pareto front of
``pareto.png``. Controller-level tests with scripted RPCs (no real training), plus one real training of a baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from controller_helpers import fake_profile, micro_doc, trainer_request
from gpunet.controller import SearchController
from gpunet.controller.comparison import compare_to_baselines
from gpunet.controller.outputs import pareto_figure
from gpunet.controller.state import COMPLETED, STOPPED, Candidate
from gpunet.objectives import pareto_front
from gpunet.rpc import pb
from gpunet.spec import load_spec

DEVICE = "test-cpu"
BASELINE = "mobilenetv3_small_050"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def stage2_spec(final_epochs: int = 3, top_k: int = 1, init: str = "scratch", baselines=({"model": BASELINE},)):
    doc = micro_doc(budget=3, epochs=2)
    doc["spec"]["training"]["final"] = {"epochs": final_epochs, "topK": top_k, "init": init, "recipe": {"lr": 0.002}}
    doc["spec"]["baselines"] = [dict(b) for b in baselines]
    return load_spec(doc)


def touch(path: str) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"not a real checkpoint")
    return path


def searched(tmp_path: Path, clock: Clock, spec) -> SearchController:
    """A micro search whose candidates all got a result (scripted), now in phase Finalizing."""
    ctl = SearchController(spec, tmp_path, lease_s=10.0, clock=clock, round_interval_s=0, results=True,
                           finalize_timeout_s=600.0)
    fake_profile(ctl, device=DEVICE)
    for i in range(30):
        ctl.step()
        if ctl.state.phase == "Finalizing":
            break
        answer = ctl.request_work(trainer_request(f"w{i}"))
        if answer.WhichOneof("work") == "candidate":
            task = answer.candidate
            assert ctl.report_result(pb.ResultReport(
                worker_id=f"w{i}", candidate_id=task.candidate_id, lease_id=task.lease_id, top1=0.5 + i / 100,
                epochs=2, checkpoint_path=touch(task.checkpoint_path))).accepted
    assert ctl.state.phase == "Finalizing"
    return ctl


def epoch(ctl: SearchController, task: pb.TrainingAssignment, worker: str, e: int, top1: float) -> pb.ProgressResponse:
    return ctl.report_progress(pb.ProgressReport(worker_id=worker, candidate_id=task.candidate_id, lease_id=task.lease_id,
                                                 epoch=e, top1=top1, checkpoint_path=touch(task.checkpoint_path)))


def test_stage2_trains_winner_and_baseline_under_leases_and_survives_a_trainer_kill(tmp_path: Path) -> None:
    clock = Clock()
    ctl = searched(tmp_path, clock, stage2_spec())
    searched_ids = {c.id for c in ctl.candidates() if not c.final}
    best = max((c for c in ctl.candidates() if not c.final), key=lambda c: (c.top1, c.id))

    # Profilers wait while stage 2 trains (no trainer beside a measurement).
    assert ctl.request_work(pb.WorkRequest(worker_id="p1", kind=pb.WORKER_KIND_PROFILER, device=DEVICE)).WhichOneof("work") == "wait"

    tasks = {}
    for w in ("ta", "tb"):
        task = ctl.request_work(trainer_request(w)).candidate
        tasks[task.candidate_id] = (w, task)
    assert set(tasks) == {f"f0-{best.id}", f"b0-{BASELINE}"}
    assert ctl.request_work(trainer_request("tc")).WhichOneof("work") == "wait", "stage 2 is running: wait, not done"
    w_win, win = tasks[f"f0-{best.id}"]
    w_base, base = tasks[f"b0-{BASELINE}"]
    for task in (win, base):
        training = json.loads(task.training_json)
        assert task.evaluate_test and training["epochs"] == 3 and training["recipe"]["lr"] == 0.002
        assert training["earlyStopping"]["enabled"] is False and task.start_epoch == 0
    assert json.loads(win.architecture_json) == ctl.space.decode(best.vector).to_dict()
    assert json.loads(base.architecture_json) == {"timm": BASELINE, "resolution": 28, "in_chans": 1, "num_classes": 10,
                                                  "dropout": 0.0, "drop_path_rate": 0.0}
    status = ctl.status()
    assert (status.final_training.running, status.final_training.total) == (2, 2)

    # Epochs beyond the search's 2 are accepted for stage 2, and a poor epoch is never early-stopped.
    for e in (1, 2):
        assert epoch(ctl, win, w_win, e, 0.6 + e / 100).action == pb.PROGRESS_ACTION_CONTINUE
    assert epoch(ctl, base, w_base, 1, 0.01).action == pb.PROGRESS_ACTION_CONTINUE
    checkpoint = ctl.state.candidates[win.candidate_id].checkpoint

    # The winner's trainer is killed: its lease expires and the next trainer resumes from epoch 2's checkpoint.
    clock.now += 5.0
    epoch(ctl, base, w_base, 2, 0.55)  # the baseline's trainer keeps its lease alive
    clock.now += 6.0
    assert ctl.expire_leases() == 1
    cand = ctl.state.candidates[win.candidate_id]
    assert cand.state == "queued" and cand.lease_expiries == 1
    again = ctl.request_work(trainer_request("td")).candidate
    assert again.candidate_id == win.candidate_id and again.resume_checkpoint == checkpoint and again.start_epoch == 2
    assert epoch(ctl, again, "td", 3, 0.7).action == pb.PROGRESS_ACTION_CONTINUE
    assert ctl.report_result(pb.ResultReport(worker_id="td", candidate_id=again.candidate_id, lease_id=again.lease_id,
                                             top1=0.7, epochs=3, checkpoint_path=again.checkpoint_path,
                                             top1_test=0.68)).accepted
    epoch(ctl, base, w_base, 3, 0.58)
    assert ctl.report_result(pb.ResultReport(worker_id=w_base, candidate_id=base.candidate_id, lease_id=base.lease_id,
                                             top1=0.58, epochs=3, checkpoint_path=base.checkpoint_path,
                                             top1_test=0.57)).accepted
    ctl.step()
    assert ctl.status().final_training.completed == 2
    assert ctl.request_work(trainer_request("te")).WhichOneof("work") == "done"

    # Then the profiler measures the winner and the baseline, the baseline as a timm network.
    measured = {}
    for _ in range(4):
        answer = ctl.request_work(pb.WorkRequest(worker_id="p1", kind=pb.WORKER_KIND_PROFILER, device=DEVICE))
        if answer.WhichOneof("work") != "network":
            break
        task = answer.network
        kind = task.WhichOneof("network")
        measured[task.measurement_id] = kind
        ms = 0.09 if kind == "timm_network_json" else 0.06
        assert ctl.report_latencies(pb.LatencyReport(worker_id="p1", batch_id=task.measurement_id, lease_id=task.lease_id,
                                                     network=pb.NetworkMeasurement(latency_ms=ms, spread_ms=0.001, runs=10,
                                                                                   backend_version="ort", device_name=DEVICE))).accepted
    assert measured == {f"tier-0-{best.id}": "architecture_json", f"baseline-b0-{BASELINE}": "timm_network_json"}
    ctl.step()
    assert ctl.state.phase == "Succeeded"
    assert searched_ids < {c.id for c in ctl.candidates()}

    hub = json.loads((tmp_path / "hub.json").read_text())
    tier = hub["tiers"][0]
    assert tier["candidate_id"] == best.id and tier["final_candidate_id"] == f"f0-{best.id}"
    assert (tier["top1"], tier["top1_search"], tier["top1_test"], tier["final_epochs"]) == \
        (pytest.approx(0.7), pytest.approx(best.top1), pytest.approx(0.68), 3)
    assert tier["latency_ms_measured"] == pytest.approx(0.06)
    [b] = hub["baselines"]
    assert b["model"] == BASELINE and b["top1_test"] == pytest.approx(0.57) and b["latency_ms_measured"] == pytest.approx(0.09)
    assert b["params_m"] == pytest.approx(0.578, abs=0.01) and b["gflops"] > 0 and b["latency_measured_on"]["device"] == DEVICE
    vs = tier["vs_baselines"]
    assert vs["accuracy"] == "top1_test" and vs["equal_accuracy"]["speedup"] == pytest.approx(1.5)
    assert vs["equal_latency"]["accuracy_gain"] == pytest.approx(11.0)
    md = (tmp_path / "hub.md").read_text()
    assert "Table 3 layout" in md and "speedup at equal accuracy 1.50x over mobilenetv3_small_050" in md
    assert "accuracy gain at equal latency +11.00 points" in md and f"| {BASELINE} (28x28, 1 ch) | 57.00 | 0.0900 |" in md
    from rich.console import Console

    from gpunet.cli.results_cmd import hub_view

    console = Console(record=True, width=240)
    for part in hub_view(hub):
        console.print(part)
    text = console.export_text()
    assert f"baseline {BASELINE}" in text and "57.00" in text and "68.00" in text and f"f0-{best.id}" in text
    lines = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert {line["id"]: line.get("top1_test") for line in lines if line.get("final")} == \
        {f"f0-{best.id}": pytest.approx(0.68), f"b0-{BASELINE}": pytest.approx(0.57)}


def test_stage2_plan_survives_a_controller_restart_and_resumes_from_the_search_checkpoint(tmp_path: Path) -> None:
    clock = Clock()
    spec = stage2_spec(final_epochs=2, top_k=2, init="checkpoint")
    ctl = searched(tmp_path, clock, spec)
    ctl.step()
    planned = sorted(c.id for c in ctl.candidates() if c.final)
    assert len(planned) == 3, "the top 2 of the tier and the baseline"
    baseline = ctl.state.candidates[f"b0-{BASELINE}"]
    assert baseline.training["epochs"] == 4 and baseline.epoch == 0, "the winners' whole budget, from scratch"
    ctl.close()
    again = SearchController(spec, tmp_path, lease_s=10.0, clock=clock, round_interval_s=0, results=True)
    again.step()
    assert sorted(c.id for c in again.candidates() if c.final) == planned, "planned once"
    task = again.request_work(trainer_request("t1")).candidate
    if task.candidate_id.startswith("b0-"):
        task = again.request_work(trainer_request("t2")).candidate
    assert task.start_epoch == 2 and task.resume_checkpoint.endswith("search.pt")
    assert Path(task.resume_checkpoint).read_bytes() == b"not a real checkpoint", "the search checkpoint, copied"
    assert json.loads(task.training_json)["epochs"] == 4, "2 search epochs + 2 of stage 2"
    again.close()


def test_search_without_stage2_or_baselines_has_no_stage2_step(tmp_path: Path) -> None:
    ctl = searched(tmp_path, Clock(), stage2_spec(final_epochs=0, baselines=()))
    ctl.step()
    assert not any(c.final for c in ctl.candidates())
    assert ctl.request_work(trainer_request("t")).WhichOneof("work") == "done"
    ctl.close()


def test_comparison_picks_the_nearest_baselines() -> None:
    model = {"top1": 0.80, "top1_test": 0.80, "latency_ms_measured": 1.0}
    bases = [{"model": "slow-accurate", "top1_test": 0.81, "latency_ms_measured": 2.0},
             {"model": "fast-poor", "top1_test": 0.70, "latency_ms_measured": 1.1},
             {"model": "unmeasured", "top1_test": 0.80, "latency_ms_measured": None}]
    vs = compare_to_baselines(model, bases)
    assert vs["equal_accuracy"]["baseline"] == "slow-accurate" and vs["equal_accuracy"]["speedup"] == pytest.approx(2.0)
    assert vs["equal_latency"]["baseline"] == "fast-poor" and vs["equal_latency"]["accuracy_gain"] == pytest.approx(10.0)
    assert compare_to_baselines({**model, "latency_ms_measured": None}, bases) is None


def test_pareto_figure_draws_the_front_of_every_candidate_and_marks_hub_models_and_baselines() -> None:
    spec = load_spec(micro_doc(tiers=(0.1, 0.2)))
    points = [(0, 0.09, 0.60), (0, 0.10, 0.70), (0, 0.11, 0.65), (1, 0.19, 0.72), (1, 0.21, 0.80), (1, 0.22, 0.75)]
    cands = [Candidate(id=f"t{t}-c{i:04d}", tier=t, trial_id=i, vector=[], latency_ms=ms, top1=top1,
                       state=STOPPED if i == 2 else COMPLETED) for i, (t, ms, top1) in enumerate(points)]
    cands.append(Candidate(id="b0-x", tier=-1, trial_id=0, vector=[], latency_ms=math.nan, top1=0.9, state=COMPLETED,
                           final={"kind": "baseline", "model": "x", "index": 0}))
    hub = {"tiers": [{"candidate_id": "t0-c0001", "top1": 0.71, "latency_ms_estimated": 0.10, "latency_ms_measured": 0.08},
                     {"candidate_id": "t1-c0004", "top1": 0.81, "latency_ms_estimated": 0.21, "latency_ms_measured": None}],
           "baselines": [{"model": "x", "top1": 0.66, "latency_ms_measured": 0.15}]}
    fig = pareto_figure(cands, spec, hub)
    ax = fig.axes[0]
    [front] = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    expected = pareto_front([(ms, top1) for _, ms, top1 in points])
    assert list(front.get_xdata()) == [points[i][1] for i in expected] == [0.09, 0.10, 0.19, 0.21]
    assert list(front.get_ydata()) == pytest.approx([100 * points[i][2] for i in expected])
    marks = {c.get_label(): [v for xy in c.get_offsets().tolist() for v in xy] for c in ax.collections
             if c.get_label() in ("hub models", "baselines")}
    assert marks["hub models"] == pytest.approx([0.08, 71.0, 0.21, 81.0]), "measured latency where there is one"
    assert marks["baselines"] == pytest.approx([0.15, 66.0])
    scattered = sum(len(c.get_offsets()) for c in ax.collections if str(c.get_label()).startswith("tier "))
    assert scattered == len(points), "every searched candidate, no stage-2 run or baseline among them"


def test_baseline_trains_and_is_tested_from_its_checkpoint(tmp_path: Path) -> None:
    """A real (tiny) training of a timm baseline through the trainer's path: built from its JSON, trained, tested."""
    from gpunet.baselines import baseline_network, network_from_dict
    from gpunet.train import test_top1, train_candidate

    spec = stage2_spec(final_epochs=1)
    net = network_from_dict(baseline_network(spec.baselines[0], spec.space()).to_dict())
    training = spec.training.stage2()
    from dataclasses import replace

    training = replace(training, dataset=replace(training.dataset, train_subset=100, val_subset=100))
    outcome = train_candidate(net, training, tmp_path / "b.pt")
    assert outcome.status == "completed" and outcome.epochs == 1
    top1 = test_top1(outcome.checkpoint_path, training)
    assert 0.0 <= top1 <= 1.0


def test_an_unknown_baseline_fails_the_controller_at_start(tmp_path: Path) -> None:
    from gpunet.baselines import BaselineError

    with pytest.raises(BaselineError, match=r"spec.baselines\[0\].model: got 'not_a_timm_model'"):
        SearchController(stage2_spec(baselines=({"model": "not_a_timm_model"},)), tmp_path)
