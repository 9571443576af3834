"""The NAS search controller (GPUNet paper 3.3.3, 4.1): stages, leases, early stopping, checkpointed state, gRPC.

- :mod:`.core`: :class:`SearchController`, the logic (no gRPC server).
- :mod:`.service`: the servicer, token authentication and :class:`ControllerServer`.
- :mod:`.state`: persistent state, written atomically.
- :mod:`.errors`: domain errors and their gRPC status codes.
- :mod:`.metrics`: Prometheus metrics.
- :mod:`.outputs`: candidates.jsonl, the model hub (hub.json / hub.md), pareto.png, ONNX exports.

``python -m gpunet.controller --spec SEARCH.yaml --state-dir DIR`` runs one as a process (the controller pod).
"""

from .core import SearchController
from .errors import ControllerError, InvalidRequestError, UnknownWorkError
from .service import ControllerServer, SearchControllerServicer, TokenAuthInterceptor

__all__ = ["ControllerError", "ControllerServer", "InvalidRequestError", "SearchController", "SearchControllerServicer",
           "TokenAuthInterceptor", "UnknownWorkError"]
