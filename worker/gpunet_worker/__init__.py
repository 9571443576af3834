"""Trainer and profiler workers of the NAS: gRPC clients of the search controller (``gpunet.controller``).

Run as ``python -m gpunet_worker trainer|profiler --controller HOST:PORT`` (token in ``GPUNET_TOKEN``).
Workers pull work when free, report back, survive controller restarts (reconnect with backoff) and, on
SIGTERM (a spot node's notice), give their lease back with reason ``preempted`` and exit 0.
"""

__all__ = ["client", "profiler", "trainer"]
