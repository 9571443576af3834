"""Latency backends: measure one layer or a whole network and return median, spread and runs (GPUNet paper, 3.2).

All backends share one interface, :class:`~gpunet.latency.backends.base.LatencyBackend`, register under their
name (:func:`register_backend`) and are created by name with :func:`get_backend`:

- ``onnxruntime`` (:mod:`.onnxruntime`, the CPU default): export the layer to ONNX, run it with ONNX Runtime's
  CPU execution provider at a fixed thread count, ``warmup`` untimed runs, then ``runs`` timed runs.
- ``torch`` (:mod:`.torch`): eager PyTorch on the CPU; on CUDA in FP16 (or FP32), replayed as a CUDA graph and
  timed with CUDA events (GPU time, like TensorRT's "GPU Compute Time").
- ``tensorrt`` (:mod:`.tensorrt`): ONNX -> TensorRT engine (FP16, batch 1, explicit shapes, workspace limit),
  timed with the TensorRT Python API and CUDA events, or with NVIDIA's ``trtexec`` and its "GPU Compute Time"
  median, as the paper measured (section 4.1).

Statistics: median and interquartile range of the per-run times, in ms. Several modules can be measured
together with their timed runs interleaved in ``rounds``, which keeps rankings stable on a shared machine.
Importing this package imports neither torch nor onnxruntime nor tensorrt: each backend imports its library
when it is created.
"""

from .base import (
    CPU_ROUNDS,
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    LatencyBackend,
    backend_from_config,
    backend_names,
    cpu_name,
    get_backend,
    register_backend,
    summarize_ms,
)
from .onnxruntime import OnnxRuntimeBackend
from .tensorrt import TensorRTBackend
from .torch import TorchBackend

__all__ = [
    "CPU_ROUNDS", "DEFAULT_RUNS", "DEFAULT_WARMUP", "LatencyBackend", "OnnxRuntimeBackend", "TensorRTBackend",
    "TorchBackend", "backend_from_config", "backend_names", "cpu_name", "get_backend", "register_backend",
    "summarize_ms",
]
