"""A small async Kubernetes REST layer over ``kubernetes.aio``'s ApiClient, speaking plain dicts.

The builders produce plain dicts; sending them through the generated typed models would only re-validate
them. This layer keeps the client's configuration loading (in-cluster or kubeconfig) and authentication and
does the few calls the operator needs: get, list, create, merge-patch and delete by ``apiVersion`` + plural.
The same configuration feeds kopf's login handler, so kopf and the handlers use the same credentials.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Mapping

import kopf
from kubernetes.aio import client as k8s_client
from kubernetes.aio import config as k8s_config

#: Plural resource names of the kinds the operator touches.
PLURALS = {
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Service": "services",
    "Pod": "pods",
    "Deployment": "deployments",
    "NetworkPolicy": "networkpolicies",
    "NASSearch": "nassearches",
}


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, Mapping) else body
        super().__init__(f"HTTP {status}: {message}")


def resource_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """The REST path, e.g. ``/apis/apps/v1/namespaces/ns/deployments/x``."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


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
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


class Kube:
    """Plain-dict calls to the API server."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.api = api

    async def request(self, method: str, path: str, body: Any = None, *, query: list[tuple[str, str]] | None = None,
                      content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = await self.api.param_serialize(method=method, resource_path=path, query_params=query or None,
                                                header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = await self.api.call_api(*params)
        except k8s_client.ApiException as exc:  # raised for non-2xx by the REST layer
            raise ApiError(exc.status or 0, _json(exc.body)) from None
        await response.read()
        data = _json(response.data)
        if not 200 <= response.status < 300:
            raise ApiError(response.status, data)
        return data

    async def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        return await self.request("GET", resource_path(api_version, plural, namespace, name))

    async def list(self, api_version: str, plural: str, namespace: str | None = None,
                   label_selector: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in label_selector.items()))] if label_selector else None
        items = (await self.request("GET", resource_path(api_version, plural, namespace), query=query)).get("items") or []
        if label_selector:  # filter here too: not every API server (or mock) applies the selector
            items = [i for i in items if all((i.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in label_selector.items())]
        return items

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], PLURALS[obj["kind"]], meta.get("namespace"))
        return await self.request("POST", path, dict(obj))

    async def patch(self, api_version: str, plural: str, namespace: str | None, name: str, patch: Mapping[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        path = resource_path(api_version, plural, namespace, name, subresource)
        return await self.request("PATCH", path, dict(patch), content_type="application/merge-patch+json")

    async def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> None:
        try:
            await self.request("DELETE", resource_path(api_version, plural, namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def ensure(self, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj`` unless it exists. Returns ``(object, created)``; an existing object is left as is."""
        meta = obj["metadata"]
        try:
            return await self.create(obj), True
        except ApiError as exc:
            if exc.status != 409:
                raise
        return await self.get(obj["apiVersion"], PLURALS[obj["kind"]], meta.get("namespace"), meta["name"]), False


def _json(data: Any) -> Any:
    if data is None or data == b"" or data == "":
        return {}
    if isinstance(data, (bytes, bytearray)):
        data = data.decode()
    try:
        return json.loads(data)
    except (TypeError, ValueError):
        return {"message": str(data)}


class KubeHolder:
    """One :class:`Kube` per operator process, made on first use in the operator's event loop."""

    def __init__(self) -> None:
        self._cfg: k8s_client.Configuration | None = None
        self._kube: Kube | None = None
        self._lock = asyncio.Lock()

    async def configuration(self) -> k8s_client.Configuration:
        async with self._lock:
            if self._cfg is None:
                self._cfg = await load_configuration()
            return self._cfg

    async def get(self) -> Kube:
        cfg = await self.configuration()
        if self._kube is None:
            self._kube = Kube(k8s_client.ApiClient(configuration=cfg))
        return self._kube

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.api.close()
        self._kube = None
        self._cfg = None
