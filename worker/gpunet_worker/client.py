"""The workers' pull loop over the controller client (:class:`gpunet.rpc.client.ControllerClient`, blocking, with
retries: the one client module that the operator shares), and the error of a worker that cannot start."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from gpunet.errors import GpunetError
from gpunet.rpc.client import ControllerClient, ControllerUnavailable

log = logging.getLogger("gpunet_worker")


class WorkerCannotStart(GpunetError, RuntimeError):
    """This worker cannot work on this machine: its device, latency backend or dataset is missing. The process
    exits with ``EXIT_CANNOT_START`` (:mod:`gpunet_worker.__main__`) rather than fail every piece of work."""


def work_loop(client: ControllerClient, request: Any, expected: str | tuple[str, ...], handle: Callable[[Any], object],
              stop: threading.Event) -> int:
    """The pull loop shared by trainers and profilers (GPUNet paper 3.3.3: a free client asks for work).

    Sends ``request`` (a ``WorkRequest``) until the controller says done (returns 0), ``stop`` is set by SIGTERM
    (returns 0) or the controller stays unreachable (returns 1). The request is a long poll
    (:meth:`ControllerClient.request_work`): an idle worker's call is held by the controller until work appears, so
    idle workers do not poll. ``Wait`` (the hold ended without work) sleeps ``retry_after_s`` (0: ask again at once); an
    assignment of an ``expected`` oneof field (``"candidate"``, or ``("layers", "network")``) goes to ``handle``;
    any other kind is logged and retried after a second.
    """
    kinds = (expected,) if isinstance(expected, str) else expected
    while not stop.is_set():
        try:
            response = client.request_work(request)
        except ControllerUnavailable as exc:
            if stop.is_set():
                return 0
            log.error("%s", exc)
            return 1
        work = response.WhichOneof("work")
        if work == "done":
            log.info("controller says done: %s", response.done.reason)
            return 0
        if work == "wait":
            stop.wait(max(0.05, response.wait.retry_after_s))  # the floor: never a hot loop
        elif work in kinds:
            handle(getattr(response, work))
        else:
            log.warning("unexpected work %r (expected %r); waiting", work, expected)
            stop.wait(1.0)
    return 0
