"""The NAS search controller (GPUNet paper 3.3.3, 4.1): stages, leases, early stopping, checkpointed state, gRPC.

- :mod:`.core`: :class:`SearchController`, the phase machine, its driver thread and persistence (no gRPC server).
- :mod:`.profiling`: stage 1, the latency table filled through profilers in leased layer batches.
- :mod:`.searching`: stratification into latency tiers, one searcher per tier proposing ahead, early stopping.
- :mod:`.trainers`: candidates leased to trainers, their epoch reports, results and releases.
- :mod:`.leases`: the one lease book of trainers and profilers, and who was heard from when.
- :mod:`.status`: ``SearchStatus`` and the Prometheus gauges.
- :mod:`.proposer`: a tier's searcher in this thread or in its own process.
- :mod:`.service`: the servicer, token authentication and :class:`ControllerServer`.
- :mod:`.state`: persistent state (SQLite), and the candidate and phase names.
- :mod:`.errors`: domain errors and their gRPC status codes; transient vs permanent errors.
- :mod:`.faults`: the driver's retries of transient errors (tenacity) and the Degraded status.
- :mod:`.metrics`: Prometheus metrics.
- :mod:`.outputs`: candidates.jsonl, the model hub (hub.json / hub.md), pareto.png, ONNX exports.
- :mod:`.local`: ``gpunet run``, the controller and local worker processes.

``python -m gpunet.controller --spec SEARCH.yaml --state-dir DIR`` runs one as a process (the controller pod).
"""

from .core import SearchController
from .errors import ControllerError, InvalidRequestError, StateFileError, UnknownWorkError
from .service import ControllerServer, SearchControllerServicer, TokenAuthInterceptor

__all__ = ["ControllerError", "ControllerServer", "InvalidRequestError", "SearchController", "SearchControllerServicer",
           "StateFileError", "TokenAuthInterceptor", "UnknownWorkError"]
