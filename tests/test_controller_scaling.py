"""Phase Scaling (latency-aware compound scaling) and objective mnas through the controller's RPCs, with the fake
profiler of the controller helpers (every layer 0.01 ms) and trainers that report made-up top-1 at once."""

from __future__ import annotations

import json
import math
from pathlib import Path

from controller_helpers import FAKE_LAYER_MS, fake_profile, micro_doc, trainer_request
from gpunet.arch import Architecture
from gpunet.controller import SearchController
from gpunet.controller.outputs import write_outputs
from gpunet.controller.finalizing import PHASE_FINALIZING
from gpunet.controller.state import PHASE_SCALING, PHASE_SEARCHING, PHASE_SUCCEEDED
from gpunet.objectives import mnas_reward
from gpunet.rpc import pb
from gpunet.spec import load_spec

SCALING = {"targetsMs": [0.125, 0.25, 0.05], "depthMultipliers": [1.0, 2.0], "widthMultipliers": [1.0, 1.5],
           "resolutionMultipliers": [1.0], "candidatesPerTarget": 2}


def spec_of(**sections):
    doc = micro_doc(budget=3, tiers=(0.1,), early_stopping=False)
    for name, value in sections.items():
        doc["spec"].setdefault(name, {}).update(value)
    return load_spec(doc)


def train_all(ctl: SearchController, top1_of) -> list[str]:
    """Lease every queued candidate to a fake trainer and report ``top1_of(assignment)`` at once."""
    ids = []
    for _ in range(50):
        ctl.step()
        work = ctl.request_work(trainer_request("w0"))
        if work.WhichOneof("work") != "candidate":
            if ctl.state.phase not in (PHASE_SEARCHING, PHASE_SCALING) or not any(
                    c.state == "queued" for c in ctl.candidates()):
                if ctl.state.phase != PHASE_SCALING or ctl.profiling.batches:
                    break
            continue
        task = work.candidate
        report = pb.ResultReport(worker_id="w0", candidate_id=task.candidate_id, lease_id=task.lease_id,
                                 top1=top1_of(task), epochs=ctl.spec.training.epochs)
        assert ctl.report_result(report).accepted
        ids.append(task.candidate_id)
    return ids


def profile_scaled_layers(ctl: SearchController) -> int:
    reported = 0
    for _ in range(100):
        ctl.step()
        work = ctl.request_work(pb.WorkRequest(worker_id="p0", kind=pb.WORKER_KIND_PROFILER, device="test-cpu"))
        if work.WhichOneof("work") != "layers":
            break
        task = work.layers
        ms = [pb.LayerMeasurement(layer_key_json=k, latency_ms=FAKE_LAYER_MS, runs=1) for k in task.layer_keys_json]
        assert ctl.report_latencies(pb.LatencyReport(worker_id="p0", batch_id=task.batch_id, lease_id=task.lease_id,
                                                     measurements=ms)).accepted
        reported += len(ms)
    return reported


def layers_top1(task: pb.TrainingAssignment) -> float:
    """A made-up top-1 that grows with depth: 0.5 + 1% per layer."""
    return 0.5 + 0.01 * Architecture.from_dict(json.loads(task.architecture_json)).num_layers


def test_scaling_phase_trains_the_scaled_networks_that_meet_each_target_and_writes_the_family(tmp_path: Path):
    ctl = SearchController(spec_of(scaling=SCALING), tmp_path, round_interval_s=0, results=False)
    try:
        fake_profile(ctl)
        searched = train_all(ctl, layers_top1)
        assert len(searched) == 3 and ctl.state.phase == PHASE_SCALING
        base = max((c for c in ctl.candidates() if c.tier == 0), key=lambda c: (c.top1, [-ord(x) for x in c.id]))
        base_layers = Architecture.from_dict(ctl.space.decode(base.vector).to_dict()).num_layers
        # the scaled versions' new layers (wider filters, more repeats of new shapes) go to the profilers first
        assert ctl.profiling.batches and ctl.request_work(trainer_request("w0")).WhichOneof("work") == "wait"
        assert ctl.status().phase == pb.SEARCH_PHASE_SCALING and ctl.status().candidates.budget == 3 + 3 * 2
        assert profile_scaled_layers(ctl) > 0
        scaled = train_all(ctl, layers_top1)
        ctl.step()
        assert ctl.state.phase in (PHASE_FINALIZING, PHASE_SUCCEEDED)
        members = {c.id: c for c in ctl.candidates() if c.scaling}
        assert sorted(scaled) == sorted(members)
        for c in members.values():  # each meets its target according to the table: 0.01 ms per layer
            layers = Architecture.from_dict(c.architecture).num_layers
            assert math.isclose(c.latency_ms, FAKE_LAYER_MS * layers) and c.latency_ms <= c.scaling["target_ms"]
            assert c.vector == [] and c.scaling["base_candidate_id"] == base.id and c.tier == 1 + SCALING["targetsMs"].index(c.scaling["target_ms"])
        by_target = {t: [c for c in members.values() if c.scaling["target_ms"] == t] for t in SCALING["targetsMs"]}
        assert len(by_target[0.125]) == 2 and len(by_target[0.25]) == 2 and by_target[0.05] == []
        assert all(c.scaling["depth_mult"] == 2.0 for c in by_target[0.25])  # only doubling the depth fills 0.25 ms
        assert {c.scaling["depth_mult"] for c in by_target[0.125]} == {1.0}
    finally:
        ctl.close()
    spec = spec_of(scaling=SCALING)
    hub = write_outputs(spec, tmp_path, measure=False, export=False)
    saved = json.loads((tmp_path / "hub.json").read_text())
    assert saved["family"] == hub["family"] and [f["target_ms"] for f in saved["family"]] == SCALING["targetsMs"]
    for member in saved["family"][:2]:
        cands = by_target[member["target_ms"]]
        best = max(cands, key=lambda c: (mnas_reward(c.top1, c.latency_ms, member["target_ms"]), [-ord(x) for x in c.id]))
        assert member["candidate_id"] == best.id and member["top1"] == round(best.top1, 6)
        assert member["reward"] == round(mnas_reward(best.top1, best.latency_ms, member["target_ms"]), 6)
        assert member["depth_mult"] == best.scaling["depth_mult"] and member["width_mult"] == best.scaling["width_mult"]
        assert member["resolution"] == 28 and member["architecture"] == best.architecture
        assert member["latency_ms_estimated"] == round(best.latency_ms, 6) and member["latency_ms_measured"] is None
        assert "latency_ms_measured" in member and member["params_m"] > 0
    assert saved["family"][2]["candidate_id"] is None  # 0.05 ms: not even the base network fits
    assert saved["family"][1]["top1"] > saved["family"][0]["top1"] > 0  # the deeper member, the higher made-up top-1
    assert saved["tiers"][0]["candidate_id"] == base.id and base_layers < Architecture.from_dict(
        saved["family"][1]["architecture"]).num_layers
    assert (tmp_path / "pareto.png").stat().st_size > 0 and "LACS" in (tmp_path / "hub.md").read_text()
    lines = [json.loads(x) for x in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert {x["id"] for x in lines if x.get("scaling")} == set(members)


def test_an_empty_base_tier_falls_back_to_the_nearest_tier_with_a_winner(tmp_path: Path):
    """A base tier whose pool is empty (e.g. a slower machine measured every network above it) does not leave the
    family empty: the winner of the nearest tier that has one is scaled."""
    doc = micro_doc(budget=2, tiers=(0.001, 0.1), early_stopping=False)  # nothing is as fast as 0.001 ms
    doc["spec"]["scaling"] = {**SCALING, "baseTier": 0}
    ctl = SearchController(load_spec(doc), tmp_path, round_interval_s=0, results=False)
    try:
        fake_profile(ctl)
        searched = train_all(ctl, layers_top1)
        assert searched and all(c.tier == 1 for c in ctl.candidates())
        assert ctl.state.phase == PHASE_SCALING
        profile_scaled_layers(ctl)
        scaled = train_all(ctl, layers_top1)
        winner = max((c for c in ctl.candidates() if c.tier == 1 and not c.scaling), key=lambda c: (c.top1, [-ord(x) for x in c.id]))
        assert scaled and {ctl.state.candidates[cid].scaling["base_candidate_id"] for cid in scaled} == {winner.id}
    finally:
        ctl.close()


def test_mnas_objective_searches_the_whole_space_and_the_hub_is_the_pareto_front(tmp_path: Path):
    spec = spec_of(algorithm={"objective": "mnas", "targetMs": 0.085, "budget": 6}, latency={"tiers": [5.0]})
    ctl = SearchController(spec, tmp_path, round_interval_s=0, results=False)
    try:
        fake_profile(ctl)
        pool = ctl.pools[0]
        assert len(ctl.pools) == 1 and pool["target_ms"] == 0.085
        # no stratification: every distinct sampled network (0.07..0.10 ms), though all lie outside tier 5 ms
        assert len(pool["pool"]) == 16 and min(pool["latency_ms"]) < 0.085 < max(pool["latency_ms"])
        trained = train_all(ctl, lambda task: 0.3 + 0.05 * (task.vector[-1] + task.vector[22]))
        assert len(trained) == 6 and ctl.state.phase in (PHASE_FINALIZING, PHASE_SUCCEEDED)
        cands = [c for c in ctl.candidates() if c.top1 is not None]
    finally:
        ctl.close()
    hub = write_outputs(spec, tmp_path, measure=False, export=False)
    assert hub["objective"] == {"name": "mnas", "target_ms": 0.085, "w": -0.07, "hard": False}
    best = max(cands, key=lambda c: (mnas_reward(c.top1, c.latency_ms, 0.085), [-ord(x) for x in c.id]))
    assert hub["tiers"][0]["candidate_id"] == best.id and hub["tiers"][0]["target_ms"] == 0.085
    front = hub["pareto"]
    assert front and [p["latency_ms_estimated"] for p in front] == sorted(p["latency_ms_estimated"] for p in front)
    assert [p["top1"] for p in front] == sorted(p["top1"] for p in front) and len({p["top1"] for p in front}) == len(front)
    assert "Pareto front" in (tmp_path / "hub.md").read_text() and (tmp_path / "pareto.png").stat().st_size > 0
    for c in cands:  # every candidate is on the front or dominated by a point of it
        assert any(p["latency_ms_estimated"] <= round(c.latency_ms, 6) and p["top1"] >= round(c.top1, 6) for p in front)


def test_a_controller_restarted_in_phase_scaling_plans_the_missing_layers_again_then_keeps_its_queue(tmp_path: Path):
    spec = spec_of(scaling=SCALING)
    ctl = SearchController(spec, tmp_path, round_interval_s=0, results=False)
    fake_profile(ctl)
    train_all(ctl, layers_top1)
    planned = sorted(ctl.profiling.batches)
    assert ctl.state.phase == PHASE_SCALING and planned
    ctl.close()  # killed before any scaled layer was measured: the batches lived in memory only
    ctl = SearchController(spec, tmp_path, round_interval_s=0, results=False)
    try:
        assert ctl.state.phase == PHASE_SCALING and not ctl.profiling.batches
        ctl.step()
        assert sorted(ctl.profiling.batches) == planned
        status = ctl.status().latency_table
        assert status.layers_measured < status.layers_needed  # the operator keeps profilers up in Scaling
        profile_scaled_layers(ctl)
        queued = sorted(c.id for c in ctl.candidates() if c.scaling)
        assert queued == ["s0-c0000", "s0-c0001", "s1-c0000", "s1-c0001"]
    finally:
        ctl.close()
    ctl = SearchController(spec, tmp_path, round_interval_s=0, results=False)
    try:  # restarted with the scaled candidates queued: they are trained, not planned twice
        assert ctl.scaling.planned and sorted(train_all(ctl, layers_top1)) == queued
        ctl.step()
        assert ctl.state.phase in (PHASE_FINALIZING, PHASE_SUCCEEDED)
        assert sorted(c.id for c in ctl.candidates() if c.scaling) == queued
    finally:
        ctl.close()


def test_median_stopping_compares_mnas_rewards_when_the_objective_is_mnas():
    from gpunet.controller.searching import pruner_of, stopping_decision
    from gpunet.controller.state import Candidate, score_of

    spec = spec_of(algorithm={"objective": "mnas", "targetMs": 1.0, "w": -1.0},
                   training={"epochs": 5, "earlyStopping": {"enabled": True, "minEpochs": 1}})
    pruner = pruner_of(spec.training)
    peers = [Candidate(id=f"t0-c{i:04d}", tier=0, trial_id=i, vector=[], latency_ms=2.0, history=[0.6, 0.8] + [0.8] * 3,
                       state="completed") for i in range(3)]
    fast = Candidate(id="t0-c0009", tier=0, trial_id=9, vector=[], latency_ms=0.5, history=[0.5, 0.55])
    # top-1 0.55 < the running average 0.7, but the reward 0.55 x 0.5^-1 = 1.1 beats 0.7 x 2^-1 = 0.35
    assert stopping_decision(pruner, peers + [fast], fast, 2)[0] == pb.PROGRESS_ACTION_STOP
    action, reason = stopping_decision(pruner, peers + [fast], fast, 2, lambda c, t: score_of(spec, c, t))
    assert action == pb.PROGRESS_ACTION_CONTINUE and reason == ""
    slow = Candidate(id="t0-c0010", tier=0, trial_id=10, vector=[], latency_ms=4.0, history=[0.6, 0.65])
    action, reason = stopping_decision(pruner, peers + [slow], slow, 2, lambda c, t: score_of(spec, c, t))
    assert action == pb.PROGRESS_ACTION_STOP and "best 0.1625 < median 0.3500" in reason and "mnas reward" in reason
