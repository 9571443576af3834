"""Operator settings, read once from the environment (the Helm chart sets them; see its values.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from gpunet.errors import GpunetError

#: Port of the search-controller's gRPC service (container and Service).
CONTROLLER_PORT = 50051
#: Port of the search-controller's Prometheus ``/metrics`` (container and Service, port name ``metrics``).
METRICS_PORT = 9090
#: Plaintext port of the controller's ``grpc.health.v1`` service alone, for the kubelet's ``grpc:`` probes (which
#: speak neither TLS nor tokens, and take a port number, not a name).
HEALTH_PORT = 50052

#: Taint keys that announce a spot/preemptible node going away (cloud notices and node-termination handlers).
DEFAULT_PREEMPTION_TAINTS: tuple[str, ...] = (
    "cloud.google.com/impending-node-termination",  # GKE spot/preemptible notice
    "aws-node-termination-handler/spot-itn",  # AWS Node Termination Handler, spot interruption notice
    "aws-node-termination-handler/rebalance-recommendation",
    "kubernetes.azure.com/scalesetpriority-evicted",
    "karpenter.sh/disrupted",  # Karpenter is draining the node
    "node.kubernetes.io/out-of-service",  # the node was shut down (non-graceful node shutdown)
    "ToBeDeletedByClusterAutoscaler",
)


#: How the controller's gRPC port is secured (``GPUNET_TLS_MODE``): ``self-signed`` (a CA per search, made by the
#: operator, :mod:`.certs`), ``cert-manager`` (a cert-manager ``Certificate`` from ``cert_manager_issuer``) or
#: ``off`` (plaintext; the token then crosses the network in clear).
TLS_MODES = ("self-signed", "cert-manager", "off")


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """What the operator needs beyond the NASSearch itself.

    Attributes:
        worker_image: image of the controller, trainer and profiler pods when the spec names none
            (``GPUNET_WORKER_IMAGE``).
        image_pull_policy: ``GPUNET_IMAGE_PULL_POLICY`` (IfNotPresent).
        poll_interval_s: seconds between two status polls of a search's controller (``GPUNET_POLL_INTERVAL``).
        poll_backoff_max_s: while a controller is unreachable the poll interval doubles up to this many seconds
            (``GPUNET_POLL_BACKOFF_MAX``), so an unreachable controller never makes a hot loop.
        grpc_timeout_s: deadline of one gRPC call to a controller (``GPUNET_GRPC_TIMEOUT``).
        controller_address: ``str.format`` template of a controller's gRPC address with ``name``, ``namespace``
            and ``port`` (``GPUNET_CONTROLLER_ADDRESS``); the default is the in-cluster Service DNS name. The
            override is for out-of-cluster runs and tests: e.g. ``127.0.0.1:{port}`` behind a
            ``kubectl port-forward``, or ``unix:/run/gpunet/{namespace}.{name}:{port}`` for controllers started
            as local processes on unix sockets (gRPC target syntax).
        status_budget_bytes: byte budget of the per-candidate list in ``.status`` (``GPUNET_STATUS_BUDGET``).
        max_candidates: records asked from the controller per poll (``GPUNET_STATUS_MAX_CANDIDATES``).
        watch_nodes: watch Nodes for preemption taints and deletions (``GPUNET_WATCH_NODES``; needs the
            cluster-wide RBAC of the chart; namespaced installs rely on pod conditions only).
        network_policy: create a NetworkPolicy per search that admits only its own pods (and the operator) to
            its controller (``GPUNET_NETWORK_POLICY``, on by default).
        tls_mode: one of :data:`TLS_MODES` (``GPUNET_TLS_MODE``, default ``self-signed``).
        cert_manager_issuer: ``KIND/NAME`` of the cert-manager issuer in mode ``cert-manager``
            (``GPUNET_CERT_MANAGER_ISSUER``, e.g. ``ClusterIssuer/internal-ca``).
        operator_namespace / operator_labels: where the operator runs and its pod labels, for that policy.
        preemption_taints: node taint keys that mean "this node is being reclaimed" (``GPUNET_PREEMPTION_TAINTS``,
            comma-separated, replaces the default list).
        peering_lifetime_s: how long a replica's kopf peering keep-alive lasts (``GPUNET_PEERING_LIFETIME``): a
            standby replica takes over this long after the active one died (with ``--peering``).
        scanning: let kopf watch CRDs and namespaces (``GPUNET_KOPF_SCANNING``); off in namespaced installs,
            which have no cluster-wide read permissions.
    """

    worker_image: str = "ghcr.io/gpunet-nas/worker:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    poll_interval_s: float = 10.0
    poll_backoff_max_s: float = 300.0
    grpc_timeout_s: float = 5.0
    controller_address: str = "{name}-controller.{namespace}.svc:{port}"
    status_budget_bytes: int = 256 * 1024
    max_candidates: int = 5000
    watch_nodes: bool = True
    network_policy: bool = True
    tls_mode: str = "self-signed"
    cert_manager_issuer: str = ""
    operator_namespace: str = ""
    operator_labels: Mapping[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "gpunet-nas"})
    preemption_taints: tuple[str, ...] = DEFAULT_PREEMPTION_TAINTS
    peering_lifetime_s: int = 60
    scanning: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        d = cls()
        taints = env.get("GPUNET_PREEMPTION_TAINTS")
        labels = env.get("GPUNET_OPERATOR_LABELS")
        return cls(
            worker_image=env.get("GPUNET_WORKER_IMAGE") or d.worker_image,
            image_pull_policy=env.get("GPUNET_IMAGE_PULL_POLICY") or d.image_pull_policy,
            poll_interval_s=float(env.get("GPUNET_POLL_INTERVAL") or d.poll_interval_s),
            poll_backoff_max_s=float(env.get("GPUNET_POLL_BACKOFF_MAX") or d.poll_backoff_max_s),
            grpc_timeout_s=float(env.get("GPUNET_GRPC_TIMEOUT") or d.grpc_timeout_s),
            controller_address=env.get("GPUNET_CONTROLLER_ADDRESS") or d.controller_address,
            status_budget_bytes=int(env.get("GPUNET_STATUS_BUDGET") or d.status_budget_bytes),
            max_candidates=int(env.get("GPUNET_STATUS_MAX_CANDIDATES") or d.max_candidates),
            watch_nodes=_bool(env.get("GPUNET_WATCH_NODES"), d.watch_nodes),
            network_policy=_bool(env.get("GPUNET_NETWORK_POLICY"), d.network_policy),
            tls_mode=env.get("GPUNET_TLS_MODE") or d.tls_mode,
            cert_manager_issuer=env.get("GPUNET_CERT_MANAGER_ISSUER") or d.cert_manager_issuer,
            operator_namespace=env.get("GPUNET_OPERATOR_NAMESPACE") or d.operator_namespace,
            operator_labels=dict(kv.split("=", 1) for kv in labels.split(",") if "=" in kv) if labels else d.operator_labels,
            preemption_taints=tuple(t.strip() for t in taints.split(",") if t.strip()) if taints else d.preemption_taints,
            peering_lifetime_s=int(env.get("GPUNET_PEERING_LIFETIME") or d.peering_lifetime_s),
            scanning=_bool(env.get("GPUNET_KOPF_SCANNING"), d.scanning),
        )

    def __post_init__(self) -> None:
        if self.tls_mode not in TLS_MODES:
            raise GpunetError("GPUNET_TLS_MODE", self.tls_mode, TLS_MODES)
        if self.tls_mode == "cert-manager" and self.cert_manager_issuer.count("/") != 1:
            raise GpunetError("GPUNET_CERT_MANAGER_ISSUER", self.cert_manager_issuer,
                              "KIND/NAME of a cert-manager issuer (e.g. ClusterIssuer/internal-ca) with GPUNET_TLS_MODE=cert-manager")

    @property
    def tls(self) -> bool:
        """True when the controllers serve TLS."""
        return self.tls_mode != "off"

    def controller_address_of(self, name: str, namespace: str) -> str:
        """``host:port`` of the controller of search ``namespace/name``."""
        return self.controller_address.format(name=name, namespace=namespace, port=CONTROLLER_PORT)
