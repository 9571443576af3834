"""The operator's Kubernetes API: the kubernetes client's asyncio ``DynamicClient`` with server-side apply.

Every object the operator writes is written by server-side apply (``application/apply-patch+yaml``) under a
named field manager, so that the API server merges what each writer owns: the children's specs
(:data:`MANAGER`), the pool sizes (:data:`SCALER`), the deletion-cost annotations of busy pods
(:data:`DELETION_COST_MANAGER`) and the parts of ``NASSearch.status`` (see :mod:`gpunet_operator.status_writer`).
A writer always applies everything it owns: a field it leaves out is removed.

The same client configuration feeds kopf's login handler, so kopf and the handlers use the same credentials.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import kopf
from kubernetes.aio import client as k8s_client
from kubernetes.aio import config as k8s_config
from kubernetes.aio.client.exceptions import ApiException as ApiError
from kubernetes.aio.dynamic import DynamicClient

__all__ = ["ApiError", "KubeApi", "connection_info", "load_configuration", "MANAGER", "SCALER", "DELETION_COST_MANAGER"]

#: Field manager of the children (Secret, claim, ConfigMap, Deployments without replicas, Service, policy).
MANAGER = "gpunet-operator"
#: Field manager of ``spec.replicas`` of the three Deployments.
SCALER = "gpunet-operator-scaler"
#: Field manager of ``controller.kubernetes.io/pod-deletion-cost`` on busy trainer pods.
DELETION_COST_MANAGER = "gpunet-operator-deletion-cost"


async def load_configuration() -> k8s_client.Configuration:
    """In-cluster service-account credentials, else ``$KUBECONFIG`` (read now, not at import), else ~/.kube/config."""
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)
        return cfg
    except k8s_config.ConfigException:
        pass
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    await k8s_config.load_kube_config(config_file=path.split(os.pathsep)[0], client_configuration=cfg)
    return cfg


def connection_info(cfg: k8s_client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the kubernetes client's configuration."""
    token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    scheme = None
    if token and " " in token:
        scheme, token = token.split(" ", 1)
        scheme = "Bearer" if scheme.lower() == "bearer" else scheme
    return kopf.ConnectionInfo(server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl, scheme=scheme,
                               token=token, certificate_path=cfg.cert_file, private_key_path=cfg.key_file)


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status == 404


class KubeApi:
    """Plain-dict calls to the API server through ``kubernetes.aio``'s DynamicClient."""

    def __init__(self, api_client: k8s_client.ApiClient, dynamic: DynamicClient) -> None:
        self.api_client = api_client
        self.dynamic = dynamic

    @classmethod
    async def connect(cls) -> "KubeApi":
        api_client = k8s_client.ApiClient(configuration=await load_configuration())
        return cls(api_client, await DynamicClient(api_client))

    async def close(self) -> None:
        await self.api_client.close()

    async def _resource(self, api_version: str, kind: str) -> Any:
        return await self.dynamic.resources.get(api_version=api_version, kind=kind)

    async def apply(self, manifest: Mapping[str, Any], manager: str = MANAGER, *, subresource: str | None = None) -> dict[str, Any]:
        """Server-side apply ``manifest`` (a whole or partial object, as a dict) as field manager ``manager``,
        taking over conflicting fields (``force``): the operator is the one writer of what it applies."""
        resource = await self._resource(manifest["apiVersion"], manifest["kind"])
        if subresource:
            resource = resource.subresources[subresource]
        meta = manifest["metadata"]
        out = await self.dynamic.server_side_apply(resource, body=dict(manifest), name=meta["name"], namespace=meta.get("namespace"),
                                                   field_manager=manager, force_conflicts=True)
        return out.to_dict()

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            out = await self.dynamic.get(await self._resource(api_version, kind), name=name, namespace=namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return out.to_dict()

    async def list(self, api_version: str, kind: str, namespace: str | None = None, *,
                   labels: Mapping[str, str | None] | None = None, fields: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Objects matching ``labels`` (``None`` as a value: the label exists) and ``fields`` selectors."""
        label_selector = ",".join(k if v is None else f"{k}={v}" for k, v in (labels or {}).items()) or None
        field_selector = ",".join(f"{k}={v}" for k, v in (fields or {}).items()) or None
        out = await self.dynamic.get(await self._resource(api_version, kind), namespace=namespace,
                                     label_selector=label_selector, field_selector=field_selector)
        return list(out.to_dict().get("items") or [])
