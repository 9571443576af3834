"""How the operator tells a trainer pod lost to its node (spot preemption, eviction, node shutdown) from a trainer
that failed by itself — the first releases its lease as ``preempted``, the second counts as a failed attempt."""

from __future__ import annotations

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
    assert first.end is PodEnd.FAILED and "Error" in first.reason
    assert same.key == first.key  # the restart is the same failure seen again
    assert second.end is PodEnd.FAILED and second.key != first.key and "OOMKilled" in second.reason


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
