"""TensorRT's Python API as the ``tensorrt`` backend uses it: build a strongly typed engine from ONNX, time it.

Written for TensorRT 11 (the pinned ``tensorrt`` extra: ``tensorrt-cu13==11.4.0.106``), and working with 10.x:

- TensorRT 11 removed weak typing: ``BuilderFlag.FP16`` (and ``trtexec --fp16``) are gone and every network is
  strongly typed (TensorRT 11.0.0 release notes, "Strongly typed networks are now the default"; NVIDIA's "Migrating
  from TensorRT 10.x to 11.x", Removed Python APIs: ``BuilderFlag.FP16`` -> strong typing). The precision therefore
  lives in the graph: an FP16 measurement exports its ONNX in FP16 (weights and input, see
  :func:`gpunet.model.export_onnx`), and the engine runs the types it is given. On 10.x the
  ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` flag asks for the same (11.x accepts and ignores it).
- ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is gone (11.x) and has been the only mode since 10.0: not used.
- The rest (``build_serialized_network``, ``IBuilderConfig.set_memory_pool_limit``, ``MemoryPoolType.WORKSPACE``,
  the name-based I/O of ``ICudaEngine``, ``IExecutionContext.set_tensor_address`` and ``execute_async_v3``) is
  unchanged from 10.x.

Every call's result is checked, with a :class:`~gpunet.latency.errors.LatencyError` naming the call and TensorRT's
first logged error: a builder, network, parser, config, runtime, engine or context that is None, a parser error,
``build_serialized_network`` returning None, ``set_tensor_address`` or ``execute_async_v3`` returning False (before,
a failed run was timed as about 0 ms), and a timed run that is not a positive, finite time.

:data:`TENSORRT_API` lists every TensorRT name used here; ``tests/test_tensorrt_backend.py`` checks that the
installed TensorRT has each of them (where it imports) and that this module uses no other.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from ..errors import BackendUnavailableError, LatencyError

log = logging.getLogger(__name__)

#: Every TensorRT name this module uses: module attributes, classes and their members (methods, properties, enum
#: members), as ``"Class.member"`` paths from the ``tensorrt`` module.
TENSORRT_API = (
    "__version__",
    "ILogger", "ILogger.log", "ILogger.Severity.INTERNAL_ERROR", "ILogger.Severity.ERROR", "ILogger.Severity.WARNING",
    "Builder", "Builder.create_network", "Builder.create_builder_config", "Builder.build_serialized_network",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "OnnxParser", "OnnxParser.parse", "OnnxParser.num_errors", "OnnxParser.get_error",
    "IBuilderConfig.set_memory_pool_limit", "MemoryPoolType.WORKSPACE",
    "Runtime", "Runtime.deserialize_cuda_engine",
    "ICudaEngine.create_execution_context", "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name",
    "ICudaEngine.get_tensor_shape", "ICudaEngine.get_tensor_dtype",
    "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3",
    "DataType.FLOAT", "DataType.HALF", "DataType.BF16", "DataType.INT32",
)
#: Oldest TensorRT major version the backend supports (name-based I/O, ``execute_async_v3``, strong typing).
MIN_MAJOR = 10
#: TensorRT data types of I/O tensors -> torch dtype names.
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32"}


def require_version(trt: Any) -> int:
    """The major version of the ``tensorrt`` module; raises BackendUnavailableError below :data:`MIN_MAJOR`."""
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_MAJOR:
        raise BackendUnavailableError("tensorrt", f"TensorRT >= {MIN_MAJOR} (found {trt.__version__})",
                                      "pip install the project's tensorrt extra")
    return major


def error_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps TensorRT's error messages (``.errors``) for our exceptions and sends warnings
    to this module's log."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
            elif severity == trt.ILogger.Severity.WARNING:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _first_error(logger: Any) -> str:
    errors = getattr(logger, "errors", None)
    return f"; TensorRT said: {errors[0]}" if errors else ""


def _made(obj: Any, call: str, logger: Any) -> Any:
    """``obj``, or a LatencyError when TensorRT returned None."""
    if obj is None:
        raise LatencyError(call, None, reason=f"TensorRT returned nothing{_first_error(logger)}")
    return obj


def build_engine(trt: Any, onnx: bytes, workspace_mib: int, logger: Any, what: str = "ONNX model") -> Any:
    """A serialized engine (``IHostMemory``) of the ONNX bytes ``onnx``: strongly typed, explicit shapes, a workspace
    memory-pool limit of ``workspace_mib`` MiB. Builds on the current CUDA device.

    Raises:
        LatencyError: any step fails (the message names it and quotes TensorRT's first error).
    """
    builder = _made(trt.Builder(logger), "trt.Builder", logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = _made(builder.create_network(flags), "Builder.create_network", logger)
    parser = _made(trt.OnnxParser(network, logger), "trt.OnnxParser", logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no error recorded"
        raise LatencyError(what, reason=f"TensorRT's ONNX parser refused it: {errors}")
    config = _made(builder.create_builder_config(), "Builder.create_builder_config", logger)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LatencyError(what, reason=f"TensorRT could not build an engine from it (build_serialized_network "
                                        f"returned None){_first_error(logger)}")
    return serialized


def run_once(context: Any, stream_handle: int, logger: Any) -> None:
    """Enqueue one inference of ``context`` on a CUDA stream; LatencyError when TensorRT refuses it."""
    if not context.execute_async_v3(stream_handle):
        raise LatencyError("IExecutionContext.execute_async_v3", False,
                           reason=f"TensorRT could not run the engine{_first_error(logger)}")


def check_elapsed(ms: float) -> float:
    """A timed run's GPU time in ms; LatencyError unless it is positive and finite."""
    if not (math.isfinite(ms) and ms > 0):
        raise LatencyError("GPU compute time", ms, "a time in ms > 0", reason="the CUDA events timed no work")
    return float(ms)


def engine_timer(trt: Any, serialized: Any, device_index: int, logger: Any) -> Callable[[], float]:  # pragma: no cover
    """Deserialize an engine on GPU ``device_index``, bind random I/O buffers there and return a callable that
    runs it once and returns the GPU time in ms (two CUDA events around ``execute_async_v3`` on the engine's own
    stream). The callable keeps the engine, its context and buffers alive."""
    import torch

    device = torch.device("cuda", device_index)
    with torch.cuda.device(device):
        runtime = _made(trt.Runtime(logger), "trt.Runtime", logger)
        engine = _made(runtime.deserialize_cuda_engine(serialized), "Runtime.deserialize_cuda_engine", logger)
        context = _made(engine.create_execution_context(), "ICudaEngine.create_execution_context", logger)
        buffers = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(name))
            kind = next((k for k in _TORCH_DTYPES if engine.get_tensor_dtype(name) == getattr(trt.DataType, k)), None)
            if kind is None or any(d < 0 for d in shape):
                raise LatencyError(f"engine tensor {name!r}", (str(engine.get_tensor_dtype(name)), shape),
                                   f"a static shape of one of {sorted(_TORCH_DTYPES)}")
            dtype = getattr(torch, _TORCH_DTYPES[kind])
            buf = torch.randn(shape, device=device, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, device=device, dtype=dtype)
            if not context.set_tensor_address(name, buf.data_ptr()):
                raise LatencyError(f"IExecutionContext.set_tensor_address({name!r})", False,
                                   reason=f"TensorRT refused the buffer{_first_error(logger)}")
            buffers[name] = buf
        stream = torch.cuda.Stream(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timer() -> float:
        with torch.cuda.device(device):
            start.record(stream)
            run_once(context, stream.cuda_stream, logger)
            end.record(stream)
            end.synchronize()
        return check_elapsed(start.elapsed_time(end))

    timer.keep = (runtime, engine, context, buffers, stream)  # type: ignore[attr-defined]
    return timer
