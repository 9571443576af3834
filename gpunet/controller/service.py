"""The gRPC face of the search controller: the servicer, token authentication and the server.

The server is ``grpc.aio`` on an event loop thread of its own, so that thousands of held calls (long-polled
``RequestWork``) cost no thread each. The servicer delegates to :class:`~gpunet.controller.core.SearchController`
(:meth:`~gpunet.controller.core.SearchController.answer`: the core's work, under its lock, without committing the
state) and then awaits the group commit of what the answer depends on (:class:`CommitWaits`: one commit at the end
of each turn of the event loop for all the calls of that turn), so that no answer gets out before its state is
durable, and no call waits on a commit of its own. Domain errors become gRPC
status codes through :func:`gpunet.controller.errors.grpc_status` (the one mapping). Authentication is a server
interceptor: every call must carry ``authorization: Bearer <token>`` in its metadata, else ``UNAUTHENTICATED``.

Long poll (``WorkRequest.max_wait_s``): a worker told to wait is held in a FIFO per worker kind (:class:`WorkWaiters`)
until work may have appeared; then the longest-waiting one asks again, and one that gets work wakes the next, so a
burst of new work reaches as many waiters as it has items, one retry each, with no thundering herd. The wakes are
paced (:data:`WAKE_SPACING_S`), so that a burst of grants does not hold up the calls in flight. The driver wakes
the queues after each of its rounds (proposals, re-queued leases, phase changes), and a released lease at once.

Health (``grpc.health.v1``, the ``grpcio-health-checking`` aio servicer): the only service that needs no token, since
it says nothing but SERVING or NOT_SERVING. It answers for ``""`` (the process) and for :data:`SERVICE_NAME`, on the
gRPC port and, with ``health_port``, on a plaintext port of its own: the kubelet's ``grpc:`` probes speak neither
TLS nor tokens, so a controller that serves TLS is probed there. Both go NOT_SERVING when the server stops.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import hmac
import logging
import math
import random
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Coroutine

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..rpc import AUTH_METADATA_KEY, SERVICE_NAME, pb, pb_grpc
from ..sqlite import CommitFailed, GroupCommit
from .core import SearchController
from .errors import ConfigError, grpc_status, require

log = logging.getLogger(__name__)

#: Method prefix of the health service; its calls pass without a token.
HEALTH_METHOD_PREFIX = f"/{health.SERVICE_NAME}/"
#: Longest a RequestWork is held, in seconds: ``WorkRequest.max_wait_s`` is capped to it and to :data:`HOLD_LEASES`
#: lease durations.
MAX_WAIT_S = 60.0
#: A hold lasts at most this many lease durations, so that an idle worker is heard from (its next ask) well inside
#: the roster's window of two (:class:`~gpunet.controller.leases.Roster`: the active-worker count the scaling uses).
#: Every hold that ends without work is a round trip: at 5,000 idle workers and 10-20 s holds (the clients' old
#: 20 s long poll) they were 330 calls/s, most of the controller's CPU.
HOLD_LEASES = 1.5
#: A hold lasts between this fraction of the allowed wait and all of it, at random. Workers that start together
#: (a scale-up) come back in waves; at 0.8, 5,000 of them came back within 4 s of each other and queued there.
HOLD_JITTER = 0.5
#: The interpreter's thread switch interval the controller's main sets (:func:`sys.setswitchinterval`; Python's
#: default is 5 ms): gRPC's poller thread hands each batch of finished I/O to the event loop's thread, and waits
#: up to the interval for the GIL while the loop or the driver runs Python. Measured at 1,000 simulated workers on
#: the shared 2 cores: heartbeat p50 112 -> 25 ms.
SWITCH_INTERVAL_S = 0.0005
#: The cyclic collector's thresholds while serving (:func:`gc.set_threshold`; Python's default is 700, 10, 10).
#: Held long polls keep their calls' objects alive for seconds, so they reach the oldest generation, and each
#: full collection walks all of them. At 5,000 workers, over 40 s: 11 full collections with defaults, of up to
#: 245 ms; 3 with these thresholds, of up to 43 ms. The younger collections get larger and rarer.
GC_THRESHOLDS = (5_000, 20, 100)
#: Least time between two wakes of held RequestWork calls of one worker kind (:class:`WorkWaiters`), in seconds:
#: at most 200 held calls a second get work, against the searchers' at most 64 proposals a second
#: (:data:`~gpunet.controller.searching.MAX_ASK_PER_STEP` per tier and round interval). Unpaced, each round's
#: proposals went out in a burst of back-to-back grants, and nine in ten of the calls slower than 12 ms started
#: within 50 ms of a round's end (``benchmarks/controller_load.py``, 1,000 workers, random search, 2 shared cores,
#: 30 s: the epoch reports' p99 was 25.3 ms unpaced and 12.6 ms paced, with as many results).
WAKE_SPACING_S = 0.005


def tune_for_serving() -> None:
    """Set this process up as the controller's RPC server; call once the controller is built.

    - The GIL switch interval becomes :data:`SWITCH_INTERVAL_S`.
    - :func:`gc.freeze` moves every object made so far out of the cyclic garbage collector's view: the imports,
      the pools and the loaded state. A full (generation 2) collection walked them all, and it pauses every
      thread. At 1,000 simulated workers each pause took 42-49 ms, which was the loop lag's maximum.
    - The collector's thresholds become :data:`GC_THRESHOLDS`, so that full collections are rarer.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: gRPC core's server arguments. Calls that have arrived but that the application has not taken yet are "pending";
#: by default core rejects them, at random from 1,000 pending and always from 3,000, with CANCELLED. A burst of a
#: few thousand workers (a restart, a wave of long polls ending) exceeds that; the asyncio server takes calls as
#: fast as it can anyway, so the limits are raised rather than failing the workers.
SERVER_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.server.max_pending_requests", 50_000),
                  ("grpc.server.max_pending_requests_hard_limit", 100_000)]


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects every call whose metadata lacks ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("token", reason="required (an empty token would accept every client)")
        self._expected = f"Bearer {token}".encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token in the 'authorization' metadata")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith(HEALTH_METHOD_PREFIX):
            return await continuation(details)
        for key, value in details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY and hmac.compare_digest(str(value).encode(), self._expected):
                return await continuation(details)
        return self._deny


class CommitWaits:
    """Awaitable commits of a :class:`~gpunet.sqlite.GroupCommit` on one event loop: the calls that wait in one
    turn of the loop share one flush, run at the end of that turn on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, commits: GroupCommit) -> None:
        self.loop, self.commits = loop, commits
        self._waiting: list[tuple[int, asyncio.Future]] = []

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        error: BaseException | None = None
        try:
            self.commits.flush(max(ticket for ticket, _ in waiting))
        except CommitFailed as exc:
            error = exc
        for ticket, fut in waiting:
            if fut.done():
                continue
            exc = self.commits.error(ticket) if error is not None else None
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(CommitFailed(f"commit failed: {type(exc).__name__}: {exc}"))

    async def wait(self, ticket: int) -> None:
        """Return once ``ticket`` is committed.

        Raises:
            CommitFailed: its batch failed.
        """
        if self.commits.done(ticket):
            exc = self.commits.error(ticket)
            if exc is not None:
                raise CommitFailed(f"commit failed: {type(exc).__name__}: {exc}") from exc
            return
        fut = self.loop.create_future()
        if not self._waiting:
            self.loop.call_soon(self._flush)  # after the calls now ready have staged their writes too
        self._waiting.append((ticket, fut))
        await fut


class WorkWaiters:
    """Long-polled RequestWork calls waiting for work, a FIFO per worker kind (see the module docstring).

    Wakes are paced: at most one waiter per kind every ``spacing_s`` (:data:`WAKE_SPACING_S`); a wake asked for
    sooner is put off until then, and wakes asked for while one is put off are one. A searcher round's proposals
    (up to 16 per tier) therefore go out one by one over up to a few hundred milliseconds, inside the round
    interval, not in one burst that every call then in flight queues behind.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, spacing_s: float | None = None) -> None:
        self.loop = loop
        self.spacing_s = WAKE_SPACING_S if spacing_s is None else float(spacing_s)
        self._queues: dict[int, collections.deque[asyncio.Future]] = collections.defaultdict(collections.deque)
        self._last_wake: dict[int, float] = {}
        self._put_off: dict[int, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return sum(1 for q in self._queues.values() for f in q if not f.done())

    async def wait(self, kind: int, timeout_s: float) -> bool:
        """Wait to be woken (True) or ``timeout_s`` (False)."""
        fut = self.loop.create_future()
        self._queues[kind].append(fut)
        # A timer on the future itself, not asyncio.wait_for (a task and a second future per held call).
        timer = self.loop.call_later(timeout_s, _time_out, fut)
        try:
            return await fut
        finally:
            timer.cancel()  # a future that timed out or was cancelled stays queued and is skipped when reached

    def wake_one(self, kind: int) -> None:
        """Wake the longest-waiting call of ``kind``, now or, within ``spacing_s`` of the last wake, then."""
        if kind in self._put_off:
            return  # a wake is due already
        delay = self._last_wake.get(kind, -math.inf) + self.spacing_s - self.loop.time()
        if delay > 0:
            self._put_off[kind] = self.loop.call_later(delay, self._wake_now, kind)
        else:
            self._wake_now(kind)

    def _wake_now(self, kind: int) -> None:
        self._put_off.pop(kind, None)
        queue = self._queues[kind]
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(True)
                self._last_wake[kind] = self.loop.time()
                return

    def wake_each_kind(self) -> None:
        for kind in list(self._queues):
            self.wake_one(kind)


def _time_out(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


class SearchControllerServicer(pb_grpc.SearchControllerServiceServicer):
    """Serves :class:`SearchController` over ``grpc.aio``; its coroutines run on the loop of ``commits``."""

    def __init__(self, controller: SearchController, commits: CommitWaits, waiters: WorkWaiters) -> None:
        self.controller, self.commits, self.waiters = controller, commits, waiters

    async def _call(self, method: str, fn: Callable[[], Coroutine[Any, Any, Any]], context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            code, message = grpc_status(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method)
            await context.abort(code, message)
        finally:
            self.controller.metrics.rpc_seconds.labels(method).observe(time.perf_counter() - start)

    async def _durable(self, method: str, request: Any) -> Any:
        response, ticket = self.controller.answer(method, request)
        await self.commits.wait(ticket)
        return response

    async def _request_work(self, request: pb.WorkRequest) -> pb.WorkResponse:
        require(math.isfinite(request.max_wait_s) and request.max_wait_s >= 0, "max_wait_s", request.max_wait_s,
                "a number of seconds >= 0")
        # Jittered so that workers that started waiting together do not all come back together.
        cap = min(request.max_wait_s, MAX_WAIT_S, HOLD_LEASES * self.controller.lease_s)
        hold_s = cap * random.uniform(HOLD_JITTER, 1.0)
        deadline = time.monotonic() + hold_s
        response, ticket = self.controller.answer("request_work", request)
        woken = False
        while response.WhichOneof("work") == "wait" and hold_s > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                response.wait.retry_after_s = 0.0  # held for the whole wait: ask again at once
                break
            woken = await self.waiters.wait(request.kind, remaining)
            response, ticket = self.controller.answer("request_work", request)
        if response.WhichOneof("work") == "wait":
            return response  # it promises nothing, so it need not wait for a commit
        if woken:
            self.waiters.wake_one(request.kind)  # there may be more: the next waiter tries
        await self.commits.wait(ticket)
        return response

    async def RequestWork(self, request: pb.WorkRequest, context: grpc.aio.ServicerContext) -> pb.WorkResponse:
        return await self._call("RequestWork", lambda: self._request_work(request), context)

    async def ReportProgress(self, request: pb.ProgressReport, context: grpc.aio.ServicerContext) -> pb.ProgressResponse:
        return await self._call("ReportProgress", lambda: self._durable("report_progress", request), context)

    async def ReportResult(self, request: pb.ResultReport, context: grpc.aio.ServicerContext) -> pb.ResultResponse:
        return await self._call("ReportResult", lambda: self._durable("report_result", request), context)

    async def ReportLatencies(self, request: pb.LatencyReport, context: grpc.aio.ServicerContext) -> pb.LatencyResponse:
        return await self._call("ReportLatencies", lambda: self._durable("report_latencies", request), context)

    async def _release(self, request: pb.ReleaseRequest) -> pb.ReleaseResponse:
        response = await self._durable("release_lease", request)
        if response.released:
            self.waiters.wake_each_kind()  # the work is back in the queue
        return response

    async def ReleaseLease(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        return await self._call("ReleaseLease", lambda: self._release(request), context)

    async def GetStatus(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.SearchStatus:
        return await self._call("GetStatus", lambda: self._durable("status", request), context)

    async def _resume(self, request: pb.ResumeRequest) -> pb.ResumeResponse:
        response = self.controller.resume_failed(request.resume_id)  # rare: its save blocks the loop briefly
        self.waiters.wake_each_kind()  # a resumed search has work again
        return response

    async def ResumeSearch(self, request: pb.ResumeRequest, context: grpc.aio.ServicerContext) -> pb.ResumeResponse:
        return await self._call("ResumeSearch", lambda: self._resume(request), context)


class _Done:
    """What ``grpc.Server.stop`` returns: ``wait()`` blocks until the stop is done."""

    def __init__(self, future: Any) -> None:
        self._future = future

    def wait(self, timeout: float | None = None) -> bool:
        self._future.result(timeout)
        return True


class LoopServer:
    """A ``grpc.aio`` server driven from other threads: :meth:`start` and :meth:`stop` as ``grpc.Server`` has them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: grpc.aio.Server) -> None:
        self.loop, self.aio = loop, server

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self.aio.start(), self.loop).result()

    def stop(self, grace: float | None) -> _Done:
        return _Done(asyncio.run_coroutine_threadsafe(self.aio.stop(grace), self.loop))


class ControllerServer:
    """A running controller: the core, its driver thread, the gRPC server (``grpc.aio`` on a thread of its own)
    and ``/metrics``.

    Args:
        controller: the core (its driver thread is started here).
        token: the search's token (required).
        address: ``host:port`` to listen on; port 0 picks a free one (see :attr:`port`).
        metrics_port: port of the Prometheus ``/metrics`` endpoint; None for none, 0 for any free port.
        credentials: serve TLS with these (:func:`gpunet.rpc.tls.server_credentials`); None serves plaintext.
        health_port: also serve the health service alone, in plaintext, on this port of the same host (0: any
            free one, see :attr:`health_port`); None: health is served on the gRPC port only.

    Attributes:
        server: the gRPC server (:class:`LoopServer`: ``start()``, ``stop(grace).wait()``), for tests that step the
            core themselves without the driver thread.

    Raises:
        OSError: a port cannot be bound.
    """

    def __init__(self, controller: SearchController, token: str, address: str = "127.0.0.1:0",
                 metrics_port: int | None = None, credentials: grpc.ServerCredentials | None = None,
                 health_port: int | None = None) -> None:
        self.controller = controller
        self.tls = credentials is not None
        self.host = address.rsplit(":", 1)[0]
        interceptor = TokenAuthInterceptor(token)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gpunet-rpc", daemon=True)
        self._thread.start()
        try:
            self._run(self._build(interceptor, address, credentials, health_port))
        except BaseException:
            self._close_loop()
            raise
        self.server = LoopServer(self.loop, self._aio)
        controller.add_driver_listener(lambda: self.loop.call_soon_threadsafe(self.waiters.wake_each_kind))
        self.metrics_port = controller.metrics.serve(metrics_port, addr=self.host if self.host not in ("[::]", "") else "0.0.0.0") \
            if metrics_port is not None else None

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _build(self, interceptor: TokenAuthInterceptor, address: str, credentials: grpc.ServerCredentials | None,
                     health_port: int | None) -> None:
        self.commits = CommitWaits(self.loop, self.controller.store.commits)
        self.waiters = WorkWaiters(self.loop)
        self._aio = grpc.aio.server(interceptors=[interceptor], options=SERVER_OPTIONS)
        pb_grpc.add_SearchControllerServiceServicer_to_server(
            SearchControllerServicer(self.controller, self.commits, self.waiters), self._aio)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._aio)
        self.port = self._aio.add_secure_port(address, credentials) if credentials is not None \
            else self._aio.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self._health_aio: grpc.aio.Server | None = None
        self.health_port: int | None = None
        if health_port is not None:
            self._health_aio = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_aio)
            self.health_port = self._health_aio.add_insecure_port(f"{self.host}:{health_port}")
            if self.health_port == 0:
                raise OSError(f"cannot listen on {self.host}:{health_port} (health)")

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "[::]", "") else self.host
        return f"{host}:{self.port}"

    async def _start(self) -> None:
        await self._aio.start()
        if self._health_aio is not None:
            await self._health_aio.start()

    async def _serving(self) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> "ControllerServer":
        self._run(self._start())
        self.controller.start()
        self._run(self._serving())
        return self

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self._aio.stop(grace)
        if self._health_aio is not None:
            await self._health_aio.stop(0)

    def stop(self, grace: float = 1.0) -> None:
        """Say NOT_SERVING, stop serving, stop the driver and save the state."""
        if self.loop.is_closed():
            return
        self._run(self._stop(grace))
        self.controller.metrics.close()
        self.controller.close()
        self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> "ControllerServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
