"""The gRPC face of the search controller: the servicer, token authentication and the server.

The servicer subclasses the generated ``SearchControllerServiceServicer`` and delegates to
:class:`~gpunet.controller.core.SearchController`; domain errors become gRPC status codes through
:func:`gpunet.controller.errors.grpc_status` (the one mapping). Authentication is a server interceptor: every
call must carry ``authorization: Bearer <token>`` in its metadata, else ``UNAUTHENTICATED``.

Health (``grpc.health.v1``, the ``grpcio-health-checking`` servicer): the only service that needs no token, since it
says nothing but SERVING or NOT_SERVING. It answers for ``""`` (the process) and for :data:`SERVICE_NAME`, on the
gRPC port and, with ``health_port``, on a plaintext port of its own: the kubelet's ``grpc:`` probes speak neither
TLS nor tokens, so a controller that serves TLS is probed there. Both go NOT_SERVING when the server stops.
"""

from __future__ import annotations

import hmac
import logging
import time
from concurrent import futures
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..rpc import AUTH_METADATA_KEY, SERVICE_NAME, pb, pb_grpc
from .core import SearchController
from .errors import ConfigError, grpc_status

log = logging.getLogger(__name__)

#: Method prefix of the health service; its calls pass without a token.
HEALTH_METHOD_PREFIX = f"/{health.SERVICE_NAME}/"


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Rejects every call whose metadata lacks ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("token", reason="required (an empty token would accept every client)")
        self._expected = f"Bearer {token}".encode()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token in the 'authorization' metadata")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith(HEALTH_METHOD_PREFIX):
            return continuation(details)
        for key, value in details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY and hmac.compare_digest(str(value).encode(), self._expected):
                return continuation(details)
        return self._deny


class SearchControllerServicer(pb_grpc.SearchControllerServiceServicer):
    """Serves :class:`SearchController` over gRPC; callable in-process (``context`` may be a test double)."""

    def __init__(self, controller: SearchController) -> None:
        self.controller = controller

    def _call(self, method: str, fn: Callable[[Any], Any], request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            return fn(request)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            code, message = grpc_status(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method)
            context.abort(code, message)
        finally:
            self.controller.metrics.rpc_seconds.labels(method).observe(time.perf_counter() - start)

    def RequestWork(self, request: pb.WorkRequest, context: grpc.ServicerContext) -> pb.WorkResponse:
        return self._call("RequestWork", self.controller.request_work, request, context)

    def ReportProgress(self, request: pb.ProgressReport, context: grpc.ServicerContext) -> pb.ProgressResponse:
        return self._call("ReportProgress", self.controller.report_progress, request, context)

    def ReportResult(self, request: pb.ResultReport, context: grpc.ServicerContext) -> pb.ResultResponse:
        return self._call("ReportResult", self.controller.report_result, request, context)

    def ReportLatencies(self, request: pb.LatencyReport, context: grpc.ServicerContext) -> pb.LatencyResponse:
        return self._call("ReportLatencies", self.controller.report_latencies, request, context)

    def ReleaseLease(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseResponse:
        return self._call("ReleaseLease", self.controller.release_lease, request, context)

    def GetStatus(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.SearchStatus:
        return self._call("GetStatus", self.controller.status, request, context)

    def ResumeSearch(self, request: pb.ResumeRequest, context: grpc.ServicerContext) -> pb.ResumeResponse:
        return self._call("ResumeSearch", lambda r: self.controller.resume_failed(r.resume_id), request, context)


class ControllerServer:
    """A running controller: the core, its driver thread, the gRPC server and ``/metrics``.

    Args:
        controller: the core (its driver thread is started here).
        token: the search's token (required).
        address: ``host:port`` to listen on; port 0 picks a free one (see :attr:`port`).
        metrics_port: port of the Prometheus ``/metrics`` endpoint; None for none, 0 for any free port.
        max_workers: gRPC handler threads. Handlers are short and hold the GIL, so a few threads serve best (more
            threads lengthen the latency tail under load: p99 923 ms with 64 against 535 ms with 8, see benchmarks).
        credentials: serve TLS with these (:func:`gpunet.rpc.tls.server_credentials`); None serves plaintext.
        health_port: also serve the health service alone, in plaintext, on this port of the same host (0: any
            free one, see :attr:`health_port`); None: health is served on the gRPC port only.

    Raises:
        OSError: a port cannot be bound.
    """

    def __init__(self, controller: SearchController, token: str, address: str = "127.0.0.1:0",
                 metrics_port: int | None = None, max_workers: int = 8,
                 credentials: grpc.ServerCredentials | None = None, health_port: int | None = None) -> None:
        self.controller = controller
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gpunet-rpc"),
                                  interceptors=[TokenAuthInterceptor(token)],
                                  options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_SearchControllerServiceServicer_to_server(SearchControllerServicer(controller), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.tls = credentials is not None
        self.port = self.server.add_secure_port(address, credentials) if credentials is not None \
            else self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.host = address.rsplit(":", 1)[0]
        self.health_server: grpc.Server | None = None
        self.health_port: int | None = None
        if health_port is not None:
            # Two threads: a probe is one short unary call; Watch streams run on the servicer's own pool.
            self.health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpunet-health"),
                                             options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(f"{self.host}:{health_port}")
            if self.health_port == 0:
                raise OSError(f"cannot listen on {self.host}:{health_port} (health)")
        self.metrics_port = controller.metrics.serve(metrics_port, addr=self.host if self.host not in ("[::]", "") else "0.0.0.0") \
            if metrics_port is not None else None

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "[::]", "") else self.host
        return f"{host}:{self.port}"

    def start(self) -> "ControllerServer":
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        self.controller.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Say NOT_SERVING, stop serving, stop the driver and save the state."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        self.controller.metrics.close()
        self.controller.close()

    def __enter__(self) -> "ControllerServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
