"""The namespaced install on the real control plane: two operator replicas (kopf peering, one active) under the
chart's namespaced Roles, serving one team namespace only.

Its documented limits: no node access, so spot reclaim is seen from the pods' own conditions (taint eviction,
the Eviction API; a deleted node only once pod GC deletes its pods, about a minute later), and searches in
other namespaces are not served. Runs after the cluster-wide scenarios (it stops the cluster-wide operator).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes import client

from gpunet.rpc import pb

from .actors import OperatorProcess, ScriptedTrainer, controller_of, fill_latency_table
from .conftest import TEAM_NAMESPACE, TEAM_OPERATOR_NAMESPACE, TEAM_RELEASE, operator_process
from .install import bound_claim, can_i, ensure_namespace, install_chart, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

GROUP, VERSION, PLURAL = "nas.gpunet.dev", "v1alpha1", "nassearches"
NAME = "team-search"
OTHER_NAMESPACE = "team-b"  # not served by the team's operator
#: Peering keep-alives of the test replicas, in seconds (the chart's default is 60).
LIFETIME_S = 4


def search_body(name: str, namespace: str) -> dict[str, Any]:
    from .test_cluster_search import scaled_down_search

    doc = scaled_down_search()
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"]["storage"] = {"existingClaim": "team-data"}
    doc["spec"]["trainers"]["maxReplicas"] = 2
    return doc


def is_active(proc: OperatorProcess) -> bool:
    """kopf starts a peering replica paused; its log says when it resumes or pauses again."""
    out = proc.output()
    return proc.running and out.rfind("Resuming operations after the pause") > out.rfind("Pausing operations in favour of")


class Replicas:
    def __init__(self, procs: list[OperatorProcess]) -> None:
        self.procs = procs

    def active(self) -> list[OperatorProcess]:
        return [p for p in self.procs if is_active(p)]


@pytest.fixture(scope="module")
def replicas(control_plane: Any, admin: client.ApiClient, nodes: Any, sockets: Path, operator: OperatorProcess) -> Iterator[Replicas]:
    operator.stop()  # the cluster-wide operator would serve the team namespace too
    ensure_namespace(admin, TEAM_NAMESPACE)
    bound_claim(admin, TEAM_NAMESPACE, "team-data")
    pod = install_chart(admin, TEAM_RELEASE, TEAM_OPERATOR_NAMESPACE, {
        "rbac": {"scope": "namespaced", "watchNamespaces": [TEAM_NAMESPACE]}, "replicas": 2, "peering": {"lifetime": LIFETIME_S}})
    procs = [operator_process(control_plane, admin, pod, TEAM_OPERATOR_NAMESPACE, sockets,
                              control_plane.workdir / f"team-operator-{i}.log") for i in range(2)]
    def peers() -> dict[str, Any]:
        return client.CustomObjectsApi(admin).get_namespaced_custom_object("kopf.dev", "v1", TEAM_NAMESPACE, "kopfpeerings",
                                                                          "gpunet-nas").get("status") or {}

    def peers_settled() -> bool:
        time.sleep(LIFETIME_S / 2)  # both have seen each other's keep-alive
        return len(peers()) == 2 and len(group.active()) == 1

    procs[0].start()
    wait_for("the first replica to join the peering", lambda: len(peers()) == 1, timeout=30)
    procs[1].start()
    group = Replicas(procs)
    wait_for("exactly one active replica", peers_settled, timeout=30)
    yield group
    for proc in procs:
        proc.stop()
    operator.start()


def _children(admin: client.ApiClient, namespace: str, name: str) -> list[str]:
    selector = f"nas.gpunet.dev/search={name}"
    return [d.metadata.name for d in client.AppsV1Api(admin).list_namespaced_deployment(namespace, label_selector=selector).items]


def test_namespaced_operator_has_no_node_access_and_serves_only_its_namespace(admin: client.ApiClient, replicas: Replicas) -> None:
    kubeconfig = replicas.procs[0].env["KUBECONFIG"]
    assert not can_i(kubeconfig, "list", "nodes")
    assert not can_i(kubeconfig, "list", "pods", namespace=OTHER_NAMESPACE)
    assert can_i(kubeconfig, "watch", "pods", namespace=TEAM_NAMESPACE)
    ensure_namespace(admin, OTHER_NAMESPACE)
    custom = client.CustomObjectsApi(admin)
    custom.create_namespaced_custom_object(GROUP, VERSION, OTHER_NAMESPACE, PLURAL, search_body("elsewhere", OTHER_NAMESPACE))
    custom.create_namespaced_custom_object(GROUP, VERSION, TEAM_NAMESPACE, PLURAL, search_body(NAME, TEAM_NAMESPACE))
    wait_for("the team search's children", lambda: len(_children(admin, TEAM_NAMESPACE, NAME)) == 3, timeout=30)
    assert _children(admin, OTHER_NAMESPACE, "elsewhere") == []
    assert not (custom.get_namespaced_custom_object(GROUP, VERSION, OTHER_NAMESPACE, PLURAL, "elsewhere").get("status") or {})
    for proc in replicas.procs:
        assert "Forbidden" not in proc.output() and "forbidden" not in proc.output(), proc.output()[-3000:]
    custom.delete_namespaced_custom_object(GROUP, VERSION, OTHER_NAMESPACE, PLURAL, "elsewhere")


def test_namespaced_mode_releases_an_evicted_trainer_from_its_pod_conditions(admin: client.ApiClient, replicas: Replicas,
                                                                            sockets: Path, control_plane: Any) -> None:
    core = client.CoreV1Api(admin)
    ctl = controller_of(admin, TEAM_NAMESPACE, NAME, control_plane.workdir / NAME, sockets).start()
    try:
        def running(component: str) -> list[Any]:
            return [p for p in core.list_namespaced_pod(TEAM_NAMESPACE, label_selector=f"nas.gpunet.dev/search={NAME},"
                    f"app.kubernetes.io/component={component}").items if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        (profiler,) = wait_for("the profiler pod", lambda: running("profiler"), timeout=30)
        fill_latency_table(ctl.stub, profiler.metadata.name)
        (pod, *_) = wait_for("a trainer pod", lambda: running("trainer"), timeout=30)
        trainer = ScriptedTrainer(ctl.stub, pod.metadata.name)
        lease = trainer.take()
        assert trainer.report_epoch(1) == pb.PROGRESS_ACTION_CONTINUE
        evicted_at = time.monotonic()
        core.create_namespaced_pod_eviction(pod.metadata.name, TEAM_NAMESPACE, {
            "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod.metadata.name, "namespace": TEAM_NAMESPACE}})
        wait_for("the release", lambda: trainer.heartbeat() == pb.PROGRESS_ACTION_ABANDON, timeout=10, every=0.05)
        assert time.monotonic() - evicted_at < 5.0
        rec = next(r for r in ctl.status().records if r.id == lease.candidate_id)
        assert rec.preemptions == 1 and rec.state == "queued"
    finally:
        ctl.stop()


def test_the_standby_replica_takes_over_when_the_active_one_dies(admin: client.ApiClient, replicas: Replicas) -> None:
    (active,) = replicas.active()
    standby = next(p for p in replicas.procs if p is not active)
    active.kill()
    custom = client.CustomObjectsApi(admin)
    custom.create_namespaced_custom_object(GROUP, VERSION, TEAM_NAMESPACE, PLURAL, search_body("after-failover", TEAM_NAMESPACE))
    wait_for("the standby to take over", lambda: is_active(standby), timeout=LIFETIME_S * 5)
    wait_for("the standby to serve the new search", lambda: len(_children(admin, TEAM_NAMESPACE, "after-failover")) == 3, timeout=30)
    for name in (NAME, "after-failover"):
        custom.delete_namespaced_custom_object(GROUP, VERSION, TEAM_NAMESPACE, PLURAL, name)
    wait_for("the team searches to go", lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, TEAM_NAMESPACE, PLURAL)["items"],
             timeout=60)
