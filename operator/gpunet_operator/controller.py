"""The operator's gRPC clients of the searches' controllers: one :class:`gpunet.rpc.client.AsyncControllerClient`
(``grpc.aio``, on kopf's event loop) per search, kept while the search's address and token stay the same.

Every call carries the search's token (``authorization: Bearer <token>``). A failed call raises
:class:`~gpunet.rpc.client.ControllerUnavailable` with its status code; the handlers retry on their own schedule.
"""

from __future__ import annotations

from typing import Any

import grpc

from gpunet.rpc.client import AsyncControllerClient


class ControllerClients:
    """One client per search, keyed by ``(namespace, name)``; replaced when the token or the address changes.

    Used from the operator's event loop only (the clients' channels belong to it), so it needs no lock.
    """

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], AsyncControllerClient] = {}

    async def get(self, namespace: str, name: str, address: str, token: str, timeout_s: float, *,
                  credentials: grpc.ChannelCredentials | None = None,
                  options: list[tuple[str, Any]] | None = None) -> AsyncControllerClient:
        """The client of ``namespace/name``; a new one when the address, the token or the TLS setting changed."""
        key = (namespace, name)
        client = self._clients.get(key)
        if client is None or client.address != address or client.token != token or client.tls != (credentials is not None):
            if client is not None:
                await client.close()
            client = AsyncControllerClient(address, token, timeout_s=timeout_s, credentials=credentials, options=options)
            self._clients[key] = client
        return client

    async def forget(self, namespace: str, name: str) -> None:
        client = self._clients.pop((namespace, name), None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
