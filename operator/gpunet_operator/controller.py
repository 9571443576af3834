"""The operator's gRPC client of one search's controller (``gpunet.nas.v1.SearchControllerService``).

Calls are blocking gRPC calls made in a worker thread, so the operator's event loop never waits on the
network. Every call carries the search's token (``authorization: Bearer <token>``, :func:`gpunet.rpc.connect`).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures
from typing import Any

import grpc

from gpunet import rpc

#: ``ReleaseReason`` values by name.
RELEASE_REASONS = {
    "preempted": rpc.pb.RELEASE_REASON_PREEMPTED,
    "failed": rpc.pb.RELEASE_REASON_FAILED,
    "shutdown": rpc.pb.RELEASE_REASON_SHUTDOWN,
}


#: Threads for the blocking gRPC calls of all controller clients: a mass reclaim releases hundreds of leases at
#: once, more than the event loop's default executor (cores + 4 threads) would run side by side.
GRPC_THREADS = 32


class ControllerUnavailable(Exception):
    """The controller did not answer (not started yet, restarting, or unreachable). ``code`` is the gRPC status
    code's name (e.g. ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``UNAUTHENTICATED``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ControllerClient:
    """A channel to one controller; cheap to keep, reconnects by itself."""

    def __init__(self, address: str, token: str, timeout_s: float = 5.0, executor: futures.Executor | None = None) -> None:
        self.address = address
        self.token = token
        self.timeout_s = timeout_s
        self.executor = executor
        self._stub = rpc.connect(address, token)

    def close(self) -> None:
        self._stub.channel.close()  # type: ignore[attr-defined]

    async def _run(self, method: str, request: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._call, method, request)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") and exc.code() is not None else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise ControllerUnavailable(f"{method} to {self.address}: {code}: {details}", code) from exc

    async def status(self, max_candidates: int) -> Any:
        """The controller's ``SearchStatus``.

        Raises:
            ControllerUnavailable: when the call fails.
        """
        return await self._run("GetStatus", rpc.pb.StatusRequest(max_candidates=max_candidates))

    async def release(self, worker_id: str, reason: str, message: str = "", granted_before_unix_s: float = 0.0) -> Any:
        """Release the lease ``worker_id`` holds, with ``reason`` in :data:`RELEASE_REASONS`; with
        ``granted_before_unix_s`` only a lease granted before that time (a container failure's lease, never the
        one its restarted container took later).

        Returns the ``ReleaseResponse`` (``released`` is False when the worker held no such lease, e.g. it
        released it itself on SIGTERM; ``lease_id`` names the lease released).

        Raises:
            ControllerUnavailable: when the call fails.
        """
        request = rpc.pb.ReleaseRequest(worker_id=worker_id, reason=RELEASE_REASONS[reason], message=message,
                                        granted_before_unix_s=granted_before_unix_s)
        return await self._run("ReleaseLease", request)


class ControllerClients:
    """One :class:`ControllerClient` per search, keyed by ``(namespace, name)``; replaced when the token or the
    address changes."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], ControllerClient] = {}
        self._lock = threading.Lock()
        self._executor = futures.ThreadPoolExecutor(max_workers=GRPC_THREADS, thread_name_prefix="gpunet-grpc")

    def get(self, namespace: str, name: str, address: str, token: str, timeout_s: float) -> ControllerClient:
        key = (namespace, name)
        with self._lock:
            client = self._clients.get(key)
            if client is None or client.address != address or client.token != token:
                if client is not None:
                    client.close()
                client = ControllerClient(address, token, timeout_s, self._executor)
                self._clients[key] = client
            return client

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            client = self._clients.pop((namespace, name), None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
