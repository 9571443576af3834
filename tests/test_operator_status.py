"""NASSearch.status from the controller's SearchStatus (bounded size), pool scaling, and which spec changes are
accepted live — pure functions, no server."""

from __future__ import annotations

import json
import time

import pytest

from gpunet.rpc import pb
from gpunet_operator.scaling import Scale, desired_scale
from gpunet_operator.spec import InvalidSpec, validate, with_defaults
from gpunet_operator.status import compact_candidates, mirror, set_condition

MIB = 1024 * 1024
BUDGET = 256 * 1024
STATES = ("completed", "stopped", "failed", "queued")


def big_search(n: int) -> pb.SearchStatus:
    """A controller reply for a search with ``n`` candidates over 3 tiers, 16 of them running."""
    records = [
        pb.CandidateRecord(id=f"t{i % 3}-c{i:05d}", tier_index=i % 3, state="running" if i % 300 == 7 else STATES[i % 4],
                           top1=0.5 + (i % 400) / 1000, epochs=1 + i % 150, latency_ms=0.4 + (i % 3) * 0.3,
                           attempts=1 + i % 2, preemptions=i % 2, worker_id=f"gpunet-imagenet-trainer-7d9c-{i % 64:05d}")
        for i in range(n)
    ]
    tiers = [pb.TierStatus(index=t, target_ms=0.5 + 0.3 * t, evaluated=n // 3, best_candidate_id=f"t{t}-c00001",
                           best_top1=0.7 + t / 100, best_latency_ms=0.45 + 0.3 * t, best_vector=list(range(41)))
             for t in range(3)]
    return pb.SearchStatus(phase=pb.SEARCH_PHASE_SEARCHING, candidates=pb.CandidateCounts(running=16, total=n, budget=n + 100),
                           latency_table=pb.LatencyTableProgress(layers_needed=900, layers_measured=900),
                           preemptions=12, tiers=tiers, records=records)


def test_status_of_5000_candidates_keeps_the_object_below_1_mib() -> None:
    reply = big_search(5000)
    assert len(reply.SerializeToString()) > 400_000  # the controller's reply itself is large
    start = time.perf_counter()
    status = mirror(reply, [0.5, 0.8, 1.1], conditions=[], budget_bytes=BUDGET, generation=4)
    elapsed = time.perf_counter() - start
    obj = {"apiVersion": "nas.gpunet.dev/v1alpha1", "kind": "NASSearch",
           "metadata": {"name": "gpunet-imagenet", "namespace": "research", "generation": 4}, "spec": {}, "status": status}
    size = len(json.dumps(obj).encode())
    assert size < MIB
    assert len(json.dumps(status["candidates"]["list"], separators=(",", ":")).encode()) <= BUDGET
    candidates = status["candidates"]
    assert candidates["total"] == 5000
    assert 0 < len(candidates["list"]) < 5000 and candidates["omitted"] == 5000 - len(candidates["list"])
    running = [r for r in candidates["list"] if r["state"] == "running"]
    assert len(running) == 17 and candidates["list"][: len(running)] == running  # running ones first
    assert status["counters"]["preempted"] == 12 and "podFailures" not in status["counters"]  # the pods writer owns it
    assert elapsed < 2.0


def test_status_names_the_best_candidate_per_tier_in_percent() -> None:
    status = mirror(big_search(30), [0.5, 0.8, 1.1], conditions=[], budget_bytes=BUDGET)
    assert [b["tier"] for b in status["bestPerTier"]] == [0.5, 0.8, 1.1]
    assert status["best"]["candidate"] == "t2-c00001" and status["best"]["top1"] == 72.0
    assert status["best"]["latencyMs"] == pytest.approx(1.05)
    assert status["tiers"] == 3 and status["phase"] == "Searching"
    degraded, ready = status["conditions"]
    assert ready["type"] == "Ready" and ready["status"] == "True"
    assert degraded["type"] == "Degraded" and degraded["status"] == "False"


def test_a_degraded_controller_is_a_degraded_condition_and_healthy_again_after() -> None:
    reply = big_search(3)
    reply.degraded.CopyFrom(pb.Degraded(reason="OperationalError", message="state.sqlite: database is locked",
                                        since_unix_s=1.0, errors=4))
    status = mirror(reply, [0.5, 0.8, 1.1], conditions=[], budget_bytes=BUDGET)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "OperationalError")
    assert "database is locked" in degraded["message"] and "4 transient errors" in degraded["message"]
    assert status["phase"] == "Searching"  # degraded, not failed
    healthy = mirror(big_search(3), [0.5, 0.8, 1.1], conditions=status["conditions"], budget_bytes=BUDGET)
    assert next(c for c in healthy["conditions"] if c["type"] == "Degraded")["status"] == "False"


def test_a_new_resume_annotation_resumes_a_failed_search_and_restarts_the_status_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import logging
    from types import SimpleNamespace

    from gpunet_operator import reconcile
    from gpunet_operator.status_writer import StatusWriter

    class Api:
        def __init__(self) -> None:
            self.applied: list[dict] = []

        async def apply(self, body: dict, manager: str, subresource: str | None = None) -> dict:
            self.applied.append(body["status"])
            return body

    class Controller:
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def resume(self, resume_id: str) -> pb.ResumeResponse:
            first = resume_id not in self.asked
            self.asked.append(resume_id)
            return pb.ResumeResponse(resumed=first, phase=pb.SEARCH_PHASE_SEARCHING if first else pb.SEARCH_PHASE_FAILED,
                                     message="resumed (2) after: boom" if first else "done already")

    monkeypatch.setattr(reconcile.kopf, "event", lambda *a, **k: None)
    api, controller = Api(), Controller()

    async def get_controller(namespace: str, name: str) -> Controller:
        return controller

    ctx = SimpleNamespace(status=StatusWriter(api), controller=get_controller)
    body = {"metadata": {"name": "s", "namespace": "ns", "uid": "u1", "generation": 3,
                         "annotations": {reconcile.RESUME_ANNOTATION: "2"}},
            "status": {"phase": "Failed", "message": "boom", "counters": {"completed": 1}}}
    log = logging.getLogger("test")
    assert asyncio.run(reconcile.resume(ctx, body, "2", log))
    assert controller.asked == ["2"]
    (written,) = api.applied
    assert written["phase"] == "Searching" and written["counters"] == {"completed": 1}  # the daemon's `when` matches again
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert not asyncio.run(reconcile.resume(ctx, body, "2", log))  # delivered again: resumed once
    running = {**body, "status": {"phase": "Searching"}}
    assert not asyncio.run(reconcile.resume(ctx, running, "3", log)) and controller.asked == ["2", "2"]
    assert len(api.applied) == 1

    class Resumed:  # the controller runs again, but the operator died before it wrote that into the status
        async def resume(self, resume_id: str) -> pb.ResumeResponse:
            return pb.ResumeResponse(resumed=False, phase=pb.SEARCH_PHASE_SEARCHING, message="not Failed but Searching")

    async def get_resumed(namespace: str, name: str) -> Resumed:
        return Resumed()

    restarted = SimpleNamespace(status=StatusWriter(api), controller=get_resumed)
    assert not asyncio.run(reconcile.resume(restarted, body, "2", log))
    assert len(api.applied) == 2 and api.applied[-1]["phase"] == "Searching"  # the status loop starts again


def test_status_counts_stage2_in_finalizing_and_leaves_baselines_without_a_tier() -> None:
    reply = pb.SearchStatus(phase=pb.SEARCH_PHASE_FINALIZING, candidates=pb.CandidateCounts(running=2, completed=6, total=8),
                            final_training=pb.CandidateCounts(running=2, completed=1, total=3),
                            records=[pb.CandidateRecord(id="b0-mobilenetv3_small_050", tier_index=-1, state="running")])
    status = mirror(reply, [0.5], conditions=[], budget_bytes=BUDGET)
    counters = status["counters"]
    assert (counters["finalRunning"], counters["finalCompleted"], counters["finalTotal"]) == (2, 1, 3)
    assert status["candidates"]["list"] == [{"id": "b0-mobilenetv3_small_050", "state": "running"}]
    assert "finalTotal" not in mirror(big_search(3), [0.5, 0.8, 1.1], conditions=[], budget_bytes=BUDGET)["counters"]


def test_compact_list_respects_any_budget() -> None:
    records = [{"id": f"c{i}", "state": "completed", "top1": 50.0} for i in range(100)]
    for budget in (2, 50, 500, 5000):
        out = compact_candidates(records, 100, budget)
        assert len(json.dumps(out["list"], separators=(",", ":"))) <= max(budget, 2)
        assert out["omitted"] == 100 - len(out["list"])


def test_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = set_condition([], "Ready", False, "Starting", "waiting")
    first[0]["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    same = set_condition(first, "Ready", False, "Starting", "still waiting")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same[0]["message"] == "still waiting"
    flipped = set_condition(same, "Ready", True, "Searching", "go")
    assert flipped[0]["lastTransitionTime"] != "2026-01-01T00:00:00Z"


SPEC = with_defaults({"latency": {"tiers": [0.5]}, "trainers": {"maxReplicas": 4}, "profilers": {"replicas": 2}})


@pytest.mark.parametrize(("phase", "queued", "running", "table_complete", "want"), [
    ("Pending", 0, 0, False, Scale(1, 2, 0)),
    ("Profiling", 0, 0, False, Scale(1, 2, 0)),
    ("Stratifying", 0, 0, True, Scale(1, 0, 0)),
    ("Searching", 1, 0, True, Scale(1, 0, 1)),
    ("Searching", 2, 1, True, Scale(1, 0, 3)),
    ("Searching", 10, 3, True, Scale(1, 0, 4)),  # capped at maxReplicas
    ("Profiling", 0, 0, True, Scale(1, 0, 0)),  # table complete: profilers go
    ("Scaling", 0, 2, False, Scale(1, 2, 2)),  # LACS: the scaled networks' layers measured, trainers kept
    ("Scaling", 4, 0, True, Scale(1, 0, 4)),  # LACS: the scaled networks trained
    ("Finalizing", 0, 0, True, Scale(1, 2, 0)),  # winners measured on profilers, results written; no trainer
    ("Finalizing", 3, 1, True, Scale(1, 2, 4)),  # stage 2: the winners trained again and the baselines
    ("Succeeded", 5, 5, True, Scale(0, 0, 0)),
    ("Failed", 5, 5, False, Scale(0, 0, 0)),
])
def test_pools_follow_the_phase_and_the_queue(phase: str, queued: int, running: int, table_complete: bool, want: Scale) -> None:
    assert desired_scale(phase, SPEC, queued=queued, running=running, table_complete=table_complete) == want


@pytest.mark.parametrize(("name", "spec", "field"), [
    ("a" * 41, {"latency": {"tiers": [0.5]}}, "metadata.name"),
    ("9lives", {"latency": {"tiers": [0.5]}}, "metadata.name"),
    ("ok", {"latency": {"tiers": [0.5], "tolerance": 2}}, "spec.latency.tolerance"),
    ("ok", {"latency": {"tiers": [0.5], "precision": "fp16", "device": "cpu"}}, "spec.latency.precision"),
    ("ok", {"latency": {"tiers": [0.5]}, "searchSpace": {"preset": "gpunet", "stages": {"2": {"kernel": [4]}}}},
     "spec.searchSpace.stages[2].kernel"),
    ("ok", {"latency": {"tiers": [0.5]}, "training": {"dataset": {"kind": "imagefolder"}}}, "spec.training.dataset.path"),
    ("ok", {"latency": {"tiers": [0.5]}, "storage": {"existingClaim": "x", "size": "1Gi"}}, "spec.storage"),
    ("ok", {"latency": {"tiers": [0.5]}, "trainers": {"maxReplicas": -2}}, "spec.trainers.maxReplicas"),
    ("ok", {"latency": {"tiers": [0.5]}, "controller": {"resources": {"limits": {"cpu": "lots"}}}}, "spec.controller.resources.limits.cpu"),
    ("ok", {"latency": {"tiers": [0.5]}, "storage": {"size": "1.5.2Gi"}}, "spec.storage.size"),
    ("ok", {"latency": {"tiers": [0.5]}, "algorithm": {"name": "random", "options": {"n_init": 3}}}, "spec.algorithm.options.n_init"),
    ("ok", {"latency": {"tiers": [0.5]}, "algorithm": {"name": "lamcts-bo", "options": {"leaf_size": 0}}},
     "spec.algorithm.options.leaf_size"),
])
def test_invalid_spec_names_the_field(name: str, spec: dict, field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        validate(name, "default", spec)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(field)


def test_unreachable_controller_backs_off_exponentially_up_to_the_cap() -> None:
    from gpunet_operator.reconcile import next_delay

    delays, delay = [], 0.5
    for _ in range(8):
        delay = next_delay(delay, reachable=False, interval=0.5, backoff_max=8.0)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert next_delay(8.0, reachable=True, interval=0.5, backoff_max=8.0) == 0.5  # an answer resets it


@pytest.mark.parametrize(("argv", "want", "absent"), [
    ([], ["--all-namespaces", "--standalone"], []),
    (["--namespace=team-a"], ["--namespace=team-a", "--standalone"], ["--all-namespaces"]),
    (["--peering=gpunet-nas"], ["--peering=gpunet-nas", "--all-namespaces"], ["--standalone"]),
    (["--peering=p", "--priority=7"], ["--priority=7"], ["--standalone"]),
])
def test_operator_command_line_is_standalone_unless_peering(argv: list[str], want: list[str], absent: list[str]) -> None:
    from gpunet_operator.__main__ import kopf_args

    args = kopf_args(argv)
    assert args[:3] == ["run", "-m", "gpunet_operator.handlers"]
    assert all(a in args for a in want) and not any(a in args for a in absent)
    if "--peering=gpunet-nas" in argv:  # each replica draws its own priority: the highest live one is active
        (priority,) = [a for a in args if a.startswith("--priority=")]
        assert int(priority.split("=")[1]) > 0
