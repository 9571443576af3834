"""What the handlers share in one operator process: settings, the Kubernetes API, the gRPC channels to the
controllers, the status writer and the search tokens. Made by the startup handler and kept in kopf's
operator-wide memo (``memo.ctx``), so that no module holds mutable state of its own.

What must survive a restart of the operator is not kept here: the handled pod losses and the failure count are
in ``NASSearch.status`` (:mod:`.preemption`), the search itself in its controller. Everything here is a cache
that a fresh process rebuilds from the API server.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from gpunet.rpc import tls
from gpunet.rpc.client import AsyncControllerClient

from . import builders, certs
from .api import KubeApi
from .controller import ControllerClients
from .settings import Settings
from .status_writer import StatusWriter


@dataclass
class OperatorContext:
    settings: Settings
    api: KubeApi
    status: StatusWriter
    controllers: ControllerClients = field(default_factory=ControllerClients)
    #: ``preemption.Ledger`` of each search by ``(namespace, name)`` (a cache of what its status records)
    ledgers: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: ``preemption.TrainerNodes``: where the trainer pods run (an index of the pod events)
    trainer_nodes: Any = None
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    _tls: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)

    @classmethod
    async def create(cls, settings: Settings) -> "OperatorContext":
        from .preemption import TrainerNodes

        api = await KubeApi.connect()
        return cls(settings=settings, api=api, status=StatusWriter(api), trainer_nodes=TrainerNodes())

    async def close(self) -> None:
        await self.controllers.close()
        await self.api.close()

    async def token(self, namespace: str, name: str) -> str | None:
        """The gRPC token of search ``namespace/name`` (from its Secret), or None before the Secret exists."""
        key = (namespace, name)
        if key not in self._tokens:
            secret = await self.api.get("v1", "Secret", namespace, builders.child_name(name, "token"))
            data = ((secret or {}).get("data") or {}).get(builders.TOKEN_KEY)
            if not data:
                return None
            self._tokens[key] = base64.b64decode(data).decode()
        return self._tokens[key]

    async def tls_material(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """``ca.crt``, ``tls.crt`` and ``tls.key`` of the search's TLS Secret, or None before it exists (or while
        cert-manager has not filled it)."""
        key = (namespace, name)
        if key not in self._tls:
            secret = await self.api.get("v1", "Secret", namespace, builders.child_name(name, "tls"))
            data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
            if not certs.complete(data):
                return None
            self._tls[key] = data
        return self._tls[key]

    async def controller(self, namespace: str, name: str) -> AsyncControllerClient | None:
        """The gRPC client of the search's controller (TLS against the search's CA unless TLS is off), or None while
        the search has no token or no certificate yet."""
        token = await self.token(namespace, name)
        if token is None:
            return None
        s = self.settings
        credentials = options = None
        if s.tls:
            material = await self.tls_material(namespace, name)
            if material is None:
                return None
            # The name is checked also behind an address override (a port-forward, a unix socket in tests).
            credentials = tls.channel_credentials(material[certs.CA_KEY])
            options = tls.channel_options(certs.server_name(name, namespace))
        return await self.controllers.get(namespace, name, s.controller_address_of(name, namespace), token, s.grpc_timeout_s,
                                          credentials=credentials, options=options)

    async def forget(self, namespace: str, name: str, uid: str | None) -> None:
        """Drop what this process knows of a deleted search."""
        await self.controllers.forget(namespace, name)
        self._tokens.pop((namespace, name), None)
        self._tls.pop((namespace, name), None)
        self.ledgers.pop((namespace, name), None)
        if uid:
            self.status.forget(uid)


def meta_of(body: Any) -> dict[str, str]:
    """``name``, ``namespace`` and ``uid`` of an object (a kopf Body or a plain dict)."""
    meta = body["metadata"]
    return {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}
