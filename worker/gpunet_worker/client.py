"""A controller client that retries while the controller is unreachable (exponential backoff with jitter)."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable

import grpc

from gpunet import rpc
from gpunet.errors import GpunetError

log = logging.getLogger("gpunet_worker")

#: Status codes worth retrying: the controller is restarting, overloaded or the network blipped.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class ControllerUnreachable(GpunetError, RuntimeError):
    """The controller did not answer within the give-up time (or the worker was stopped while it waited)."""


class WorkerCannotStart(GpunetError, RuntimeError):
    """This worker cannot work on this machine: its device, latency backend or dataset is missing. The process
    exits with ``EXIT_CANNOT_START`` (:mod:`gpunet_worker.__main__`) rather than fail every piece of work."""


class ControllerClient:
    """Calls the controller's RPCs with a per-call timeout and retries retryable failures.

    Args:
        address: ``host:port`` of the controller.
        token: the search's token.
        timeout_s: deadline of one call, in seconds.
        backoff_s: first retry delay; it doubles up to ``max_backoff_s`` (each delay jittered by +-25%).
        give_up_s: stop retrying after this many seconds without an answer (None: never).
        stop: an event that aborts retrying (e.g. set on SIGTERM) with :class:`ControllerUnreachable`.
        credentials: TLS channel credentials (:func:`gpunet.rpc.tls.channel_credentials`); None: plaintext.
        options: gRPC channel options (e.g. :func:`gpunet.rpc.tls.channel_options`).
    """

    def __init__(self, address: str, token: str | None, *, timeout_s: float = 10.0, backoff_s: float = 0.2,
                 max_backoff_s: float = 10.0, give_up_s: float | None = None, stop: threading.Event | None = None,
                 credentials: grpc.ChannelCredentials | None = None, options: list[tuple[str, Any]] | None = None) -> None:
        self.address, self.timeout_s = address, timeout_s
        self.backoff_s, self.max_backoff_s, self.give_up_s = backoff_s, max_backoff_s, give_up_s
        self.stop = stop
        self.stub = rpc.connect(address, token, options=options, credentials=credentials)
        self.retries = 0

    def call(self, method: str, request: Any, *, give_up_s: float | None = None) -> Any:
        """``stub.<method>(request)`` with retries; raises ``grpc.RpcError`` for non-retryable statuses."""
        fn: Callable[..., Any] = getattr(self.stub, method)
        delay, start = self.backoff_s, time.monotonic()
        limit = self.give_up_s if give_up_s is None else give_up_s
        while True:
            try:
                return fn(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                waited = time.monotonic() - start
                if limit is not None and waited >= limit:
                    raise ControllerUnreachable(f"controller {self.address}", reason=f"{method}: unreachable for {waited:.0f} s") from exc
                self.retries += 1
                log.warning("%s: controller unavailable (%s); retrying in %.1f s", method, exc.code().name, delay)
                pause = delay * random.uniform(0.75, 1.25)
                if self.stop is not None:
                    if self.stop.wait(pause):
                        raise ControllerUnreachable(f"controller {self.address}",
                                                    reason=f"{method}: stopped while it was unreachable") from exc
                else:
                    time.sleep(pause)
                delay = min(delay * 2, self.max_backoff_s)

    def close(self) -> None:
        self.stub.channel.close()


def work_loop(client: ControllerClient, request: Any, expected: str | tuple[str, ...], handle: Callable[[Any], object],
              stop: threading.Event) -> int:
    """The pull loop shared by trainers and profilers (GPUNet paper 3.3.3: a free client asks for work).

    Sends ``request`` (a ``WorkRequest``) until the controller says done (returns 0), ``stop`` is set by SIGTERM
    (returns 0) or the controller stays unreachable (returns 1). ``Wait`` sleeps ``retry_after_s``; an
    assignment of an ``expected`` oneof field (``"candidate"``, or ``("layers", "network")``) goes to ``handle``;
    any other kind is logged and retried after a second.
    """
    kinds = (expected,) if isinstance(expected, str) else expected
    while not stop.is_set():
        try:
            response = client.call("RequestWork", request)
        except ControllerUnreachable as exc:
            log.error("%s", exc)
            return 1
        work = response.WhichOneof("work")
        if work == "done":
            log.info("controller says done: %s", response.done.reason)
            return 0
        if work == "wait":
            stop.wait(max(0.05, response.wait.retry_after_s))
        elif work in kinds:
            handle(getattr(response, work))
        else:
            log.warning("unexpected work %r (expected %r); waiting", work, expected)
            stop.wait(1.0)
    return 0
