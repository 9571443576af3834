"""The Helm chart charts/gpunet-nas, rendered offline with helm-python-sdk (Helm's Go SDK): default values and
each toggle give valid manifests, least-privilege RBAC without wildcards, locked-down pods, documented values,
and CRDs identical to crds/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gpunet-nas"
K8S_VERSION = kubernetes_validate.latest_version()
RELEASE, NAMESPACE = "nas", "gpunet-system"

TOGGLES: dict[str, dict[str, Any] | None] = {
    "defaults": None,
    "rbac-off": {"rbac": {"create": False}},
    "namespaced": {"rbac": {"scope": "namespaced", "watchNamespaces": ["team-a", "team-b"]}},
    "network-policy-off": {"networkPolicy": {"enabled": False}},
    "cert-manager": {"tls": {"mode": "cert-manager", "certManager": {"issuer": "ClusterIssuer/internal-ca"}}},
    "two-replicas": {"replicas": 2},
    "namespaced-peering": {"rbac": {"scope": "namespaced", "watchNamespaces": ["team-a"]}, "peering": {"enabled": True}},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}
#: Kinds of CRDs (kopf's peering, the Prometheus Operator's ServiceMonitor) that kubernetes-validate has no schema of.
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "ServiceMonitor"}


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None) -> tuple[list[dict[str, Any]], str]:
    """The rendered objects and NOTES.txt."""
    files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    objects, notes = [], ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects, notes


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_every_rendered_manifest_validates(chart: Any, toggle: str) -> None:
    objects, notes = render(chart, TOGGLES[toggle])
    assert objects
    for obj in objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert "kubectl get nassearch" in notes


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_no_rbac_rule_uses_a_wildcard(chart: Any, toggle: str) -> None:
    objects, _ = render(chart, TOGGLES[toggle])
    for obj in objects:
        for rule in obj.get("rules") or []:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(key) or []), (obj["kind"], rule)


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_every_pod_runs_locked_down(chart: Any, toggle: str) -> None:
    objects, _ = render(chart, TOGGLES[toggle])
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")]
    assert [w["kind"] for w in workloads] == ["Deployment"]
    for workload in workloads:
        if workload["spec"]["replicas"] == 1 and "--standalone" in workload["spec"]["template"]["spec"]["containers"][0]["args"]:
            assert workload["spec"]["strategy"] == {"type": "Recreate"}  # never two standalone operators
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["runAsNonRoot"] is True
            assert ctx["capabilities"]["drop"] == ["ALL"]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return container


def test_default_install_is_cluster_wide_with_a_cluster_role(chart: Any) -> None:
    objects, _ = render(chart, None)
    assert kinds(objects) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy", "ServiceAccount"]
    (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"nassearches", "nassearches/status", "deployments", "pods", "nodes", "events", "secrets", "networkpolicies"} <= resources
    assert "certificates" not in resources
    container = _container(objects)
    assert "--all-namespaces" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # secure by default: a NetworkPolicy per search and TLS with a CA per search
    assert env["GPUNET_WATCH_NODES"] == "true" and env["GPUNET_NETWORK_POLICY"] == "true"
    assert env["GPUNET_TLS_MODE"] == "self-signed" and "GPUNET_CERT_MANAGER_ISSUER" not in env


def test_rbac_can_be_left_to_the_user(chart: Any) -> None:
    objects, _ = render(chart, TOGGLES["rbac-off"])
    assert kinds(objects) == ["Deployment", "NetworkPolicy", "ServiceAccount"]


def test_namespaced_mode_uses_roles_in_the_watched_namespaces_only(chart: Any) -> None:
    objects, _ = render(chart, TOGGLES["namespaced"])
    assert kinds(objects) == ["Deployment", "NetworkPolicy", "Role", "Role", "RoleBinding", "RoleBinding", "ServiceAccount"]
    assert sorted(o["metadata"]["namespace"] for o in objects if o["kind"] == "Role") == ["team-a", "team-b"]
    for role in (o for o in objects if o["kind"] == "Role"):
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert "nodes" not in resources and "customresourcedefinitions" not in resources
    container = _container(objects)
    assert "--namespace=team-a" in container["args"] and "--namespace=team-b" in container["args"]
    assert "--all-namespaces" not in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPUNET_WATCH_NODES"] == "false" and env["GPUNET_KOPF_SCANNING"] == "false"


def test_network_policy_toggle(chart: Any) -> None:
    objects, _ = render(chart, None)
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    assert any("networkpolicies" in rule["resources"] and "create" in rule["verbs"] for rule in role["rules"])
    objects, _ = render(chart, TOGGLES["network-policy-off"])
    assert "NetworkPolicy" not in kinds(objects)
    env = {e["name"]: e.get("value") for e in _container(objects)["env"]}
    assert env["GPUNET_NETWORK_POLICY"] == "false"


def test_cert_manager_mode_names_its_issuer_and_may_create_certificates(chart: Any) -> None:
    objects, _ = render(chart, TOGGLES["cert-manager"])
    env = {e["name"]: e.get("value") for e in _container(objects)["env"]}
    assert env["GPUNET_TLS_MODE"] == "cert-manager" and env["GPUNET_CERT_MANAGER_ISSUER"] == "ClusterIssuer/internal-ca"
    (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    (rule,) = [r for r in role["rules"] if "certificates" in r["resources"]]
    assert rule["apiGroups"] == ["cert-manager.io"] and set(rule["verbs"]) == {"get", "create", "patch"}


def test_rbac_rules_are_commented_framework_or_application() -> None:
    """Every rule (or group of adjacent rules) is preceded by a comment saying framework or application."""
    lines = [line.strip() for line in (CHART / "templates" / "rbac.yaml").read_text().splitlines()]
    rules = [i for i, line in enumerate(lines) if line.startswith("- apiGroups:")]
    assert len(rules) >= 8
    for i in rules:
        j = i - 1
        while j >= 0 and not lines[j].startswith("#"):
            j -= 1
        block = []
        while j >= 0 and lines[j].startswith("#"):
            block.append(lines[j])
            j -= 1
        assert any("framework" in c or "application" in c for c in block), lines[i]


def test_every_value_is_documented() -> None:
    """Every value of values.yaml carries a `# --` comment (helm-docs): on itself, or on the mapping holding it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = []  # (indent, name, documented, line index)
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#") and not lines[j].lstrip().startswith("# --"):
            j -= 1
        keys.append((len(m.group(1)), m.group(2), j >= 0 and lines[j].lstrip().startswith("# --"), i))
    undocumented = []
    for n, (indent, name, documented, _) in enumerate(keys):
        is_parent = n + 1 < len(keys) and keys[n + 1][0] > indent
        if is_parent or documented:
            continue
        ancestors, level = [], indent
        for other in reversed(keys[:n]):
            if other[0] < level:
                ancestors.append(other)
                level = other[0]
        if not any(a[2] for a in ancestors):
            undocumented.append(name)
    assert len(keys) > 20
    assert not undocumented, undocumented


def test_chart_crds_are_generated_from_the_source_of_truth(chart: Any) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "charts" / "sync-crds.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shipped = [d for crd in chart.crds for d in yaml.safe_load_all(crd["data"]) if d]
    sources = [d for p in sorted((ROOT / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert sorted(shipped, key=str) == sorted(sources, key=str)
    assert {d["metadata"]["name"] for d in shipped} == {"nassearches.nas.gpunet.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_two_replicas_run_with_peering_and_one_peering_object(chart: Any) -> None:
    objects, _ = render(chart, TOGGLES["two-replicas"])
    (dep,) = [o for o in objects if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    args = _container(objects)["args"]
    assert "--peering=gpunet-nas" in args and "--standalone" not in args
    (peering,) = [o for o in objects if o["kind"] == "ClusterKopfPeering"]
    assert peering["metadata"]["name"] == "gpunet-nas"
    (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    assert any("clusterkopfpeerings" in r["resources"] and "patch" in r["verbs"] for r in role["rules"])
    objects, _ = render(chart, TOGGLES["namespaced-peering"])
    assert [(o["kind"], o["metadata"]["namespace"]) for o in objects if o["kind"] == "KopfPeering"] == [("KopfPeering", "team-a")]


def test_default_install_is_one_standalone_operator(chart: Any) -> None:
    objects, _ = render(chart, None)
    (dep,) = [o for o in objects if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1 and "--standalone" in _container(objects)["args"]
    assert not [o for o in objects if o["kind"] in CUSTOM_KINDS]


def test_service_monitor_scrapes_the_controllers_metrics_port(chart: Any) -> None:
    from gpunet_operator import builders

    objects, _ = render(chart, TOGGLES["service-monitor"])
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = builders.build_controller_service("s", "research")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"][k] == v for k, v in selected.items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]] and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_drift_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "charts"))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("sync_crds", ROOT / "charts" / "sync-crds.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "nassearch.yaml").write_text("kind: CustomResourceDefinition\n")
    monkeypatch.setattr(module, "SOURCE", tmp_path / "src")
    monkeypatch.setattr(module, "TARGET", tmp_path / "chart")
    assert module.drift() == ["nassearch.yaml"]
    assert module.main([]) == 0
    assert module.drift() == []
    (tmp_path / "chart" / "nassearch.yaml").write_text("edited by hand\n")
    assert module.main(["--check"]) == 1


def test_chart_lints_clean() -> None:
    report = helm_python.lint(CHART, strict=True)
    assert report["errors"] == []
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def test_an_unknown_rbac_scope_is_refused(chart: Any) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="rbac.scope"):
        chart.render(values={"rbac": {"scope": "everywhere"}}, name=RELEASE, namespace=NAMESPACE)
