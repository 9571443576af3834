"""Fixtures of the cluster tests: one real control plane per test session, simulated GPU/spot nodes, the chart's
RBAC, and the operator running under the chart's ServiceAccount.

Without ``$KUBEBUILDER_ASSETS`` (or with an incomplete one) these tests are skipped with the reason; with
``GPUNET_REQUIRE_CLUSTER=1`` (set by ``.ci/run``) that is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import helm_python
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from .actors import OperatorProcess, python_env
from .controlplane import REQUIRE_ENV, ControlPlane, free_port, missing_assets
from .nodes import NodeSimulator

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gpunet-nas"
#: The cluster-wide install (release, namespace) and the namespaced one (watching TEAM_NAMESPACE only).
RELEASE, OPERATOR_NAMESPACE = "nas", "gpunet-system"
TEAM_RELEASE, TEAM_OPERATOR_NAMESPACE, TEAM_NAMESPACE = "team", "team-ops", "team-a"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}-gpunet-nas"
TEAM_OPERATOR_USER = f"system:serviceaccount:{TEAM_OPERATOR_NAMESPACE}:{TEAM_RELEASE}-gpunet-nas"
#: Poll interval and backoff cap of the operator in tests (the chart defaults are 10 s and 300 s).
POLL_S, BACKOFF_MAX_S = 0.5, 8.0
#: The simulated nodes: name -> (GPUs, spot pool). The on-demand GPU node is small so that trainers land on spot.
NODES: dict[str, tuple[int, str | None]] = {
    "cpu-ondemand-0": (0, None), "cpu-spot-eks-0": (0, "eks"),
    "gpu-ondemand-0": (2, None), "gpu-spot-gke-0": (8, "gke"), "gpu-spot-gke-1": (8, "gke"), "gpu-spot-aks-0": (8, "aks"),
    "gpu-spot-eks-0": (8, "eks"), "gpu-spot-eks-1": (8, "eks"),
}


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


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    why = missing_assets(assets)
    if why:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the control plane cannot start: {why}")
        pytest.skip(why)
    keep = os.environ.get("GPUNET_CLUSTER_WORKDIR")  # keep the logs of every process there (for debugging)
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="gpunet-cp-"))
    with ControlPlane.start(workdir, assets, audited_users=(OPERATOR_USER, TEAM_OPERATOR_USER)) as cp:
        yield cp
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(control_plane.admin_kubeconfig), client_configuration=cfg)
    api = client.ApiClient(cfg)
    apply(api, yaml.safe_load((CHART / "crds" / "nassearch.yaml").read_text()))  # what `helm install` does first
    wait_for("the default ServiceAccount", lambda: _exists(lambda: client.CoreV1Api(api).read_namespaced_service_account("default", "default")))
    wait_for("the NASSearch CRD to be served", lambda: _exists(lambda: client.CustomObjectsApi(api).list_cluster_custom_object(
        "nas.gpunet.dev", "v1alpha1", "nassearches")))
    return api


def _exists(read: Callable[[], Any]) -> bool:
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
    wait_for(f"the default ServiceAccount of {name}", lambda: _exists(
        lambda: client.CoreV1Api(api).read_namespaced_service_account("default", name)))


@pytest.fixture(scope="session")
def nodes(admin: client.ApiClient) -> Iterator[NodeSimulator]:
    sim = NodeSimulator(admin)
    for name, (gpus, spot) in NODES.items():
        sim.add_node(name, gpus=gpus, spot=spot, cpu="16" if not gpus else "96")
    sim.start()
    yield sim
    sim.stop()


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
                     log: Path, **extra_env: str) -> OperatorProcess:
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
            "GPUNET_POLL_INTERVAL": str(POLL_S), "GPUNET_POLL_BACKOFF_MAX": str(BACKOFF_MAX_S), **extra_env}
    args = [a if not a.startswith("--liveness=") else f"--liveness=http://127.0.0.1:{free_port()}/healthz" for a in container["args"]]
    return OperatorProcess(args, python_env(**env), log)


@pytest.fixture(scope="session")
def sockets() -> Iterator[Path]:
    """Where the tests' controllers listen (unix sockets; short path: the limit is 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="gn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane, admin: client.ApiClient, nodes: NodeSimulator, sockets: Path) -> Iterator[OperatorProcess]:
    """The cluster-wide operator (chart defaults: ClusterRole, all namespaces, nodes watched)."""
    pod = install_chart(admin, RELEASE, OPERATOR_NAMESPACE, {})
    proc = operator_process(control_plane, admin, pod, OPERATOR_NAMESPACE, sockets, control_plane.workdir / "operator.log")
    proc.start()
    yield proc
    proc.stop()
