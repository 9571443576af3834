"""The clients of the search controller, in one home: what the operator and the workers send it and how they treat
its failures.

- :class:`AsyncControllerClient` (``grpc.aio``): the operator's, on kopf's event loop. A mass reclaim releases
  hundreds of leases at once; on one aio channel those are concurrent calls, with no thread each. It tries each
  call once: the operator's handlers retry on their own schedule (kopf's backoff, the next poll).
- :class:`ControllerClient` (blocking): the workers', whose loops (training, profiling) are synchronous by nature.
  It retries the :data:`RETRYABLE` statuses with exponential backoff and jitter until ``give_up_s``.

Both send the search's token (``authorization: Bearer <token>``), open their channel through
:func:`gpunet.rpc.open_channel` (plaintext or TLS) and raise :class:`ControllerUnavailable` when they give up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..errors import GpunetError
from . import SERVICE_NAME, auth_metadata, connect, open_channel, pb, pb_grpc

log = logging.getLogger(__name__)

#: Status codes worth retrying: the controller is restarting, overloaded or the network blipped.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED})

#: How long a worker's ``RequestWork`` lets the controller hold it when there is no work (the long poll), seconds.
#: The controller holds it for at most 1.5 lease durations (``service.HOLD_LEASES``: 45 s at the default 30 s
#: lease), a random 0.5-1x of that; each hold that ends without work costs the controller a call.
LONG_POLL_S = 45.0
#: How often a long call checks the client's ``stop`` event, in seconds.
STOP_POLL_S = 0.5

#: ``ReleaseReason`` values by name.
RELEASE_REASONS = {
    "preempted": pb.RELEASE_REASON_PREEMPTED,
    "failed": pb.RELEASE_REASON_FAILED,
    "shutdown": pb.RELEASE_REASON_SHUTDOWN,
}


class ControllerUnavailable(GpunetError, ConnectionError):
    """The controller did not answer a call (not started yet, restarting, unreachable, or it refused the token).

    Attributes:
        code: the last gRPC status code's name (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``UNAUTHENTICATED``, ...).
    """

    def __init__(self, address: str, method: str, code: str, detail: str) -> None:
        super().__init__(f"controller {address}", reason=f"{method}: {code}: {detail}")
        self.code = code


def _unavailable(address: str, method: str, exc: grpc.RpcError, detail: str | None = None) -> ControllerUnavailable:
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    return ControllerUnavailable(address, method, name, detail or (exc.details() if hasattr(exc, "details") else str(exc)))


class AsyncControllerClient:
    """An asyncio client of one controller; cheap to keep, its channel reconnects by itself.

    Create it on the event loop that will use it (``grpc.aio`` channels belong to one loop).

    Args:
        address: ``host:port`` or ``unix:PATH`` of the controller.
        token: the search's token.
        timeout_s: deadline of one call, in seconds.
        credentials, options: TLS channel credentials and channel options (:mod:`gpunet.rpc.tls`); None: plaintext.
    """

    def __init__(self, address: str, token: str, *, timeout_s: float = 5.0,
                 credentials: grpc.ChannelCredentials | None = None, options: list[tuple[str, Any]] | None = None) -> None:
        self.address, self.token, self.timeout_s = address, token, timeout_s
        self.tls = credentials is not None
        self.channel = open_channel(address, credentials=credentials, options=options, aio=True)
        self._stub = pb_grpc.SearchControllerServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._metadata = auth_metadata(token)

    async def call(self, method: str, request: Any) -> Any:
        """``<method>(request)`` once, with the token and the deadline.

        Raises:
            ControllerUnavailable: on any failed call, with its status code.
        """
        try:
            return await getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:  # grpc.aio.AioRpcError is one
            raise _unavailable(self.address, method, exc) from exc

    async def status(self, max_candidates: int) -> pb.SearchStatus:
        """The controller's ``SearchStatus`` with at most ``max_candidates`` candidate records.

        Raises:
            ControllerUnavailable: when the call fails.
        """
        return await self.call("GetStatus", pb.StatusRequest(max_candidates=max_candidates))

    async def release(self, worker_id: str, reason: str, message: str = "", granted_before_unix_s: float = 0.0) -> pb.ReleaseResponse:
        """Release the lease ``worker_id`` holds, with ``reason`` in :data:`RELEASE_REASONS`; with
        ``granted_before_unix_s`` only a lease granted before that time (a container failure's lease, never the
        one its restarted container took later).

        Returns the ``ReleaseResponse`` (``released`` is False when the worker held no such lease, e.g. it
        released it itself on SIGTERM; ``lease_id`` names the lease released).

        Raises:
            ControllerUnavailable: when the call fails.
        """
        request = pb.ReleaseRequest(worker_id=worker_id, reason=RELEASE_REASONS[reason], message=message,
                                    granted_before_unix_s=granted_before_unix_s)
        return await self.call("ReleaseLease", request)

    async def resume(self, resume_id: str) -> pb.ResumeResponse:
        """Resume the search if it is Failed, once per ``resume_id`` (``ResumeSearch``).

        Raises:
            ControllerUnavailable: when the call fails.
        """
        return await self.call("ResumeSearch", pb.ResumeRequest(resume_id=resume_id))

    async def health(self, service: str = SERVICE_NAME) -> str:
        """The ``grpc.health.v1`` status of ``service`` (``""``: the process): ``"SERVING"``, ``"NOT_SERVING"``, ...

        Raises:
            ControllerUnavailable: when the call fails (``NOT_FOUND`` for a service the controller does not know).
        """
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _unavailable(self.address, "Health.Check", exc) from exc
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        await self.channel.close()


class ControllerClient:
    """A blocking client of one controller that retries the :data:`RETRYABLE` statuses (exponential backoff with
    jitter) and raises the others at once as ``grpc.RpcError`` (a refused report is not retried).

    Args:
        address: ``host:port`` of the controller.
        token: the search's token.
        timeout_s: deadline of one call, in seconds.
        backoff_s: first retry delay; it doubles up to ``max_backoff_s`` (each delay jittered by +-25%).
        give_up_s: stop retrying after this many seconds without an answer (None: never).
        stop: an event that aborts retrying (e.g. set on SIGTERM) with :class:`ControllerUnavailable`.
        credentials: TLS channel credentials (:func:`gpunet.rpc.tls.channel_credentials`); None: plaintext.
        options: gRPC channel options (e.g. :func:`gpunet.rpc.tls.channel_options`).
    """

    def __init__(self, address: str, token: str | None, *, timeout_s: float = 10.0, backoff_s: float = 0.2,
                 max_backoff_s: float = 10.0, give_up_s: float | None = None, stop: threading.Event | None = None,
                 credentials: grpc.ChannelCredentials | None = None, options: list[tuple[str, Any]] | None = None) -> None:
        self.address, self.timeout_s = address, timeout_s
        self.backoff_s, self.max_backoff_s, self.give_up_s = backoff_s, max_backoff_s, give_up_s
        self.stop = stop
        self.stub = connect(address, token, options=options, credentials=credentials)
        self.retries = 0

    def call(self, method: str, request: Any, *, give_up_s: float | None = None, timeout_s: float | None = None) -> Any:
        """``stub.<method>(request)`` with retries; each try's deadline is ``timeout_s`` (default the client's).

        Raises:
            ControllerUnavailable: a retryable failure lasted ``give_up_s`` (or ``stop`` was set meanwhile).
            grpc.RpcError: a status that is not retryable (e.g. ``INVALID_ARGUMENT``, ``UNAUTHENTICATED``).
        """
        fn: Callable[..., Any] = getattr(self.stub, method)
        delay, start = self.backoff_s, time.monotonic()
        limit = self.give_up_s if give_up_s is None else give_up_s
        while True:
            try:
                return self._invoke(method, fn, request, self.timeout_s if timeout_s is None else timeout_s)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                waited = time.monotonic() - start
                if limit is not None and waited >= limit:
                    raise _unavailable(self.address, method, exc, f"unreachable for {waited:.0f} s") from exc
                self.retries += 1
                log.warning("%s: controller unavailable (%s); retrying in %.1f s", method, exc.code().name, delay)
                pause = delay * random.uniform(0.75, 1.25)
                if self.stop is not None:
                    if self.stop.wait(pause):
                        raise _unavailable(self.address, method, exc, "stopped while it was unreachable") from exc
                else:
                    time.sleep(pause)
                delay = min(delay * 2, self.max_backoff_s)

    def request_work(self, request: pb.WorkRequest, max_wait_s: float = LONG_POLL_S) -> pb.WorkResponse:
        """``RequestWork`` as a long poll: the controller holds the call up to ``max_wait_s`` seconds until there is
        work (``WorkRequest.max_wait_s``; an older controller answers Wait at once, as before). The call's deadline is
        ``timeout_s + max_wait_s``; ``stop`` ends the wait early (:class:`ControllerUnavailable`).

        Raises:
            ControllerUnavailable, grpc.RpcError: as :meth:`call`.
        """
        held = pb.WorkRequest()
        held.CopyFrom(request)
        held.max_wait_s = max_wait_s
        return self.call("RequestWork", held, timeout_s=self.timeout_s + max_wait_s)

    def _invoke(self, method: str, fn: Any, request: Any, timeout_s: float) -> Any:
        if self.stop is None or timeout_s <= self.timeout_s:
            return fn(request, timeout=timeout_s)
        future = fn.future(request, timeout=timeout_s)  # a long call: stop must not wait for its end
        while not future.done():
            if self.stop.wait(STOP_POLL_S):
                future.cancel()
                raise ControllerUnavailable(self.address, method, "CANCELLED", "stopped while waiting for an answer")
        return future.result()

    def close(self) -> None:
        self.stub.channel.close()
