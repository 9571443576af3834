"""Prometheus metrics of the search controller (prometheus-client), one registry per controller.

Served at ``/metrics`` by :meth:`ControllerMetrics.serve`. Names follow Prometheus conventions (``_total`` for
counters, base units: seconds, fractions).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class ControllerMetrics:
    """The controller's gauges, counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.candidates = Gauge("gpunet_candidates", "Candidates by state", ["state"], registry=r)
        self.best_top1 = Gauge("gpunet_best_top1", "Best validation top-1 (fraction) per latency tier", ["tier"], registry=r)
        self.work_requests = Counter("gpunet_work_requests_total", "RequestWork calls by worker kind and answer",
                                     ["kind", "answer"], registry=r)
        self.lease_expiries = Counter("gpunet_lease_expiries_total", "Leases that expired without a heartbeat", registry=r)
        self.preemptions = Counter("gpunet_preemptions_total", "Leases released with reason PREEMPTED", registry=r)
        self.reports_ignored = Counter("gpunet_reports_ignored_total", "Duplicate or late reports", ["kind"], registry=r)
        self.layers_measured = Gauge("gpunet_latency_layers_measured", "Layer keys in the latency table that the tiers need", registry=r)
        self.layers_needed = Gauge("gpunet_latency_layers_needed", "Layer keys the tiers need", registry=r)
        self.rpc_seconds = Histogram("gpunet_rpc_duration_seconds", "Time to serve an RPC", ["method"], registry=r,
                                     buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))
        self._server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the ``/metrics`` HTTP server on ``port`` (0 = any free port); returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
