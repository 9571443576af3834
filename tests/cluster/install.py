"""Installing the pieces of a cluster test on a running control plane (used by the fixtures in conftest.py and by
benchmarks/operator_scale.py): server-side apply as admin, namespaces and bound claims, the chart rendered with
helm-python-sdk (its RBAC applied, its operator pod run as a local process under the chart's ServiceAccount),
and ``kubectl auth can-i`` as a function.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import helm_python
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from .actors import OperatorProcess, python_env
from .controlplane import ControlPlane, free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gpunet-nas"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {value!r}")
        time.sleep(every)


def exists(read: Callable[[], Any]) -> bool:
    try:
        read()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def apply(api: client.ApiClient, obj: dict[str, Any]) -> Any:
    """Server-side apply one manifest as the test's admin."""
    dyn = DynamicClient(api)
    resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    return dyn.server_side_apply(resource, body=obj, namespace=obj["metadata"].get("namespace"), field_manager="gpunet-tests",
                                 force_conflicts=True)


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    apply(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(f"the default ServiceAccount of {name}", lambda: exists(
        lambda: client.CoreV1Api(api).read_namespaced_service_account("default", name)))


def bound_claim(api: client.ApiClient, namespace: str, name: str, size: str = "100Gi") -> None:
    """A ReadWriteMany claim, bound before any pod needs it (the scheduler would otherwise back off on it)."""
    apply(api, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}}})
    wait_for(f"claim {namespace}/{name} to be bound", lambda: client.CoreV1Api(api).read_namespaced_persistent_volume_claim(
        name, namespace).status.phase == "Bound", timeout=60)


def install_chart(api: client.ApiClient, release: str, namespace: str, values: dict[str, Any]) -> dict[str, Any]:
    """Render the chart with helm-python-sdk and apply everything but the operator Deployment (its pod never runs
    here). Returns the Deployment's pod spec, whose ServiceAccount, arguments and environment the local operator
    gets."""
    ensure_namespace(api, namespace)
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=release, namespace=namespace)
    pod = None
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for obj in (d for d in yaml.safe_load_all(text) if d):
            if obj["kind"] == "Deployment":
                pod = obj["spec"]["template"]["spec"]
                continue
            if obj["kind"] in ("Role", "RoleBinding"):
                ensure_namespace(api, obj["metadata"]["namespace"])
            apply(api, obj)
    assert pod is not None
    return pod


def service_account_kubeconfig(cp: ControlPlane, api: client.ApiClient, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with a token of ServiceAccount ``namespace/account`` (TokenRequest API, 2 h)."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 7200}}
    token = client.CoreV1Api(api).create_namespaced_service_account_token(account, namespace, request).status.token
    return cp.kubeconfig_for_token(token, path)


def operator_process(cp: ControlPlane, api: client.ApiClient, pod: dict[str, Any], namespace: str, sockets: Path,
                     log: Path, *, poll_s: float, backoff_max_s: float, **extra_env: str) -> OperatorProcess:
    """The operator as the chart runs it (its args and env), as a local process under the chart's ServiceAccount."""
    (container,) = pod["containers"]
    kubeconfig = service_account_kubeconfig(cp, api, namespace, pod["serviceAccountName"], log.with_suffix(".kubeconfig"))
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
    env |= {"KUBECONFIG": str(kubeconfig), "GPUNET_CONTROLLER_ADDRESS": f"unix:{sockets}/{{namespace}}.{{name}}:{{port}}",
            "GPUNET_POLL_INTERVAL": str(poll_s), "GPUNET_POLL_BACKOFF_MAX": str(backoff_max_s), **extra_env}
    args = [a if not a.startswith("--liveness=") else f"--liveness=http://127.0.0.1:{free_port()}/healthz" for a in container["args"]]
    return OperatorProcess(args + (["--verbose"] if os.environ.get("GPUNET_CLUSTER_VERBOSE") else []), python_env(**env), log)


def can_i(kubeconfig: str | Path, verb: str, resource: str, *, namespace: str | None = None, group: str = "") -> bool:
    """Whether the user of ``kubeconfig`` may ``verb`` ``resource`` (a SelfSubjectAccessReview, like
    ``kubectl auth can-i``)."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {
            "verb": verb, "resource": resource, "group": group, **({"namespace": namespace} if namespace else {})}}}
        return bool(client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed)


def labelled(api: client.ApiClient, namespace: str, search: str) -> list[str]:
    """``Kind/name`` of every object labelled as a child of ``search`` (Secrets, ConfigMaps, Services, claims,
    Deployments)."""
    selector = f"nas.gpunet.dev/search={search}"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    return [f"{kind}/{o.metadata.name}" for kind, items in (
        ("Secret", core.list_namespaced_secret(namespace, label_selector=selector).items),
        ("ConfigMap", core.list_namespaced_config_map(namespace, label_selector=selector).items),
        ("Service", core.list_namespaced_service(namespace, label_selector=selector).items),
        ("PersistentVolumeClaim", core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items),
        ("Deployment", apps.list_namespaced_deployment(namespace, label_selector=selector).items)) for o in items]
