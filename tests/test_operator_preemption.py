"""How the operator tells a trainer pod lost to its node (spot preemption, eviction, node shutdown) from a trainer
that failed by itself — the first releases its lease as ``preempted``, the second counts as a failed attempt."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from gpunet_operator.preemption import PodEnd, classify_pod, node_preemption
from gpunet_operator.settings import DEFAULT_PREEMPTION_TAINTS, Settings


def pod(*, conditions: list[dict[str, Any]] | None = None, reason: str | None = None,
        containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "conditions": conditions or [{"type": "Ready", "status": "True"}]}
    if reason:
        status["reason"] = reason
        status["phase"] = "Failed"
    status["containerStatuses"] = containers or [{"name": "trainer", "restartCount": 0, "state": {"running": {}}}]
    return {"metadata": {"name": "s-trainer-abc", "uid": "u1"}, "status": status}


@pytest.mark.parametrize("disruption", ["PreemptionByScheduler", "DeletionByTaintManager", "EvictionByEvictionAPI",
                                        "DeletionByPodGC", "TerminationByKubelet"])
def test_disruption_target_condition_is_a_preemption(disruption: str) -> None:
    verdict = classify_pod(pod(conditions=[{"type": "DisruptionTarget", "status": "True", "reason": disruption}]))
    assert verdict is not None and verdict.end is PodEnd.PREEMPTED and disruption in verdict.reason


@pytest.mark.parametrize("reason", ["Preempted", "Evicted", "Shutdown", "NodeShutdown", "Terminated"])
def test_preempted_or_evicted_reason_is_a_preemption(reason: str) -> None:
    verdict = classify_pod(pod(reason=reason))
    assert verdict is not None and verdict.end is PodEnd.PREEMPTED


def test_preemption_wins_over_the_killed_container() -> None:
    killed = [{"name": "trainer", "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]
    verdict = classify_pod(pod(reason="Evicted", containers=killed))
    assert verdict is not None and verdict.end is PodEnd.PREEMPTED


def test_crashed_trainer_is_a_failure_once_per_crash() -> None:
    crashed = pod(containers=[{"name": "trainer", "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}])
    restarted = pod(containers=[{"name": "trainer", "restartCount": 1, "state": {"running": {}},
                                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}])
    oom_again = pod(containers=[{"name": "trainer", "restartCount": 1, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}])
    first, same, second = classify_pod(crashed), classify_pod(restarted), classify_pod(oom_again)
    assert first.end is PodEnd.FAILED and "Error" in first.reason and first.failures == 1
    assert same.failures == first.failures  # the restart is the same failure seen again
    assert second.end is PodEnd.FAILED and second.failures == 2 and "OOMKilled" in second.reason


@pytest.mark.parametrize("state", [{"running": {}}, {"waiting": {"reason": "ContainerCreating"}},
                                   {"terminated": {"exitCode": 0, "reason": "Completed"}}])
def test_healthy_or_finished_trainer_is_left_alone(state: dict[str, Any]) -> None:
    assert classify_pod(pod(containers=[{"name": "trainer", "restartCount": 0, "state": state}])) is None


def test_node_preemption_taints() -> None:
    node = {"metadata": {"name": "n1"}, "spec": {"taints": [{"key": "cloud.google.com/impending-node-termination", "effect": "NoSchedule"}]}}
    assert node_preemption(node, DEFAULT_PREEMPTION_TAINTS) == "node taint cloud.google.com/impending-node-termination"
    assert node_preemption({"spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}}, DEFAULT_PREEMPTION_TAINTS) is None
    assert node_preemption({"spec": {}}, DEFAULT_PREEMPTION_TAINTS) is None


def test_preemption_taints_are_configurable() -> None:
    settings = Settings.from_env({"GPUNET_PREEMPTION_TAINTS": "example.com/reclaim, other/x", "GPUNET_WATCH_NODES": "false"})
    assert settings.preemption_taints == ("example.com/reclaim", "other/x") and settings.watch_nodes is False
    assert node_preemption({"spec": {"taints": [{"key": "example.com/reclaim"}]}}, settings.preemption_taints)


def test_a_deleted_trainer_pod_may_have_held_a_lease() -> None:
    verdict = classify_pod(pod(containers=[{"name": "trainer", "restartCount": 0, "state": {"running": {}}}]), deleted=True)
    assert verdict is not None and verdict.end is PodEnd.PREEMPTED and verdict.reason == "pod deleted"


def test_a_failure_carries_the_time_it_happened() -> None:
    crashed = pod(containers=[{"name": "trainer", "restartCount": 2, "state": {"running": {}},
                               "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-11-21T05:55:00Z"}}}])
    verdict = classify_pod(crashed)
    assert (verdict.failures, verdict.failed_at) == (2, 1795240500.0)


class FakeApi:
    """The two calls handle_loss makes to the API server: get the NASSearch, apply the status part."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.owner = {"apiVersion": "nas.gpunet.dev/v1alpha1", "kind": "NASSearch",
                      "metadata": {"name": "s", "namespace": "ns", "uid": "u1"}, "status": status}
        self.applied: list[dict[str, Any]] = []

    async def get(self, *args: Any) -> dict[str, Any]:
        return self.owner

    async def apply(self, body: dict[str, Any], manager: str, subresource: str | None = None) -> dict[str, Any]:
        self.applied.append(body["status"])
        self.owner["status"] = {**self.owner["status"], **body["status"]}
        return body


class FakeController:
    def __init__(self) -> None:
        self.releases: list[tuple[str, str, float]] = []

    async def release(self, worker: str, reason: str, message: str, granted_before_unix_s: float = 0.0) -> Any:
        self.releases.append((worker, reason, granted_before_unix_s))
        return SimpleNamespace(released=True, work_id="t0-c0001", lease_id=f"L{len(self.releases)}")


def _context(api: FakeApi, controller: FakeController) -> Any:
    from gpunet_operator.preemption import TrainerNodes
    from gpunet_operator.status_writer import StatusWriter

    async def get_controller(namespace: str, name: str) -> FakeController:
        return controller
    return SimpleNamespace(api=api, status=StatusWriter(api), controller=get_controller, ledgers={},
                           trainer_nodes=TrainerNodes())


def test_a_loss_is_released_and_counted_once_also_by_a_restarted_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger in the status, not memory, decides: a new operator (a new context) that sees the same failed
    pod again releases nothing and counts nothing; a second failure of that pod counts once more."""
    import asyncio
    import logging

    from gpunet_operator import preemption

    monkeypatch.setattr(preemption.kopf, "event", lambda *a, **k: None)
    crashed = pod(containers=[{"name": "trainer", "restartCount": 1, "state": {"running": {}},
                               "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-11-21T05:55:00Z"}}}])
    crashed["metadata"].update(uid="pod-1", labels={"nas.gpunet.dev/search": "s"}, namespace="ns")
    api, controller = FakeApi({}), FakeController()
    log = logging.getLogger("test")

    async def event(ctx: Any, body: dict[str, Any], type_: str = "MODIFIED") -> None:
        await preemption.on_pod_event(ctx, type_, body, log)
        for ledger in ctx.ledgers.values():  # the coalesced status write
            if ledger.flushing is not None:
                await ledger.flushing

    asyncio.run(event(_context(api, controller), crashed))
    asyncio.run(event(_context(api, controller), crashed))  # the same pod, re-delivered after a restart
    assert controller.releases == [(crashed["metadata"]["name"], "failed", 1795240500.0)]
    assert api.owner["status"]["counters"]["podFailures"] == 1
    assert api.owner["status"]["trainerPods"] == [{"uid": "pod-1", "pod": crashed["metadata"]["name"], "restarts": 1, "preempted": False}]
    again = copy.deepcopy(crashed)
    again["status"]["containerStatuses"][0]["restartCount"] = 2
    asyncio.run(event(_context(api, controller), again))
    assert len(controller.releases) == 2 and api.owner["status"]["counters"]["podFailures"] == 2
    asyncio.run(event(_context(api, controller), again, "DELETED"))
    assert api.owner["status"]["trainerPods"] == []  # a deleted pod leaves the ledger


def test_the_node_index_follows_the_pod_events() -> None:
    from gpunet_operator.preemption import TrainerNodes

    index = TrainerNodes()
    a = {"metadata": {"name": "a", "namespace": "ns", "uid": "ua"}, "spec": {"nodeName": "n1"}}
    assert index.on("n1") is None  # never seen: the operator lists that node's pods instead
    index.note(a, "s", deleted=False)
    assert [p["metadata"]["name"] for p in index.on("n1")] == ["a"]
    index.note({**a, "spec": {"nodeName": "n2"}}, "s", deleted=False)
    assert index.on("n1") == [] and [p["metadata"]["labels"]["nas.gpunet.dev/search"] for p in index.on("n2")] == ["s"]
    index.note(a, "s", deleted=True)
    assert index.on("n2") == []
