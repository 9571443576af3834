"""Child manifests of a ``NASSearch``, as plain dicts: pure functions, no server, no kopf.

Every builder takes the search's name, namespace and spec (with defaults, :func:`gpunet_operator.spec.validate`)
and returns one manifest without owner references; the handlers adopt (``kopf.adopt``) and create them.

Pod interface shared with the engine (``python -m gpunet.controller`` and ``python -m gpunet_worker``):
    controller  ``python -m gpunet.controller --spec /etc/gpunet/search.yaml --state-dir <dir> --port 50051``
    trainer     ``python -m gpunet_worker trainer``; profiler ``python -m gpunet_worker profiler``
    env         ``GPUNET_CONTROLLER`` (host:port), ``GPUNET_TOKEN`` (from the Secret), ``GPUNET_WORKER_ID``
                (the pod name, which is also the worker id in leases); profilers also get
                ``GPUNET_LATENCY_BACKEND``, ``GPUNET_LATENCY_DEVICE``, ``GPUNET_LATENCY_PRECISION`` and
                ``GPUNET_LATENCY_BATCH_SIZE`` from ``spec.latency``
    volumes     the shared claim at ``/data`` (state under ``/data/searches/<namespace>/<name>``),
                the spec at ``/etc/gpunet/search.yaml``, a writable ``/tmp``; with TLS (the default) the
                controller's ``tls.crt``/``tls.key`` and the workers' ``ca.crt`` under ``/etc/gpunet-tls``
                (``--tls-cert``/``--tls-key``, ``GPUNET_TLS_CA``)
"""

from __future__ import annotations

import base64
import copy
from typing import Any, Mapping

import yaml

from gpunet import rpc
from gpunet.rpc import tls
from gpunet.spec import parse_latency

from . import API_VERSION, KIND, certs
from .settings import CONTROLLER_PORT, HEALTH_PORT, METRICS_PORT, Settings
from .spec import DEFAULT_STORAGE_SIZE

Manifest = dict[str, Any]

SEARCH_LABEL = "nas.gpunet.dev/search"
COMPONENT_LABEL = "app.kubernetes.io/component"
TOKEN_KEY = "token"
SPEC_KEY = "search.yaml"
DATA_MOUNT = "/data"
SPEC_MOUNT = "/etc/gpunet"
#: Where the controller pod mounts its certificate and key, and the worker pods the CA (from ``<search>-tls``).
TLS_MOUNT = "/etc/gpunet-tls"
#: Environment variables of the pods (the engine's names: gpunet.rpc.ADDRESS_ENV, gpunet.rpc.TOKEN_ENV, and
#: gpunet_worker's worker id).
ENV_CONTROLLER, ENV_TOKEN, ENV_WORKER_ID = rpc.ADDRESS_ENV, rpc.TOKEN_ENV, "GPUNET_WORKER_ID"
CONTROLLER_COMMAND = ("python", "-m", "gpunet.controller")
TRAINER_COMMAND = ("python", "-m", "gpunet_worker", "trainer")
PROFILER_COMMAND = ("python", "-m", "gpunet_worker", "profiler")
#: Seconds a trainer gets between SIGTERM (a spot notice) and SIGKILL to save a checkpoint and release its lease.
TRAINER_GRACE_S = 120
#: Seconds the controller gets between SIGTERM and SIGKILL: enough to save its state. The result files need no
#: grace: they are written in phase Finalizing, before Succeeded, and the operator scales down only after that.
CONTROLLER_GRACE_S = 30
#: User and group of the pods' processes (the worker image's non-root user).
RUN_AS_USER = 1000

#: Node labels of spot/preemptible capacity on the common clouds and autoscalers. The controller never runs on
#: such nodes; trainers with ``spot: true`` tolerate the matching taints.
SPOT_NODE_LABELS: tuple[tuple[str, str], ...] = (
    ("cloud.google.com/gke-spot", "true"),
    ("cloud.google.com/gke-preemptible", "true"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("karpenter.sh/capacity-type", "spot"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
)
SPOT_TOLERATIONS: tuple[Mapping[str, str], ...] = (
    {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    {"key": "cloud.google.com/gke-preemptible", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
    {"key": "karpenter.sh/capacity-type", "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
)


def child_name(search: str, component: str) -> str:
    """``<search>-<component>``, e.g. ``gpunet-imagenet-trainer``."""
    return f"{search}-{component}"


def labels(search: str, component: str) -> dict[str, str]:
    """Labels of every child of ``search``; ``component`` is controller, trainer, profiler, token, ..."""
    return {
        "app.kubernetes.io/name": "gpunet-nas",
        "app.kubernetes.io/instance": search,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "gpunet-nas",
        "app.kubernetes.io/managed-by": "gpunet-operator",
        SEARCH_LABEL: search,
    }


def selector(search: str, component: str) -> dict[str, str]:
    """The labels that select the pods of one component of one search."""
    return {SEARCH_LABEL: search, COMPONENT_LABEL: component}


def _meta(search: str, namespace: str, component: str, name: str | None = None) -> dict[str, Any]:
    return {"name": name or child_name(search, component), "namespace": namespace, "labels": labels(search, component)}


def state_dir(search: str, namespace: str) -> str:
    """Where the search keeps its state on the shared volume (checkpoints, latency table, results)."""
    return f"{DATA_MOUNT}/searches/{namespace}/{search}"


def claim_name(search: str, spec: Mapping[str, Any]) -> str:
    """The claim the pods mount: ``spec.storage.existingClaim`` or ``<search>-data``."""
    return spec.get("storage", {}).get("existingClaim") or child_name(search, "data")


# --- Secret, claim, spec ----------------------------------------------------------------------------------


def build_token_secret(search: str, namespace: str, token: str) -> Manifest:
    """The Secret with the search's gRPC token (``authorization: Bearer <token>`` on every call)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(search, namespace, "token"),
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def build_tls_secret(search: str, namespace: str, material: Mapping[str, bytes]) -> Manifest:
    """The ``kubernetes.io/tls`` Secret of the controller: ``ca.crt``, ``tls.crt``, ``tls.key``
    (:func:`gpunet_operator.certs.issue`)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(search, namespace, "tls"),
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(material[k]).decode() for k in (certs.CA_KEY, certs.CERT_KEY, certs.KEY_KEY)},
    }


def build_certificate(search: str, namespace: str, issuer: str) -> Manifest:
    """A cert-manager ``Certificate`` that writes the controller's TLS Secret (``ca.crt``, ``tls.crt``, ``tls.key``)
    from ``issuer`` (``KIND/NAME``); cert-manager renews it."""
    kind, name = issuer.split("/", 1)
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": _meta(search, namespace, "tls"),
        "spec": {
            "secretName": child_name(search, "tls"),
            "dnsNames": certs.controller_dns_names(search, namespace),
            "usages": ["server auth", "digital signature"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": {"group": "cert-manager.io", "kind": kind, "name": name},
        },
    }


def build_claim(search: str, namespace: str, spec: Mapping[str, Any]) -> Manifest | None:
    """A ReadWriteMany PersistentVolumeClaim for the shared state, or None with ``storage.existingClaim``."""
    storage = spec.get("storage", {})
    if storage.get("existingClaim"):
        return None
    claim: Manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(search, namespace, "data"),
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": str(storage.get("size") or DEFAULT_STORAGE_SIZE)}},
        },
    }
    if storage.get("storageClass"):
        claim["spec"]["storageClassName"] = storage["storageClass"]
    return claim


def build_spec_configmap(search: str, namespace: str, spec: Mapping[str, Any]) -> Manifest:
    """The NASSearch as the controller reads it (``/etc/gpunet/search.yaml``): what the search started with."""
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": search, "namespace": namespace}, "spec": dict(spec)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(search, namespace, "spec"),
        "data": {SPEC_KEY: yaml.safe_dump(doc, sort_keys=False)},
    }


# --- pods ---------------------------------------------------------------------------------------------------


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(search: str, namespace: str, settings: Settings) -> list[dict[str, Any]]:
    env = [
        {"name": ENV_CONTROLLER, "value": f"{certs.server_name(search, namespace)}:{CONTROLLER_PORT}"},
        {"name": ENV_TOKEN, "valueFrom": {"secretKeyRef": {"name": child_name(search, "token"), "key": TOKEN_KEY}}},
        {"name": ENV_WORKER_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if settings.tls:
        env.append({"name": tls.TLS_CA_ENV, "value": f"{TLS_MOUNT}/{certs.CA_KEY}"})
    return env


def _volumes(search: str, spec: Mapping[str, Any], settings: Settings, *, shm: bool,
             tls_keys: tuple[str, ...] = (certs.CA_KEY,)) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": claim_name(search, spec)}},
        {"name": "spec", "configMap": {"name": child_name(search, "spec")}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if shm:  # data-loader workers share batches through /dev/shm
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    if settings.tls:  # only the keys a pod needs: workers never see the controller's private key
        volumes.append({"name": "tls", "secret": {"secretName": child_name(search, "tls"), "defaultMode": 0o440,
                                                  "items": [{"key": k, "path": k} for k in tls_keys]}})
    return volumes


def _mounts(settings: Settings, *, shm: bool) -> list[dict[str, Any]]:
    mounts = [
        {"name": "data", "mountPath": DATA_MOUNT},
        {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if shm:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if settings.tls:
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
    return mounts


def _not_spot_affinity() -> dict[str, Any]:
    """Required node affinity that keeps a pod off every known kind of spot/preemptible node."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": k, "operator": "NotIn", "values": [v]} for k, v in SPOT_NODE_LABELS]}
                ]
            }
        }
    }


def _deployment(
    search: str,
    namespace: str,
    component: str,
    *,
    replicas: int,
    strategy: dict[str, Any],
    pod_spec: dict[str, Any],
) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(search, namespace, component),
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": {"matchLabels": selector(search, component)},
            "template": {"metadata": {"labels": labels(search, component)}, "spec": pod_spec},
        },
    }


def _scheduling(section: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if section.get("nodeSelector"):
        out["nodeSelector"] = dict(section["nodeSelector"])
    if section.get("tolerations"):
        out["tolerations"] = copy.deepcopy(list(section["tolerations"]))
    if section.get("affinity"):
        out["affinity"] = copy.deepcopy(dict(section["affinity"]))
    return out


def _container(name: str, image: str, command: tuple[str, ...], section: Mapping[str, Any], env: list[dict[str, Any]],
               settings: Settings, *, shm: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(command),
        "env": env,
        "volumeMounts": _mounts(settings, shm=shm),
        "securityContext": _container_security(),
    }
    if section.get("resources"):
        container["resources"] = copy.deepcopy(dict(section["resources"]))
    return container


def build_controller_deployment(search: str, namespace: str, spec: Mapping[str, Any], settings: Settings) -> Manifest:
    """The search controller: one replica, ``Recreate`` (never two controllers on one state), never on spot."""
    section = spec.get("controller", {})
    command = (*CONTROLLER_COMMAND, "--spec", f"{SPEC_MOUNT}/{SPEC_KEY}", "--state-dir", state_dir(search, namespace),
               "--port", str(CONTROLLER_PORT), "--metrics-port", str(METRICS_PORT), "--health-port", str(HEALTH_PORT))
    if settings.tls:
        command += ("--tls-cert", f"{TLS_MOUNT}/{certs.CERT_KEY}", "--tls-key", f"{TLS_MOUNT}/{certs.KEY_KEY}")
    env = [e for e in _env(search, namespace, settings) if e["name"] == ENV_TOKEN]
    container = _container("controller", section.get("image") or settings.worker_image, command, section, env, settings, shm=False)
    container["ports"] = [{"name": "grpc", "containerPort": CONTROLLER_PORT, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                          {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}]
    # gRPC health checking (grpc.health.v1): ready while the search service says SERVING, alive while the process
    # answers at all. A failed search stays ready: its status must stay readable.
    container["readinessProbe"] = {"grpc": {"port": HEALTH_PORT, "service": rpc.SERVICE_NAME}, "periodSeconds": 5}
    container["livenessProbe"] = {"grpc": {"port": HEALTH_PORT}, "periodSeconds": 20, "failureThreshold": 6}
    pod_spec = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "affinity": _not_spot_affinity(),
        "terminationGracePeriodSeconds": CONTROLLER_GRACE_S,
        "containers": [container],
        "volumes": _volumes(search, spec, settings, shm=False, tls_keys=(certs.CERT_KEY, certs.KEY_KEY)),
    }
    return _deployment(search, namespace, "controller", replicas=1, strategy={"type": "Recreate"}, pod_spec=pod_spec)


def build_controller_service(search: str, namespace: str) -> Manifest:
    """The ClusterIP Service of the controller: its gRPC port and its Prometheus port (``metrics``, which the
    chart's optional ServiceMonitor scrapes)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(search, namespace, "controller"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(search, "controller"),
            "ports": [{"name": "grpc", "port": CONTROLLER_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
                      {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"}],
        },
    }


def build_profiler_deployment(search: str, namespace: str, spec: Mapping[str, Any], settings: Settings, replicas: int) -> Manifest:
    """The latency profilers (GPUNet paper, section 3.2): they fill the latency table, then scale to 0."""
    section = spec.get("profilers", {})
    latency = parse_latency(spec.get("latency"))
    env = _env(search, namespace, settings) + [
        {"name": "GPUNET_LATENCY_BACKEND", "value": latency.backend},
        {"name": "GPUNET_LATENCY_DEVICE", "value": latency.device},
        {"name": "GPUNET_LATENCY_PRECISION", "value": latency.precision},
        {"name": "GPUNET_LATENCY_BATCH_SIZE", "value": str(latency.batch_size)},
    ]
    container = _container("profiler", section.get("image") or settings.worker_image, PROFILER_COMMAND, section,
                           env, settings, shm=False)
    pod_spec = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": _volumes(search, spec, settings, shm=False),
        **_scheduling(section),
    }
    return _deployment(search, namespace, "profiler", replicas=replicas,
                       strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}, pod_spec=pod_spec)


def build_trainer_deployment(search: str, namespace: str, spec: Mapping[str, Any], settings: Settings, replicas: int) -> Manifest:
    """The elastic trainer pool: ``replicas`` is set by the operator (min(maxReplicas, queued + running)).

    With ``spot: true`` the pods tolerate the well-known spot taints; on SIGTERM a trainer saves its epoch
    checkpoint and releases its lease within ``TRAINER_GRACE_S`` seconds.
    """
    section = spec.get("trainers", {})
    container = _container("trainer", section.get("image") or settings.worker_image, TRAINER_COMMAND, section,
                           _env(search, namespace, settings), settings, shm=True)
    scheduling = _scheduling(section)
    if section.get("spot", True):
        tolerations = scheduling.setdefault("tolerations", [])
        tolerations += [dict(t) for t in SPOT_TOLERATIONS if dict(t) not in tolerations]
    pod_spec = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": TRAINER_GRACE_S,
        "containers": [container],
        "volumes": _volumes(search, spec, settings, shm=True),
        **scheduling,
    }
    if section.get("priorityClassName"):
        pod_spec["priorityClassName"] = section["priorityClassName"]
    return _deployment(search, namespace, "trainer", replicas=replicas,
                       strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}}, pod_spec=pod_spec)


def build_network_policy(search: str, namespace: str, settings: Settings) -> Manifest:
    """Only this search's own pods (and the operator) may reach its controller's gRPC port; its metrics port is
    open to scrapers and its health port to the kubelet's probes (it says SERVING or NOT_SERVING, nothing else)."""
    operator_peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(settings.operator_labels)}}
    if settings.operator_namespace:
        operator_peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(search, namespace, "controller"),
        "spec": {
            "podSelector": {"matchLabels": selector(search, "controller")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {SEARCH_LABEL: search}}}, operator_peer],
                    "ports": [{"port": CONTROLLER_PORT, "protocol": "TCP"}],
                },
                {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}, {"port": HEALTH_PORT, "protocol": "TCP"}]},
            ],
        },
    }


def build_children(search: str, namespace: str, spec: Mapping[str, Any], settings: Settings, token: str,
                   tls_material: Mapping[str, bytes] | None = None) -> list[Manifest]:
    """Every child of a new search, in creation order: profilers start at ``profilers.replicas``, trainers at 0.

    ``tls_material`` (:func:`gpunet_operator.certs.issue`) is the TLS Secret's content in mode ``self-signed``;
    mode ``cert-manager`` makes a ``Certificate`` instead, and mode ``off`` neither.

    Raises:
        ValueError: mode ``self-signed`` without ``tls_material``.
    """
    children = [build_token_secret(search, namespace, token)]
    if settings.tls_mode == "self-signed":
        if not certs.complete(tls_material):
            raise ValueError("TLS mode self-signed needs the search's TLS material (ca.crt, tls.crt, tls.key)")
        children.append(build_tls_secret(search, namespace, tls_material))
    elif settings.tls_mode == "cert-manager":
        children.append(build_certificate(search, namespace, settings.cert_manager_issuer))
    claim = build_claim(search, namespace, spec)
    if claim is not None:
        children.append(claim)
    children += [
        build_spec_configmap(search, namespace, spec),
        build_controller_deployment(search, namespace, spec, settings),
        build_controller_service(search, namespace),
        build_profiler_deployment(search, namespace, spec, settings, replicas=spec.get("profilers", {}).get("replicas", 1)),
        build_trainer_deployment(search, namespace, spec, settings, replicas=0),
    ]
    if settings.network_policy:
        children.append(build_network_policy(search, namespace, settings))
    return children
