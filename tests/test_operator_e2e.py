"""The operator end to end: kopf (``kopf.testing.KopfRunner``) against a stateful Kubernetes API mock (kmock)
and a scripted search controller (a real gRPC server), all in one scenario.

kmock 0.8 has no garbage collector, admission or defaulting, and assigns no uid; the emulator below fills the
metadata a real API server would, names objects created with ``generateName`` and garbage-collects owned
objects, so that owner references are tested for what they do. There is no kube-controller-manager either: the
test plays the ReplicaSet (creating a trainer pod) and the scheduler (marking it preempted).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import attrs
import grpc
import kmock
import pytest
import yaml
from kopf.testing import KopfRunner

from gpunet import rpc
from gpunet.rpc import pb, pb_grpc

NS = "research"
GROUP_PATH = "/apis/nas.gpunet.dev/v1alpha1"
CHILD_KINDS = {("", "secrets"), ("", "configmaps"), ("", "persistentvolumeclaims"), ("", "services"), ("apps", "deployments")}


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    """kmock's emulator plus what the API server and its garbage collector do for us."""

    async def _handle(self, request: kmock.Request) -> Any:
        target = None
        if request.resource is not None and request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("namespace", request.namespace)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("generation", 1)
            meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        elif request.resource is not None and request.name and request.action in (kmock.action.DELETE, kmock.action.UPDATE):
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                target = self.objects[key].raw.get("metadata", {}).get("uid")
        response = await super()._handle(request)
        if target is not None:
            key = (request.resource, request.namespace, request.name)
            if self.objects[key].deleted:
                await self._collect(target)
        return response

    async def _collect(self, owner_uid: str) -> None:
        """Delete (in cascade) every object with an owner reference to ``owner_uid``."""
        async with self._lock:
            doomed = [(key, obj) for key, obj in self.objects.items() if not obj.deleted
                      and any(ref.get("uid") == owner_uid for ref in obj.raw.get("metadata", {}).get("ownerReferences") or [])]
            for (resource, _, _), obj in doomed:
                raw = obj.raw
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})
        for _, obj in doomed:
            uid = obj.last.raw.get("metadata", {}).get("uid")
            if uid:
                await self._collect(uid)


def declare_resources(cluster: Cluster) -> None:
    """Discovery serves only what is declared (kmock 0.8): every resource kopf or the operator touches."""
    namespaced = {"get", "list", "watch", "create", "patch", "update", "delete"}
    cluster.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs={"list", "watch", "get"})
    cluster.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", singular="namespace", namespaced=False, verbs={"list", "watch", "get"})
    cluster.resources["v1/nodes"] = kmock.ResourceInfo(kind="Node", singular="node", namespaced=False, verbs={"list", "watch", "get"})
    cluster.resources["nas.gpunet.dev/v1alpha1/nassearches"] = kmock.ResourceInfo(
        kind="NASSearch", singular="nassearch", namespaced=True, verbs=namespaced, shortnames={"nas"}, subresources={"status"})
    for path, kind in [("v1/events", "Event"), ("v1/secrets", "Secret"), ("v1/configmaps", "ConfigMap"), ("v1/pods", "Pod"),
                       ("v1/persistentvolumeclaims", "PersistentVolumeClaim"), ("v1/services", "Service"),
                       ("apps/v1/deployments", "Deployment"), ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy")]:
        cluster.resources[path] = kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=True, verbs=namespaced)


class ApiServer:
    """The emulator served over HTTP from its own thread and event loop, so that the test itself may block."""

    def __init__(self) -> None:
        self.cluster: Cluster | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with Cluster() as cluster, kmock.Server(cluster) as server:
            declare_resources(cluster)
            self.cluster, self.url = cluster, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "ApiServer":
        self._thread.start()
        assert self._ready.wait(10), "the API mock did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def objects(self, group: str, plural: str, namespace: str = NS) -> list[dict[str, Any]]:
        """Live objects of a resource, read from the emulator's store (not through the API)."""
        async def read() -> list[dict[str, Any]]:
            return [obj.raw for (res, ns, _), obj in list(self.cluster.objects.items())
                    if res.group == group and res.plural == plural and ns == namespace and not obj.deleted]
        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)

    def history_length(self, group: str, plural: str, name: str, namespace: str = NS) -> int:
        """How many versions of an object the emulator has stored (every write adds one)."""
        async def read() -> int:
            return next(len(obj.history) for (res, ns, n), obj in list(self.cluster.objects.items())
                        if res.group == group and res.plural == plural and ns == namespace and n == name)
        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)


def trainer_pod(name: str, node: str) -> dict[str, Any]:
    """A running trainer pod of search ``demo``, as its ReplicaSet would create it."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"nas.gpunet.dev/search": "demo", "app.kubernetes.io/component": "trainer"}},
            "spec": {"nodeName": node, "containers": [{"name": "trainer", "image": "worker"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "trainer", "restartCount": 0, "state": {"running": {}}}]}}


class ScriptedController(pb_grpc.SearchControllerServiceServicer):
    """A search controller whose answers the test scripts; it records releases and the tokens it saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status = pb.SearchStatus(phase="Profiling", search_name="demo",
                                      latency_table=pb.LatencyTableProgress(layers_needed=100, layers_measured=10),
                                      candidates=pb.CandidateCounts(budget=8))
        self.releases: list[pb.ReleaseRequest] = []
        self.tokens: set[str] = set()

    def _auth(self, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        self.tokens.add(metadata.get(rpc.AUTH_METADATA_KEY, ""))

    def script(self, **changes: Any) -> None:
        with self.lock:
            for key, value in changes.items():
                field = getattr(self.status, key)
                if isinstance(value, dict):
                    for k, v in value.items():
                        setattr(field, k, v)
                elif key in ("tiers", "records"):
                    del field[:]
                    field.extend(value)
                else:
                    setattr(self.status, key, value)

    def GetStatus(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.SearchStatus:
        self._auth(context)
        with self.lock:
            reply = pb.SearchStatus()
            reply.CopyFrom(self.status)
            return reply

    def ReleaseLease(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseResponse:
        self._auth(context)
        with self.lock:
            self.releases.append(request)
            if request.reason == pb.RELEASE_REASON_PREEMPTED:
                self.status.preemptions += 1
            self.status.candidates.running -= 1
            self.status.candidates.queued += 1
        return pb.ReleaseResponse(released=True, work_id="t0-c0003", requeued=True)


@pytest.fixture()
def controller() -> Iterator[tuple[ScriptedController, int]]:
    servicer = ScriptedController()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SearchControllerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(0.05)


def settled(read: Callable[[], int], quiet_s: float = 0.5) -> Callable[[], int]:
    """A check for :func:`wait_for`: the value of ``read`` once it stayed the same for ``quiet_s`` seconds."""
    def check() -> int:
        before = read()
        time.sleep(quiet_s)
        return before if read() == before else 0
    return check


def search(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "nas.gpunet.dev/v1alpha1", "kind": "NASSearch", "metadata": {"name": name, "namespace": NS}, "spec": spec}


SPEC = {
    "searchSpace": {"preset": "gpunet-tiny"},
    "latency": {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "tiers": [0.5, 1.0]},
    "algorithm": {"name": "random", "budget": 4},
    "training": {"dataset": {"kind": "fashion-mnist"}, "epochs": 2},
    "trainers": {"maxReplicas": 2, "spot": True},
    "profilers": {"replicas": 3},
    "storage": {"size": "1Gi"},
}


@pytest.mark.timeout(120)
def test_operator_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             controller: tuple[ScriptedController, int]) -> None:
    scripted, grpc_port = controller
    with ApiServer() as api:
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": api.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
        }
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        monkeypatch.setenv("GPUNET_CONTROLLER_ADDRESS", f"127.0.0.1:{grpc_port}")
        monkeypatch.setenv("GPUNET_POLL_INTERVAL", "0.1")
        monkeypatch.setenv("GPUNET_GRPC_TIMEOUT", "2")

        def deployment_replicas() -> dict[str, int]:
            return {d["metadata"]["name"]: d["spec"]["replicas"] for d in api.objects("apps", "deployments")}

        def versions(name: str) -> int:
            return api.history_length("nas.gpunet.dev", "nassearches", name)

        def get(name: str) -> dict[str, Any] | None:
            return api.call("GET", f"{GROUP_PATH}/namespaces/{NS}/nassearches/{name}")

        def status(name: str) -> dict[str, Any]:
            return (get(name) or {}).get("status") or {}

        def condition(name: str, type_: str) -> dict[str, Any]:
            return next((c for c in status(name).get("conditions") or [] if c["type"] == type_), {})

        args = ["run", "--all-namespaces", "--standalone", "--verbose", "-m", "gpunet_operator.handlers"]
        with KopfRunner(args, timeout=30) as runner:
            # An invalid spec: phase Failed, a Ready=False condition naming the field, and no children.
            broken = dict(SPEC, searchSpace={"preset": "gpunet-tiny", "stages": {"2": {"kernel": [4]}}})
            api.call("POST", f"{GROUP_PATH}/namespaces/{NS}/nassearches", search("broken", broken))
            wait_for("the invalid search to fail", lambda: status("broken").get("phase") == "Failed")
            ready = condition("broken", "Ready")
            assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
            assert "spec.searchSpace.stages[2].kernel" in ready["message"]
            broken_versions = wait_for("the invalid search to settle", settled(lambda: versions("broken")))

            # A valid search: its children appear, owned by it.
            created = api.call("POST", f"{GROUP_PATH}/namespaces/{NS}/nassearches", search("demo", SPEC))
            uid = created["metadata"]["uid"]
            wait_for("the children", lambda: len(deployment_replicas()) == 3)
            children = [o for group, plural in CHILD_KINDS for o in api.objects(group, plural)]
            assert sorted(o["metadata"]["name"] for o in children) == [
                "demo-controller", "demo-controller", "demo-data", "demo-profiler", "demo-spec", "demo-token", "demo-trainer"]
            for child in children:
                (ref,) = child["metadata"]["ownerReferences"]
                assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("NASSearch", "demo", uid, True)
            assert not any(o["metadata"]["name"].startswith("broken") for o in children)

            # The scripted controller drives the phases; the pools follow.
            wait_for("phase Profiling", lambda: status("demo").get("phase") == "Profiling")
            wait_for("profilers up, trainers down", lambda: deployment_replicas() == {
                "demo-controller": 1, "demo-profiler": 3, "demo-trainer": 0})
            assert condition("demo", "ControllerReachable")["status"] == "True"
            (token_secret,) = [s for s in api.objects("", "secrets") if s["metadata"]["name"] == "demo-token"]
            token = base64.b64decode(token_secret["data"]["token"]).decode()
            assert scripted.tokens == {f"Bearer {token}"}

            scripted.script(phase="Searching", latency_table={"layers_measured": 100}, candidates={"queued": 3, "running": 0})
            wait_for("trainers at maxReplicas", lambda: deployment_replicas() == {
                "demo-controller": 1, "demo-profiler": 0, "demo-trainer": 2})
            scripted.script(candidates={"queued": 0, "running": 1})
            wait_for("trainers at queued + running", lambda: deployment_replicas()["demo-trainer"] == 1)
            assert status("demo")["phase"] == "Searching"

            # A live change applies; a search-defining change is refused with a condition.
            scripted.script(candidates={"queued": 4, "running": 1})
            api.call("PATCH", f"{GROUP_PATH}/namespaces/{NS}/nassearches/demo",
                     {"spec": {"trainers": {"maxReplicas": 5, "image": "registry.example/worker:2"}, "latency": {"tiers": [0.4, 1.0]}}},
                     "application/merge-patch+json")
            wait_for("trainers at the new maxReplicas", lambda: deployment_replicas()["demo-trainer"] == 5)
            trainer_image = wait_for("the new trainer image", lambda: [
                c["image"] for d in api.objects("apps", "deployments") if d["metadata"]["name"] == "demo-trainer"
                for c in d["spec"]["template"]["spec"]["containers"] if c["image"] == "registry.example/worker:2"])
            assert trainer_image
            refused = wait_for("the refusal", lambda: condition("demo", "SpecAccepted").get("status") == "False"
                               and condition("demo", "SpecAccepted"))
            assert refused["reason"] == "SearchDefiningFieldChanged" and "spec.latency.tiers" in refused["message"]

            # A trainer pod is preempted: its lease is released at once and counted apart from failures.
            scripted.script(candidates={"queued": 0, "running": 1})
            pod = trainer_pod("demo-trainer-5d8f9-x2x7q", "spot-node-1")
            api.call("POST", f"/api/v1/namespaces/{NS}/pods", pod)
            scripted.script(records=[pb.CandidateRecord(id="t0-c0003", state="running", worker_id=pod["metadata"]["name"])])
            wait_for("the busy trainer to be protected from scale-down", lambda: (api.call(
                "GET", f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")["metadata"].get("annotations") or {}).get(
                "controller.kubernetes.io/pod-deletion-cost") == "1000")
            assert scripted.releases == []  # a healthy trainer is left alone
            api.call("PATCH", f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/status", {"status": {
                "phase": "Failed", "reason": "Preempted",
                "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]}},
                "application/merge-patch+json")
            (release,) = wait_for("the release", lambda: list(scripted.releases))
            assert release.worker_id == "demo-trainer-5d8f9-x2x7q" and release.reason == pb.RELEASE_REASON_PREEMPTED
            counters = wait_for("one preemption", lambda: status("demo").get("counters", {}).get("preempted") == 1
                                and status("demo")["counters"])
            assert counters["podFailures"] == 0 and counters["queued"] == 1
            events = wait_for("the Event", lambda: [e for e in api.objects("", "events") if e.get("reason") == "TrainerPreempted"])
            assert events[0]["involvedObject"]["name"] == "demo" and events[0]["involvedObject"]["uid"] == uid
            assert "t0-c0003" in events[0]["message"]
            time.sleep(0.3)
            assert len(scripted.releases) == 1  # repeated pod events do not release twice

            # A trainer that crashes by itself is a failed attempt, not a preemption.
            crashed = trainer_pod("demo-trainer-5d8f9-k8m2p", "gpu-node-3")
            crashed["status"]["containerStatuses"] = [{"name": "trainer", "restartCount": 1, "state": {"running": {}},
                                                       "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]
            api.call("POST", f"/api/v1/namespaces/{NS}/pods", crashed)
            failure = wait_for("the failed release", lambda: len(scripted.releases) == 2 and scripted.releases[1])
            assert failure.worker_id == "demo-trainer-5d8f9-k8m2p" and failure.reason == pb.RELEASE_REASON_FAILED
            counters = wait_for("one pod failure", lambda: status("demo")["counters"]["podFailures"] == 1 and status("demo")["counters"])
            assert counters["preempted"] == 1

            # A spot node announces its reclamation with a taint: its trainers are released at once.
            api.call("POST", f"/api/v1/namespaces/{NS}/pods", trainer_pod("demo-trainer-5d8f9-q9r4t", "spot-node-2"))
            api.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "spot-node-2"}, "spec": {
                "taints": [{"key": "cloud.google.com/impending-node-termination", "effect": "NoSchedule"}]}})
            tainted = wait_for("the node release", lambda: len(scripted.releases) == 3 and scripted.releases[2])
            assert tainted.worker_id == "demo-trainer-5d8f9-q9r4t" and tainted.reason == pb.RELEASE_REASON_PREEMPTED
            wait_for("two preemptions", lambda: status("demo")["counters"]["preempted"] == 2)
            assert versions("broken") == broken_versions  # the invalid search was never retried

            # The search ends: everything scales to zero, the best candidate per tier is in the status.
            scripted.script(phase="Succeeded", message="all tiers searched", candidates={"queued": 0, "running": 0, "completed": 8},
                            tiers=[pb.TierStatus(index=0, target_ms=0.5, best_candidate_id="t0-c0001", best_top1=0.85, best_latency_ms=0.49),
                                   pb.TierStatus(index=1, target_ms=1.0, best_candidate_id="t1-c0002", best_top1=0.88, best_latency_ms=0.97)])
            wait_for("phase Succeeded", lambda: status("demo").get("phase") == "Succeeded")
            wait_for("all pools at zero", lambda: set(deployment_replicas().values()) == {0})
            final = status("demo")
            assert final["best"] == {"tier": 1.0, "candidate": "t1-c0002", "top1": 88.0, "latencyMs": 0.97, "vector": []}
            assert final["counters"]["evaluated"] == 8 and condition("demo", "Ready")["status"] == "True"

            # Deletion: the children go with their owner.
            api.call("DELETE", f"{GROUP_PATH}/namespaces/{NS}/nassearches/demo")
            api.call("DELETE", f"{GROUP_PATH}/namespaces/{NS}/nassearches/broken")
            wait_for("the searches to go", lambda: get("demo") is None and get("broken") is None)
            wait_for("the children to go", lambda: not [o for g, p in CHILD_KINDS for o in api.objects(g, p)])
        assert runner.exit_code == 0, runner.output
