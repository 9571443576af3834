"""Simulated GPU and spot nodes, what kwok does: Nodes with ``nvidia.com/gpu`` capacity that stay Ready, and the
part of a kubelet that the control plane sees.

- Nodes are created with capacity, labels and taints as GKE, EKS and AKS GPU/spot pools have them, and kept
  alive by renewing their ``Lease`` in ``kube-node-lease`` (else the node lifecycle controller marks them
  unreachable after ~40 s).
- Pods the real scheduler bound to one of these nodes are moved to ``Running`` with ``Ready`` conditions and a
  running container; nothing runs in them.
- A pod being deleted (``deletionTimestamp``) is deleted with grace period 0, as a kubelet does once the
  containers have stopped.
- Claims are bound to a volume made for them (the storage provisioner's part).
- :meth:`crash_container` plays a container that failed and was restarted.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

#: Labels and taints of a spot GPU pool on each cloud (the taint is None where the pool is not tainted by default).
SPOT_POOLS: dict[str, tuple[dict[str, str], dict[str, str] | None]] = {
    "gke": ({"cloud.google.com/gke-spot": "true"}, {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}),
    "aks": ({"kubernetes.azure.com/scalesetpriority": "spot"},
            {"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"}),
    "eks": ({"eks.amazonaws.com/capacityType": "SPOT"}, None),
}
GPU_LABELS = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
LEASE_NAMESPACE = "kube-node-lease"
RENEW_EVERY_S = 5.0


def now_rfc3339(offset_s: float = 0.0) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SimNode:
    name: str
    gpus: int
    spot: str | None  #: "gke", "aks", "eks" or None (on-demand)


@dataclass
class NodeSimulator:
    """Creates simulated nodes and plays their kubelets; see the module docstring."""

    api: client.ApiClient
    #: seconds between two renewals of every node's Lease (the node lifecycle controller allows 40 s)
    renew_every_s: float = RENEW_EVERY_S
    nodes: dict[str, SimNode] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _watches: list[watch.Watch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    # --- nodes --------------------------------------------------------------------------------------------
    def add_node(self, name: str, *, gpus: int = 8, cpu: str = "64", memory: str = "512Gi", spot: str | None = None) -> SimNode:
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        taints = []
        if gpus:
            labels |= GPU_LABELS
            taints.append(GPU_TAINT)
        if spot:
            pool_labels, pool_taint = SPOT_POOLS[spot]
            labels |= pool_labels
            if pool_taint:
                taints.append(pool_taint)
        self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                               "spec": {"taints": taints}})
        capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "1Ti"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        stamp = now_rfc3339()
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated kubelet is ready",
                 "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        self.core.patch_node_status(name, {"status": {"capacity": capacity, "allocatable": capacity, "conditions": [ready],
                                                      "nodeInfo": {"kubeletVersion": "v1.36.2-sim"}}})
        self._renew(name)
        node = SimNode(name, gpus, spot)
        self.nodes[name] = node
        return node

    def delete_node(self, name: str) -> None:
        """The cloud takes the node away: the Node object goes (its pods are left to pod GC)."""
        self.nodes.pop(name, None)
        self.core.delete_node(name)
        try:
            client.CoordinationV1Api(self.api).delete_namespaced_lease(name, LEASE_NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def taint(self, name: str, taint: dict[str, str]) -> None:
        node = self.core.read_node(name)
        taints = self.api.sanitize_for_serialization(node.spec.taints or [])
        self.core.patch_node(name, {"spec": {"taints": taints + [taint]}})

    def _renew(self, name: str) -> None:
        coord = client.CoordinationV1Api(self.api)
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": _micro_now()}}
        try:
            coord.patch_namespaced_lease(name, LEASE_NAMESPACE, {"spec": body["spec"]})
        except ApiException as exc:
            if exc.status != 404:
                raise
            coord.create_namespaced_lease(LEASE_NAMESPACE, body)

    # --- the kubelets ----------------------------------------------------------------------------------------
    def start(self) -> "NodeSimulator":
        for target in (self._renew_loop, self._pod_loop, self._claim_loop):
            thread = threading.Thread(target=self._guard(target), name=f"sim-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in self._watches:
            w.stop()
        for thread in self._threads:
            thread.join(10)

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    loop()
                except Exception as exc:  # noqa: BLE001 - a watch that ends is restarted; errors are kept for the tests
                    if not self._stop.is_set():
                        # ApiException's repr carries no status: say it, so that a failed fixture can be read
                        what = f"ApiException(status={exc.status}, reason={exc.reason!r})" if isinstance(exc, ApiException) else repr(exc)
                        self.errors.append(f"{loop.__name__}: {what}")
                        time.sleep(0.5)
        return run

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            for name in list(self.nodes):
                try:
                    self._renew(name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def _stream(self, list_fn: Callable[..., Any]) -> Any:
        w = watch.Watch()
        self._watches.append(w)
        return w.stream(list_fn, timeout_seconds=60)

    def _pod_loop(self) -> None:
        for event in self._stream(self.core.list_pod_for_all_namespaces):
            if self._stop.is_set():
                return
            pod = event["object"]
            if event["type"] == "DELETED" or pod.spec.node_name not in self.nodes:
                continue
            if pod.metadata.deletion_timestamp is not None:
                self._finish_deletion(pod)
            elif pod.status.phase == "Pending":
                self._run(pod)

    def _finish_deletion(self, pod: Any) -> None:
        try:
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _run(self, pod: Any) -> None:
        stamp = now_rfc3339()
        conditions = [{"type": t, "status": "True", "lastTransitionTime": stamp}
                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        containers = [{"name": c.name, "image": c.image, "imageID": f"sim://{c.image}", "containerID": f"sim://{pod.metadata.uid}/{c.name}",
                       "ready": True, "started": True, "restartCount": 0, "state": {"running": {"startedAt": stamp}}}
                      for c in pod.spec.containers]
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
                "phase": "Running", "conditions": conditions, "containerStatuses": containers, "startTime": stamp,
                "hostIP": "10.0.0.1", "podIP": "10.1.0.1", "podIPs": [{"ip": "10.1.0.1"}]}})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def crash_container(self, namespace: str, pod: str, *, failed_s_ago: float = 2.0, exit_code: int = 1, reason: str = "Error") -> int:
        """The pod's container failed ``failed_s_ago`` seconds ago and was restarted. Returns the restart count."""
        current = self.core.read_namespaced_pod_status(pod, namespace)
        statuses = []
        restarts = 0
        for cs in current.status.container_statuses or []:
            restarts = (cs.restart_count or 0) + 1
            statuses.append({"name": cs.name, "image": cs.image, "imageID": cs.image_id, "containerID": cs.container_id,
                             "ready": True, "started": True, "restartCount": restarts,
                             "state": {"running": {"startedAt": now_rfc3339()}},
                             "lastState": {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now_rfc3339(-60),
                                                          "finishedAt": now_rfc3339(-failed_s_ago)}}})
        self.core.patch_namespaced_pod_status(pod, namespace, {"status": {"containerStatuses": statuses}})
        return restarts

    def _claim_loop(self) -> None:
        for event in self._stream(self.core.list_persistent_volume_claim_for_all_namespaces):
            if self._stop.is_set():
                return
            claim = event["object"]
            if event["type"] != "ADDED" or claim.spec.volume_name:
                continue
            name = f"pv-{claim.metadata.namespace}-{claim.metadata.name}"[:253]
            self.core.create_persistent_volume({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": {
                "capacity": {"storage": claim.spec.resources.requests["storage"]}, "accessModes": claim.spec.access_modes,
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": claim.spec.storage_class_name or "",
                "hostPath": {"path": f"/tmp/{name}"},
                "claimRef": {"namespace": claim.metadata.namespace, "name": claim.metadata.name, "uid": claim.metadata.uid}}})
