"""The operator's child manifests, built without a server: each validates (kubernetes-validate, strict, a recent
Kubernetes) and has the properties the runtime relies on (one Recreate controller off spot nodes, spot-tolerant
trainers, locked-down pods, owner references)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import kubernetes_validate
import pytest
import yaml

from gpunet.spec import parse_search
from gpunet_operator import builders, certs
from gpunet_operator.settings import CONTROLLER_PORT, HEALTH_PORT, METRICS_PORT, Settings
from gpunet_operator.spec import validate

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = kubernetes_validate.latest_version()
SETTINGS = Settings(worker_image="registry.example/gpunet-worker:1", operator_namespace="gpunet-system")
NS = "research"


def example() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "search.yaml").read_text())


def full_spec(**changes: Any) -> dict[str, Any]:
    spec = example()["spec"]
    for section, value in changes.items():
        spec[section] = value
    return validate("gpunet-imagenet", NS, spec)


def assert_valid(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def assert_locked_down(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}


def test_token_secret_holds_the_token() -> None:
    secret = builders.build_token_secret("gpunet-imagenet", NS, "s3cr3t")
    assert_valid(secret)
    assert base64.b64decode(secret["data"][builders.TOKEN_KEY]).decode() == "s3cr3t"
    assert secret["metadata"]["labels"][builders.SEARCH_LABEL] == "gpunet-imagenet"


def test_claim_is_created_with_size_and_class_or_skipped_for_an_existing_claim() -> None:
    spec = full_spec(storage={"size": "500Gi", "storageClass": "filestore"})
    claim = builders.build_claim("s", NS, spec)
    assert_valid(claim)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "500Gi"
    assert claim["spec"]["storageClassName"] == "filestore"
    assert builders.build_claim("s", NS, full_spec(storage={})) ["spec"]["resources"]["requests"]["storage"] == "20Gi"
    existing = full_spec(storage={"existingClaim": "imagenet-rwx"})
    assert builders.build_claim("s", NS, existing) is None
    dep = builders.build_trainer_deployment("s", NS, existing, SETTINGS, replicas=1)
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "imagenet-rwx"}} in pod_spec(dep)["volumes"]


def test_spec_configmap_is_what_the_controller_parses() -> None:
    spec = full_spec()
    cm = builders.build_spec_configmap("gpunet-imagenet", NS, spec)
    assert_valid(cm)
    doc = yaml.safe_load(cm["data"][builders.SPEC_KEY])
    parsed = parse_search(doc)
    assert parsed.name == "gpunet-imagenet"
    assert parsed.latency.tiers == (0.65, 0.85)


def test_controller_is_one_recreated_replica_never_on_spot_nodes() -> None:
    dep = builders.build_controller_deployment("gpunet-imagenet", NS, full_spec(), SETTINGS)
    assert_valid(dep)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = pod_spec(dep)
    assert_locked_down(pod)
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    excluded = {(e["key"], e["values"][0]) for e in term["matchExpressions"] if e["operator"] == "NotIn"}
    assert excluded == set(builders.SPOT_NODE_LABELS)
    assert "tolerations" not in pod
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/gpunet-nas/worker:0.1.0"  # from the spec
    assert container["ports"] == [{"name": "grpc", "containerPort": CONTROLLER_PORT, "protocol": "TCP"},
                                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                                  {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}]
    assert container["command"] == ["python", "-m", "gpunet.controller", "--spec", "/etc/gpunet/search.yaml",
                                    "--state-dir", "/data/searches/research/gpunet-imagenet", "--port", str(CONTROLLER_PORT),
                                    "--metrics-port", str(METRICS_PORT), "--health-port", str(HEALTH_PORT),
                                    "--tls-cert", "/etc/gpunet-tls/tls.crt", "--tls-key", "/etc/gpunet-tls/tls.key"]
    # the controller mounts its own certificate and key from the search's TLS Secret, and nothing else of it
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "gpunet-imagenet-tls"
    assert [i["key"] for i in tls["secret"]["items"]] == ["tls.crt", "tls.key"]
    assert {"name": "tls", "mountPath": "/etc/gpunet-tls", "readOnly": True} in container["volumeMounts"]
    # gRPC health checking: the kubelet's grpc probes take a port number (not a name) and speak plaintext
    assert container["readinessProbe"]["grpc"] == {"port": HEALTH_PORT, "service": "gpunet.nas.v1.SearchControllerService"}
    assert container["livenessProbe"]["grpc"] == {"port": HEALTH_PORT}
    env = {e["name"]: e for e in container["env"]}
    assert env["GPUNET_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "gpunet-imagenet-token", "key": "token"}


def test_controller_service_selects_only_the_controller_pod() -> None:
    svc = builders.build_controller_service("gpunet-imagenet", NS)
    assert_valid(svc)
    assert svc["spec"]["selector"] == {builders.SEARCH_LABEL: "gpunet-imagenet", builders.COMPONENT_LABEL: "controller"}
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("grpc", CONTROLLER_PORT, "grpc"), ("metrics", METRICS_PORT, "metrics")]  # the chart's ServiceMonitor scrapes "metrics"
    dep = builders.build_controller_deployment("gpunet-imagenet", NS, full_spec(), SETTINGS)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())


def test_trainers_tolerate_spot_nodes_and_name_themselves_after_their_pod() -> None:
    spec = full_spec()
    spec["trainers"]["priorityClassName"] = "nas-low"
    dep = builders.build_trainer_deployment("gpunet-imagenet", NS, spec, SETTINGS, replicas=3)
    assert_valid(dep)
    assert dep["spec"]["replicas"] == 3
    pod = pod_spec(dep)
    assert_locked_down(pod)
    assert pod["priorityClassName"] == "nas-low"
    assert pod["terminationGracePeriodSeconds"] == builders.TRAINER_GRACE_S
    for toleration in builders.SPOT_TOLERATIONS:
        assert dict(toleration) in pod["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    env = {e["name"]: e for e in container["env"]}
    assert env["GPUNET_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["GPUNET_CONTROLLER"]["value"] == f"gpunet-imagenet-controller.{NS}.svc:{CONTROLLER_PORT}"
    assert container["command"] == ["python", "-m", "gpunet_worker", "trainer"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # workers get the search's CA to check the controller's certificate, never its private key
    assert env["GPUNET_TLS_CA"]["value"] == "/etc/gpunet-tls/ca.crt"
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]

    on_demand = full_spec(trainers={**spec["trainers"], "spot": False, "tolerations": []})
    pod = pod_spec(builders.build_trainer_deployment("gpunet-imagenet", NS, on_demand, SETTINGS, replicas=0))
    assert "tolerations" not in pod


def test_profilers_use_their_own_scheduling_and_the_default_image() -> None:
    spec = full_spec()
    del spec["profilers"]["image"]
    dep = builders.build_profiler_deployment("gpunet-imagenet", NS, spec, SETTINGS, replicas=2)
    assert_valid(dep)
    pod = pod_spec(dep)
    assert_locked_down(pod)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["containers"][0]["image"] == SETTINGS.worker_image
    assert pod["containers"][0]["command"] == ["python", "-m", "gpunet_worker", "profiler"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert (env["GPUNET_LATENCY_BACKEND"], env["GPUNET_LATENCY_DEVICE"], env["GPUNET_LATENCY_PRECISION"]) == ("tensorrt", "cuda", "fp16")


def test_network_policy_admits_only_the_search_pods_and_the_operator() -> None:
    policy = builders.build_network_policy("gpunet-imagenet", NS, SETTINGS)
    assert_valid(policy)
    assert policy["spec"]["podSelector"]["matchLabels"][builders.COMPONENT_LABEL] == "controller"
    rule, metrics = policy["spec"]["ingress"]
    # open to scrapers and to the kubelet's probes
    assert metrics == {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}, {"port": HEALTH_PORT, "protocol": "TCP"}]}
    search_peer, operator_peer = rule["from"]
    assert search_peer == {"podSelector": {"matchLabels": {builders.SEARCH_LABEL: "gpunet-imagenet"}}}
    assert operator_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "gpunet-system"}
    assert rule["ports"] == [{"port": CONTROLLER_PORT, "protocol": "TCP"}]


@pytest.mark.parametrize("network_policy", [False, True])
def test_adopted_children_validate_and_point_at_their_search(network_policy: bool) -> None:
    settings = Settings(network_policy=network_policy)
    assert Settings().network_policy and Settings().tls_mode == "self-signed"  # the defaults
    owner = {"apiVersion": "nas.gpunet.dev/v1alpha1", "kind": "NASSearch",
             "metadata": {"name": "gpunet-imagenet", "namespace": NS, "uid": "0b5e-11"}}
    material = certs.issue("gpunet-imagenet", NS)
    children = builders.build_children("gpunet-imagenet", NS, full_spec(storage={"size": "1Ti"}), settings, "tok", material)
    kinds = [c["kind"] for c in children]
    assert kinds == ["Secret", "Secret", "PersistentVolumeClaim", "ConfigMap", "Deployment", "Service", "Deployment",
                     "Deployment"] + (["NetworkPolicy"] if network_policy else [])
    tls_secret = children[1]
    assert tls_secret["type"] == "kubernetes.io/tls" and tls_secret["metadata"]["name"] == "gpunet-imagenet-tls"
    assert {k: base64.b64decode(v) for k, v in tls_secret["data"].items()} == material
    for child in children:
        kopf.adopt(child, owner=kopf.Body(owner))
        assert_valid(child)
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == "0b5e-11" and ref["kind"] == "NASSearch" and ref["controller"] is True
        assert child["metadata"]["namespace"] == NS
    replicas = {c["metadata"]["name"]: c["spec"]["replicas"] for c in children if c["kind"] == "Deployment"}
    assert replicas == {"gpunet-imagenet-controller": 1, "gpunet-imagenet-profiler": 2, "gpunet-imagenet-trainer": 0}


def test_operator_never_imports_torch() -> None:
    code = ("import sys, gpunet_operator.handlers, gpunet_operator.__main__; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_operator_image_is_slim() -> None:
    """The image installs the `operator` extra only: no torch, no CUDA base."""
    lines = (ROOT / "operator" / "Dockerfile").read_text().splitlines()
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert bases and all(b.startswith("python:") and "slim" in b for b in bases)
    installs = [line for line in lines if "pip " in line and not line.lstrip().startswith("#")]
    assert installs and all("[operator]" in line for line in installs)
    assert not any(word in line for line in installs for word in ("torch", "engine", "cuda"))


def test_tls_modes_give_a_secret_a_certificate_or_nothing() -> None:
    spec = full_spec()
    with pytest.raises(ValueError, match="TLS material"):
        builders.build_children("gpunet-imagenet", NS, spec, Settings(), "tok")
    manager = Settings(tls_mode="cert-manager", cert_manager_issuer="ClusterIssuer/internal-ca")
    children = builders.build_children("gpunet-imagenet", NS, spec, manager, "tok")
    (cert,) = [c for c in children if c["kind"] == "Certificate"]
    assert cert["apiVersion"] == "cert-manager.io/v1" and cert["spec"]["secretName"] == "gpunet-imagenet-tls"
    assert cert["spec"]["dnsNames"][0] == certs.server_name("gpunet-imagenet", NS)
    assert cert["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "internal-ca"}
    assert [c["kind"] for c in children].count("Secret") == 1  # cert-manager writes the TLS Secret
    off = builders.build_children("gpunet-imagenet", NS, spec, Settings(tls_mode="off"), "tok")
    assert not [c for c in off if c["metadata"]["name"].endswith("-tls")]
    controller = next(c for c in off if c["kind"] == "Deployment")
    assert "--tls-cert" not in pod_spec(controller)["containers"][0]["command"]
    assert all(v["name"] != "tls" for v in pod_spec(controller)["volumes"])


@pytest.mark.parametrize("env, field", [({"GPUNET_TLS_MODE": "mtls"}, "GPUNET_TLS_MODE"),
                                        ({"GPUNET_TLS_MODE": "cert-manager"}, "GPUNET_CERT_MANAGER_ISSUER")])
def test_unusable_tls_settings_are_named(env: dict[str, str], field: str) -> None:
    from gpunet.errors import GpunetError

    with pytest.raises(GpunetError, match=field):
        Settings.from_env(env)
