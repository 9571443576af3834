"""The end of a search on the real control plane: every result file is written before the operator scales a pod
of the search down, even when writing them takes longer than the controller pod's termination grace period.

A small NASSearch runs to Succeeded: the scripted profiler fills the latency table, scripted trainers train the
budget, and in phase Finalizing the scripted profiler measures the tier winner end to end. The real controller
(``slow_results.py``, a wrapper of ``python -m gpunet.controller``) then spends longer than the grace period
before it writes the result files. A watch records every replica change of the search's Deployments.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes import client, watch

from .actors import FAKE_NETWORK_MS, OperatorProcess, ScriptedTrainer, controller_of, fill_latency_table, measure_networks
from .install import bound_claim, ensure_namespace, wait_for
from .test_cluster_search import COMPONENT_LABEL, GROUP, PLURAL, SEARCH_LABEL, VERSION, scaled_down_search

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

NS, NAME, CLAIM = "finish", "gpunet-finish", "finish-rwx"
BUDGET = 2
SLOW_RESULTS = Path(__file__).with_name("slow_results.py")
#: The result files of a search (``gpunet.controller.outputs.write_outputs``; no weights: the trainers are scripted).
RESULT_FILES = ("hub.json", "hub.md", "candidates.jsonl", "pareto.png")


class ReplicaLog:
    """Every ``spec.replicas`` of the search's Deployments as the API server announces it: (time, component, n)."""

    def __init__(self, apps: client.AppsV1Api) -> None:
        self.apps, self.changes, self._stop = apps, [], threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last: dict[str, int] = {}
        while not self._stop.is_set():
            try:
                for event in self._watch.stream(self.apps.list_namespaced_deployment, NS, label_selector=f"{SEARCH_LABEL}={NAME}",
                                                timeout_seconds=30):
                    dep = event["object"]
                    component = dep.metadata.labels[COMPONENT_LABEL]
                    if last.get(component) != dep.spec.replicas:
                        last[component] = dep.spec.replicas
                        self.changes.append((time.time(), component, dep.spec.replicas))
            except Exception:  # noqa: BLE001 - a cut stream is watched again
                time.sleep(0.1)

    def start(self) -> "ReplicaLog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()

    def scaled_to_zero(self, component: str, after: float = 0.0) -> list[float]:
        return [t for t, c, n in self.changes if c == component and n == 0 and t > after]


def finishing_search() -> dict[str, Any]:
    doc = scaled_down_search()
    doc["metadata"] = {"name": NAME, "namespace": NS}
    spec = doc["spec"]
    spec["algorithm"].update(budget=BUDGET, initialSamples=BUDGET)
    spec["trainers"]["maxReplicas"] = BUDGET
    spec["storage"] = {"existingClaim": CLAIM}
    return doc


@pytest.fixture(scope="module")
def finished(admin: client.ApiClient, operator: OperatorProcess, sockets: Path, control_plane: Any) -> Iterator[dict[str, Any]]:
    """Run the search to its end; yields what was seen on the way."""
    ensure_namespace(admin, NS)
    bound_claim(admin, NS, CLAIM)
    core, apps, custom = client.CoreV1Api(admin), client.AppsV1Api(admin), client.CustomObjectsApi(admin)
    replicas = ReplicaLog(apps).start()
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, finishing_search())

    def phase() -> str:
        return (custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME).get("status") or {}).get("phase", "")

    def running(component: str) -> list[Any]:
        pods = core.list_namespaced_pod(NS, label_selector=f"{SEARCH_LABEL}={NAME},{COMPONENT_LABEL}={component}").items
        return [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]

    controller_deployment = wait_for("the controller Deployment", lambda: [d for d in apps.list_namespaced_deployment(
        NS, label_selector=f"{SEARCH_LABEL}={NAME},{COMPONENT_LABEL}=controller").items])[0]
    grace = controller_deployment.spec.template.spec.termination_grace_period_seconds
    delay = grace + 3.0
    workdir = control_plane.workdir / NAME
    markers = workdir / "markers"
    controller = controller_of(admin, NS, NAME, workdir, sockets, entry=(str(SLOW_RESULTS), str(delay), str(markers)),
                               extra_args=()).start()
    seen: dict[str, Any] = {"grace": grace, "delay": delay, "markers": markers, "state": workdir / "state",
                            "replicas": replicas, "controller": controller}
    try:
        try:
            (profiler,) = wait_for("a profiler pod running", lambda: running("profiler"), timeout=30)
        except AssertionError as exc:
            pods = core.list_namespaced_pod(NS).items
            raise AssertionError(f"{exc}; pods: {[(p.metadata.name, p.spec.node_name, p.status.phase, [(c.type, c.reason, c.message) for c in p.status.conditions or []]) for p in pods]}; deployments: {[(d.metadata.name, d.spec.replicas, d.status.to_dict()) for d in apps.list_namespaced_deployment(NS).items]}") from None
        assert fill_latency_table(controller.stub, profiler.metadata.name) > 0
        wait_for("phase Searching", lambda: phase() == "Searching", timeout=30)
        trained: set[str] = set()
        while len(trained) < BUDGET:
            for pod in wait_for("trainer pods running", lambda: running("trainer"), timeout=30):
                if len(trained) == BUDGET:
                    break
                trainer = ScriptedTrainer(controller.stub, pod.metadata.name)
                lease = trainer.take()
                for epoch in (1, 2, 3):
                    trainer.report_epoch(epoch, top1=0.5 + 0.1 * len(trained))
                assert trainer.finish(top1=0.5 + 0.1 * len(trained), epochs=3)
                trained.add(lease.candidate_id)
        wait_for("phase Finalizing", lambda: phase() == "Finalizing", timeout=30)
        (profiler,) = wait_for("a profiler pod running in Finalizing", lambda: running("profiler"), timeout=30)
        seen["networks"] = measure_networks(controller.stub, profiler.metadata.name)
        started = float(wait_for("the results step to begin", lambda: (markers / "results-started").exists()
                                 and (markers / "results-started").read_text(), timeout=30))
        # Past the grace period of the results step: a scale-down at its start would have killed it by now.
        time.sleep(max(0.0, started + grace + 1.0 - time.time()))
        seen["during"] = {"written": (markers / "results-written").exists(), "phase": phase(),
                          "controller": apps.read_namespaced_deployment(f"{NAME}-controller", NS).spec.replicas,
                          "profiler": apps.read_namespaced_deployment(f"{NAME}-profiler", NS).spec.replicas}
        wait_for("phase Succeeded", lambda: phase() == "Succeeded", timeout=60)
        wait_for("the controller scaled to 0", lambda: replicas.scaled_to_zero("controller"), timeout=30)
        seen["started"] = started
        seen["written"] = float((markers / "results-written").read_text())
        yield seen
    finally:
        replicas.stop()
        controller.stop()
        custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)


def test_the_results_step_outlasts_the_grace_period_and_nothing_is_scaled_down_meanwhile(finished: dict[str, Any]) -> None:
    assert finished["networks"] == 1  # one tier: its winner measured end to end by a profiler
    assert finished["written"] - finished["started"] > finished["grace"]
    during = finished["during"]
    assert during == {"written": False, "phase": "Finalizing", "controller": 1, "profiler": 1}, during


def test_every_result_file_is_written_before_any_pod_is_scaled_down(finished: dict[str, Any]) -> None:
    state, written, log = finished["state"], finished["written"], finished["replicas"]
    for name in RESULT_FILES:
        assert (state / name).exists(), name
        assert (state / name).stat().st_mtime <= written, name
    # Once the results step began, the controller and the profilers went to 0 only after the last file.
    for component in ("controller", "profiler"):
        assert not [t for t in log.scaled_to_zero(component, after=finished["started"]) if t <= written], (component, log.changes)
    assert log.scaled_to_zero("controller", after=written), log.changes
    hub = json.loads((state / "hub.json").read_text())
    (tier,) = hub["tiers"]
    assert hub["phase"] == "Succeeded" and tier["candidate_id"] is not None
    assert tier["latency_ms_measured"] == FAKE_NETWORK_MS and tier["latency_measured_on"]["device"] == "sim-gpu"
    assert len((state / "candidates.jsonl").read_text().splitlines()) == BUDGET
