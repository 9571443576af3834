"""The operator's thin Kubernetes layer: REST paths and the credentials it hands to kopf."""

from __future__ import annotations

from kubernetes.aio import client as k8s_client

from gpunet_operator.kube import connection_info, resource_path


def test_resource_paths() -> None:
    assert resource_path("v1", "pods", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert resource_path("apps/v1", "deployments", "ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert resource_path("v1", "nodes") == "/api/v1/nodes"
    assert resource_path("nas.gpunet.dev/v1alpha1", "nassearches", "ns", "s", "status") == \
        "/apis/nas.gpunet.dev/v1alpha1/namespaces/ns/nassearches/s/status"


def test_kopf_gets_the_same_credentials_as_the_client() -> None:
    cfg = k8s_client.Configuration(host="https://10.0.0.1:443")
    cfg.api_key["BearerToken"] = "bearer eyJhbGciOi"  # as the in-cluster loader writes it
    cfg.ssl_ca_cert = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    info = connection_info(cfg)
    assert (info.server, info.scheme, info.token) == ("https://10.0.0.1:443", "Bearer", "eyJhbGciOi")
    assert info.ca_path == cfg.ssl_ca_cert and info.insecure is False
