"""Fixtures of the cluster tests: one real control plane per test session, simulated GPU/spot nodes, the chart's
RBAC, and the operator running under the chart's ServiceAccount.

Without ``$KUBEBUILDER_ASSETS`` (or with an incomplete one) these tests are skipped with the reason; with
``GPUNET_REQUIRE_CLUSTER=1`` (set by ``.ci/run``) that is a failure instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from kubernetes import client, config

from . import install
from .actors import OperatorProcess
from .controlplane import REQUIRE_ENV, ControlPlane, missing_assets
from .install import CHART, apply, exists, install_chart, wait_for
from .nodes import NodeSimulator
#: The cluster-wide install (release, namespace) and the namespaced one (watching TEAM_NAMESPACE only).
RELEASE, OPERATOR_NAMESPACE = "nas", "gpunet-system"
TEAM_RELEASE, TEAM_OPERATOR_NAMESPACE, TEAM_NAMESPACE = "team", "team-ops", "team-a"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}-gpunet-nas"
TEAM_OPERATOR_USER = f"system:serviceaccount:{TEAM_OPERATOR_NAMESPACE}:{TEAM_RELEASE}-gpunet-nas"
#: Poll interval and backoff cap of the operator in tests (the chart defaults are 10 s and 300 s).
POLL_S, BACKOFF_MAX_S = 0.5, 8.0
#: The operator as the chart runs it, with the tests' poll timers.
operator_process = functools.partial(install.operator_process, poll_s=POLL_S, backoff_max_s=BACKOFF_MAX_S)
#: The simulated nodes: name -> (GPUs, spot pool). The on-demand GPU node is small so that trainers land on spot.
NODES: dict[str, tuple[int, str | None]] = {
    "cpu-ondemand-0": (0, None), "cpu-spot-eks-0": (0, "eks"),
    "gpu-ondemand-0": (2, None), "gpu-spot-gke-0": (8, "gke"), "gpu-spot-gke-1": (8, "gke"), "gpu-spot-aks-0": (8, "aks"),
    "gpu-spot-eks-0": (8, "eks"), "gpu-spot-eks-1": (8, "eks"),
}


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
    for path in sorted((CHART / "crds").glob("*.yaml")):  # what `helm install` does first
        for crd in (d for d in yaml.safe_load_all(path.read_text()) if d):
            apply(api, crd)
    wait_for("the default ServiceAccount", lambda: exists(lambda: client.CoreV1Api(api).read_namespaced_service_account("default", "default")))
    for group, version, plural in (("nas.gpunet.dev", "v1alpha1", "nassearches"), ("kopf.dev", "v1", "kopfpeerings")):
        wait_for(f"the {plural} CRD to be served", lambda: exists(lambda: client.CustomObjectsApi(api).list_cluster_custom_object(
            group, version, plural)))
    return api


@pytest.fixture(scope="session")
def nodes(admin: client.ApiClient) -> Iterator[NodeSimulator]:
    sim = NodeSimulator(admin)
    for name, (gpus, spot) in NODES.items():
        sim.add_node(name, gpus=gpus, spot=spot, cpu="16" if not gpus else "96")
    sim.start()
    yield sim
    sim.stop()


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


