"""The ``torch`` latency backend: eager PyTorch on the CPU, or FP16/FP32 on a CUDA GPU.

On the CPU, with a fixed thread count, each run is timed with ``time.perf_counter_ns``. On CUDA the forward
pass is captured once as a CUDA graph and replayed (no Python launch overhead), and each replay is timed with
a pair of CUDA events: GPU time, like TensorRT's "GPU Compute Time". torch is imported when a backend is
created.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BackendUnavailableError, LatencyError
from .base import CPU_ROUNDS, LatencyBackend, cpu_thread_device, register_backend

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

log = logging.getLogger(__name__)


@register_backend("torch")
class TorchBackend(LatencyBackend):
    """Eager PyTorch on the CPU or a CUDA GPU.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (GPU 0; ``"cuda:1"`` for another GPU). Warm-up, capture and timing all run
            on that GPU, whichever is current.
        precision: ``"fp32"``, or ``"fp16"`` (CUDA only).
        threads: CPU intra-op threads (``torch.set_num_threads``; process-wide). Part of the CPU device name.
        cuda_graphs: on CUDA, capture the forward pass once and time graph replays (no Python launch
            overhead; closer to TensorRT's GPU compute time); a module whose capture fails is timed as eager
            launches and counted in :attr:`graph_fallbacks` (see :func:`cuda_timer`).
        cudnn_benchmark: on CUDA, let cuDNN time its candidate kernels for each new shape and keep the fastest
            (``torch.backends.cudnn.benchmark``; the analogue of TensorRT's tactic selection, but it costs time per
            new layer); False uses cuDNN's heuristics, which profiles many layers faster.
        **kwargs: ``warmup``, ``runs``, ``rounds``, ``batch_size`` of :class:`LatencyBackend`.

    Raises:
        BackendUnavailableError: CUDA asked for but torch has no CUDA or sees no GPU.
        LatencyError: FP16 asked for on the CPU, or an unknown device.

    On CUDA every run is timed with a pair of CUDA events (``torch.cuda.Event(enable_timing=True)``): GPU
    time, like TensorRT's "GPU Compute Time".
    """

    def __init__(self, *, device: str = "cpu", precision: str = "fp32", threads: int = 1, cuda_graphs: bool = True,
                 cudnn_benchmark: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("rounds", CPU_ROUNDS)
        super().__init__(**kwargs)
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is in the engine's dependencies
            raise BackendUnavailableError("torch", "the Python package 'torch'", "pip install torch") from None

        devices = "'cpu' or 'cuda[:index]'"
        try:
            self.torch_device = torch.device(device)
        except RuntimeError:
            raise LatencyError("device", device, devices) from None
        if self.torch_device.type == "cuda":
            if not torch.cuda.is_available():
                missing = "a CUDA GPU" if torch.version.cuda else "a CUDA build of torch"
                raise BackendUnavailableError("torch", f"{missing} (torch {torch.__version__}, device {device!r})",
                                              "use --device cpu or run on a GPU node")
            # "cuda" means GPU 0, not whichever GPU is current when a measurement happens to run.
            index = 0 if self.torch_device.index is None else self.torch_device.index
            count = torch.cuda.device_count()
            if index >= count:
                raise LatencyError("device", device, f"one of cuda:0..cuda:{count - 1}",
                                   reason=f"this machine has {count} CUDA device{'s' if count != 1 else ''}")
            self.torch_device = torch.device("cuda", index)
        elif self.torch_device.type != "cpu":
            raise LatencyError("device", device, devices)
        if precision not in ("fp32", "fp16"):
            raise LatencyError("precision", precision, ("fp32", "fp16"))
        if precision == "fp16" and self.torch_device.type != "cuda":
            raise LatencyError("precision", precision, ("fp32",), reason="FP16 timing needs a CUDA device, not the CPU")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LatencyError("threads", threads, "an integer >= 1")
        self.precision = precision
        self.threads = threads
        self.cuda_graphs = cuda_graphs
        self.cudnn_benchmark = bool(cudnn_benchmark)
        #: Modules whose CUDA-graph capture failed and that were timed as eager launches instead.
        self.graph_fallbacks = 0
        if self.torch_device.type == "cpu":
            torch.set_num_threads(threads)

    def device_name(self) -> str:
        import torch

        if self.torch_device.type == "cuda":
            return torch.cuda.get_device_name(self.torch_device)
        return cpu_thread_device(self.threads)

    def version(self) -> str:
        import torch

        return f"torch {torch.__version__}"

    def prepare(self, module: "nn.Module", input_shape: tuple[int, int, int, int]) -> Callable[[], float]:
        import torch

        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        module = module.eval().to(self.torch_device, dtype)
        x = torch.randn(*input_shape, device=self.torch_device, dtype=dtype)
        if self.torch_device.type == "cuda":
            return self._prepare_cuda(module, x)
        clock = time.perf_counter_ns

        def timer() -> float:
            with torch.inference_mode():
                t0 = clock()
                module(x)
                return (clock() - t0) / 1e6

        return timer

    def _prepare_cuda(self, module: "nn.Module", x: Any) -> Callable[[], float]:  # pragma: no cover - needs a GPU
        import torch

        torch.backends.cudnn.benchmark = self.cudnn_benchmark  # process-wide, like torch.set_num_threads

        def run() -> Any:
            with torch.inference_mode():
                return module(x)

        with torch.cuda.device(self.torch_device):
            timer, captured = cuda_timer(run, torch.cuda, graphs=self.cuda_graphs)
        if self.cuda_graphs and not captured:
            self.graph_fallbacks += 1
        device = self.torch_device

        def on_device() -> float:
            with torch.cuda.device(device):  # events and replays on this backend's GPU, not the current one
                return timer()

        return on_device


def cuda_timer(run: Callable[[], Any], cuda: Any, *, graphs: bool = True, warmup: int = 3) -> tuple[Callable[[], float], bool]:
    """A timer of one call of ``run`` on the current CUDA device, in ms of GPU time.

    ``run`` is first called ``warmup`` times on a side stream (cuDNN autotuning and lazy allocations happen there,
    not on the capture stream), then, with ``graphs``, captured once as a CUDA graph whose replays the timer
    launches; a capture that fails (an operation CUDA graphs cannot hold) falls back to launching ``run`` eagerly,
    with a warning. Each timed call sits between two CUDA events (``Event(enable_timing=True)``), so the time is
    the GPU's, like TensorRT's "GPU Compute Time".

    Args:
        run: launches the work once (e.g. a module's forward pass on a fixed input).
        cuda: the ``torch.cuda`` module (a stand-in in tests).

    Returns:
        ``(timer, captured)``: ``timer()`` runs once and returns its time in ms; ``captured`` says whether
        replays of a CUDA graph are timed.
    """
    side = cuda.Stream()
    side.wait_stream(cuda.current_stream())
    with cuda.stream(side):
        for _ in range(warmup):
            run()
    cuda.current_stream().wait_stream(side)
    cuda.synchronize()
    step, captured = run, False
    if graphs:
        graph = cuda.CUDAGraph()
        try:
            with cuda.graph(graph):
                run()
        except RuntimeError as exc:
            log.warning("CUDA graph capture failed, timing eager launches instead: %s", exc)
            cuda.synchronize()
        else:
            step, captured = graph.replay, True
    start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)

    def timer() -> float:
        start.record()
        step()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return timer, captured
