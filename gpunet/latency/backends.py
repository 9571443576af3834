"""Latency backends: measure one layer or a whole network and return median, spread and runs.

All backends share one interface, :class:`LatencyBackend`, and are created by name with
:func:`get_backend`. Heavy libraries (torch, onnxruntime, tensorrt) are imported on first use, so that
``import gpunet.latency`` stays cheap.

- ``onnxruntime`` (the CPU default): export the layer to ONNX, run it with ONNX Runtime's CPU execution
  provider at a fixed thread count, ``warmup`` untimed runs, then ``runs`` timed runs; median and IQR.
- ``torch``: eager PyTorch. On CPU with a fixed thread count, timed with ``time.perf_counter``; on CUDA in
  FP16 (or FP32), replayed as a CUDA graph and timed with CUDA events (GPU time, like TensorRT's "GPU
  Compute Time").
- ``tensorrt``: ONNX -> TensorRT engine (FP16, batch 1, explicit shapes, workspace limit), timed with the
  TensorRT Python API and CUDA events, or with NVIDIA's ``trtexec`` and its "GPU Compute Time" median, as
  the paper measured (section 4.1). See :mod:`gpunet.latency.tensorrt`.

Statistics: median and interquartile range (``numpy.percentile``) of the per-run times, in ms. Several
modules can be measured together with their timed runs interleaved in ``rounds`` (see
:class:`LatencyBackend`), which keeps rankings stable on a shared machine.
"""

from __future__ import annotations

import abc
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..arch import Architecture, LayerSpec
from .errors import BackendUnavailableError, LatencyError, TargetMismatchError
from .keys import BACKEND_NAMES, LatencyTarget, LayerKey
from .table import Measurement

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import nn

#: Defaults: untimed warm-up runs and timed runs per measurement (the paper's baselines: 1000 runs on GPU;
#: small CPU layers reach a stable median much sooner).
DEFAULT_WARMUP = 10
DEFAULT_RUNS = 50
#: Default interleaved rounds of the CPU backends. Measured on this project's shared 2-core machine
#: (benchmarks/latency_fidelity.py, gpunet-tiny, 60 networks): rounds=1 gave Spearman 0.90 and a calibrated
#: error of 9.5%, rounds=10 gave 0.965 and 6.8%, at the same number of timed runs.
CPU_ROUNDS = 10


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`), for device names."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def summarize_ms(times_ms: "np.ndarray | list[float]", backend: str, version: str) -> Measurement:
    """Median and interquartile range (ms) of per-run times, as a :class:`Measurement`."""
    import numpy as np

    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise LatencyError("no timed runs to summarise")
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return Measurement(median_ms=float(max(med, 1e-6)), spread_ms=float(q3 - q1), runs=int(t.size), backend=backend,
                       backend_version=version)


class LatencyBackend(abc.ABC):
    """Measures layers and networks on one device with one precision.

    Args:
        warmup: untimed runs of each module before timing.
        runs: timed runs per module; the median of them is the latency.
        rounds: split the timed runs of a group of modules into this many interleaved rounds (round 1:
            ``runs / rounds`` runs of module 1, of module 2, ...; round 2: again ...; at most ``runs``
            rounds). On a shared machine this spreads bursts of load over all modules of the group instead
            of hitting one, which keeps their ranking stable; 1 measures each module in one go. The CPU
            backends default to :data:`CPU_ROUNDS`.
        batch_size: ``N`` of the inputs (paper: 1).

    Subclasses implement :meth:`prepare` (a callable that runs a module once and returns its time in ms) or
    override :meth:`measure_modules` (e.g. TensorRT through trtexec).
    """

    #: The name :func:`get_backend` knows it by, one of :data:`gpunet.latency.keys.BACKEND_NAMES`.
    name: str = ""
    precision: str = "fp32"

    def __init__(self, *, warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, rounds: int = 1,
                 batch_size: int = 1) -> None:
        for field, value, minimum in (("warmup", warmup, 0), ("runs", runs, 1), ("rounds", rounds, 1),
                                      ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise LatencyError(f"{field}: got {value!r}; expected an integer >= {minimum}")
        self.warmup, self.runs, self.rounds, self.batch_size = warmup, runs, rounds, batch_size

    # --- identity ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def device_name(self) -> str:
        """The device as it goes into layer keys, e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"<cpu model> (1 thread)"``."""

    @abc.abstractmethod
    def version(self) -> str:
        """Backend library and version, e.g. ``"onnxruntime 1.17.1"``."""

    def target(self) -> LatencyTarget:
        """The :class:`LatencyTarget` this backend measures (keys it can fill)."""
        return LatencyTarget(self.name, self.device_name(), self.precision, self.batch_size)

    def check_key(self, key: LayerKey) -> None:
        """Raise :class:`TargetMismatchError` when ``key`` is for another backend/device/precision/batch size."""
        mine = self.target()
        for field in ("backend", "device", "precision", "batch_size"):
            if getattr(key, field) != getattr(mine, field):
                raise TargetMismatchError(field, getattr(key, field), getattr(mine, field))

    # --- measuring -----------------------------------------------------------------------------------
    def _layer_module(self, spec: LayerSpec | LayerKey) -> tuple["nn.Module", tuple[int, int, int, int]]:
        if isinstance(spec, LayerKey):
            self.check_key(spec)
            spec = spec.to_spec()
        from ..model import build_layer

        _, c, h, w = spec.input_shape
        return build_layer(spec), (self.batch_size, c, h, w)

    def _network_module(self, arch: Architecture) -> tuple["nn.Module", tuple[int, int, int, int]]:
        from ..model import build_model

        return build_model(arch), (self.batch_size, arch.in_chans, arch.resolution, arch.resolution)

    def measure_layer(self, spec: LayerSpec | LayerKey) -> Measurement:
        """Latency of one layer (built by :func:`gpunet.model.build_layer`) at this backend's batch size.

        Raises:
            TargetMismatchError: ``spec`` is a :class:`LayerKey` of another target.
        """
        return self.measure_modules([self._layer_module(spec)])[0]

    def measure_layers(self, specs: "list[LayerSpec | LayerKey]") -> list[Measurement]:
        """Latencies of several layers, their runs interleaved in :attr:`rounds` (one per spec, in order)."""
        return self.measure_modules([self._layer_module(s) for s in specs])

    def measure_network(self, arch: Architecture) -> Measurement:
        """End-to-end latency of the whole network of ``arch`` (:func:`gpunet.model.build_model`)."""
        return self.measure_modules([self._network_module(arch)])[0]

    def measure_networks(self, archs: "list[Architecture]") -> list[Measurement]:
        """End-to-end latencies of several networks, their runs interleaved in :attr:`rounds`."""
        return self.measure_modules([self._network_module(a) for a in archs])

    def measure_module(self, module: "nn.Module", input_shape: tuple[int, int, int, int]) -> Measurement:
        """Latency of ``module`` (put in eval mode) on an input ``N x C x H x W``."""
        return self.measure_modules([(module, input_shape)])[0]

    def measure_modules(self, items: "list[tuple[nn.Module, tuple[int, int, int, int]]]") -> list[Measurement]:
        """Latencies of ``(module, input shape)`` pairs: prepare all, warm each up, then time them in
        :attr:`rounds` interleaved rounds of ``ceil(runs / rounds)`` runs; median and IQR per module."""
        timers = [self.prepare(module, shape) for module, shape in items]
        for timer in timers:
            for _ in range(self.warmup):
                timer()
        rounds = min(self.rounds, self.runs)
        per_round = -(-self.runs // rounds)
        times: list[list[float]] = [[] for _ in timers]
        for _ in range(rounds):
            for timer, acc in zip(timers, times):
                acc.extend(timer() for _ in range(per_round))
        version = self.version()
        return [summarize_ms(t, self.name, version) for t in times]

    def prepare(self, module: "nn.Module", input_shape: tuple[int, int, int, int]) -> Callable[[], float]:
        """Make ``module`` ready to run (export, session, device copy) and return a callable that runs it
        once on a fixed random input and returns the time of that run in ms."""
        raise NotImplementedError(f"{type(self).__name__} measures whole modules only")

    def close(self) -> None:
        """Release resources (temporary files, CUDA memory). Idempotent."""


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime (CPU)
# ---------------------------------------------------------------------------------------------------


class OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime on the CPU: export to ONNX (opset 17), fixed threads, warm-up, timed runs, median.

    Args:
        threads: intra-op threads of the session (inter-op: 1, sequential execution). Part of the device
            name, because it changes latency.
        opset: ONNX opset of the export.
        **kwargs: ``warmup``, ``runs``, ``rounds``, ``batch_size`` of :class:`LatencyBackend`.
    """

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, *, threads: int = 1, opset: int = 17, **kwargs: Any) -> None:
        kwargs.setdefault("rounds", CPU_ROUNDS)
        super().__init__(**kwargs)
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise BackendUnavailableError("onnxruntime", "the Python package 'onnxruntime'", "pip install onnxruntime") from None
        if threads < 1:
            raise LatencyError(f"threads: got {threads}; expected an integer >= 1")
        self.threads, self.opset = threads, opset
        self._tmp = tempfile.TemporaryDirectory(prefix="gpunet-ort-")

    def device_name(self) -> str:
        return f"{cpu_name()} ({self.threads} thread{'s' if self.threads > 1 else ''})"

    def version(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"

    def export(self, module: "nn.Module", input_shape: tuple[int, int, int, int]) -> Path:
        """Export ``module`` to an ONNX file in this backend's temporary folder (overwritten by the next export)."""
        from ..model import export_onnx

        path = Path(self._tmp.name) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return export_onnx(module, path, input_shape, opset=self.opset)

    def session(self, onnx_path: Path) -> Any:
        """An ``onnxruntime.InferenceSession`` on the CPU with this backend's fixed thread count."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def prepare_onnx(self, onnx_path: Path) -> Callable[[], float]:
        """A timer (ms per run) of an ONNX file with one float32 input (the session reads the file at once)."""
        import numpy as np

        sess = self.session(onnx_path)
        inp = sess.get_inputs()[0]
        feed = {inp.name: np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)}
        run, clock = sess.run, time.perf_counter_ns

        def timer() -> float:
            t0 = clock()
            run(None, feed)
            return (clock() - t0) / 1e6

        return timer

    def prepare(self, module: "nn.Module", input_shape: tuple[int, int, int, int]) -> Callable[[], float]:
        return self.prepare_onnx(self.export(module, input_shape))

    def measure_onnx(self, onnx_path: Path) -> Measurement:
        """Latency of an ONNX file with one float32 input of static shape."""
        timer = self.prepare_onnx(onnx_path)
        for _ in range(self.warmup):
            timer()
        return summarize_ms([timer() for _ in range(self.runs)], self.name, self.version())

    def close(self) -> None:
        self._tmp.cleanup()


# ---------------------------------------------------------------------------------------------------
# PyTorch (CPU, CUDA)
# ---------------------------------------------------------------------------------------------------


class TorchBackend(LatencyBackend):
    """Eager PyTorch on the CPU or a CUDA GPU.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` for another GPU).
        precision: ``"fp32"``, or ``"fp16"`` (CUDA only).
        threads: CPU intra-op threads (``torch.set_num_threads``; process-wide). Part of the CPU device name.
        cuda_graphs: on CUDA, capture the forward pass once and time graph replays (no Python launch
            overhead; closer to TensorRT's GPU compute time).
        **kwargs: ``warmup``, ``runs``, ``rounds``, ``batch_size`` of :class:`LatencyBackend`.

    Raises:
        BackendUnavailableError: CUDA asked for but torch has no CUDA or sees no GPU.
        LatencyError: FP16 asked for on the CPU, or an unknown device.

    On CUDA every run is timed with a pair of CUDA events (``torch.cuda.Event(enable_timing=True)``): GPU
    time, like TensorRT's "GPU Compute Time".
    """

    name = "torch"

    def __init__(self, *, device: str = "cpu", precision: str = "fp32", threads: int = 1, cuda_graphs: bool = True,
                 **kwargs: Any) -> None:
        kwargs.setdefault("rounds", CPU_ROUNDS)
        super().__init__(**kwargs)
        import torch

        try:
            self.torch_device = torch.device(device)
        except RuntimeError:
            raise LatencyError(f"device: got {device!r}; expected 'cpu' or 'cuda[:index]'") from None
        if self.torch_device.type == "cuda":
            if not torch.cuda.is_available():
                missing = "a CUDA GPU" if torch.version.cuda else "a CUDA build of torch"
                raise BackendUnavailableError("torch", f"{missing} (torch {torch.__version__}, device {device!r})",
                                              "use --device cpu or run on a GPU node")
        elif self.torch_device.type != "cpu":
            raise LatencyError(f"device: got {device!r}; expected 'cpu' or 'cuda[:index]'")
        if precision not in ("fp32", "fp16"):
            raise LatencyError(f"precision: got {precision!r}; expected 'fp32' or 'fp16'")
        if precision == "fp16" and self.torch_device.type != "cuda":
            raise LatencyError("precision: got 'fp16' on the CPU; expected 'fp32' (FP16 timing needs a CUDA device)")
        self.precision = precision
        self.threads = threads
        self.cuda_graphs = cuda_graphs
        if self.torch_device.type == "cpu":
            torch.set_num_threads(threads)

    def device_name(self) -> str:
        import torch

        if self.torch_device.type == "cuda":
            return torch.cuda.get_device_name(self.torch_device)
        return f"{cpu_name()} ({self.threads} thread{'s' if self.threads > 1 else ''})"

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

        torch.backends.cudnn.benchmark = True
        with torch.inference_mode(), torch.cuda.device(self.torch_device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up (and cuDNN autotuning) off the capture stream
                for _ in range(3):
                    module(x)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            if self.cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    module(x)
                step: Callable[[], Any] = graph.replay
            else:
                def step() -> Any:
                    with torch.inference_mode():
                        return module(x)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timer() -> float:
            start.record()
            step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return timer


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------


def get_backend(name: str = "onnxruntime", **options: Any) -> LatencyBackend:
    """Create a backend by name.

    Args:
        name: ``"onnxruntime"`` (CPU default), ``"torch"`` or ``"tensorrt"``.
        **options: the backend's keyword arguments: ``warmup``, ``runs``, ``rounds``, ``batch_size`` for all;
            ``threads`` (onnxruntime, torch CPU); ``device``, ``precision``, ``cuda_graphs`` (torch);
            ``mode`` (``"api"``/``"trtexec"``), ``workspace_mib``, ``trtexec`` (tensorrt).
            Options that are ``None`` are dropped (so CLI defaults pass through).

    Raises:
        LatencyError: an unknown backend name.
        BackendUnavailableError: the backend's library, GPU or binary is missing (the message names it).
    """
    options = {k: v for k, v in options.items() if v is not None}
    if name == "onnxruntime":
        for option, only in (("device", "cpu"), ("precision", "fp32")):  # accepted when they say what it does
            if options.get(option) == only:
                del options[option]
        return OnnxRuntimeBackend(**options)
    if name == "torch":
        return TorchBackend(**options)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(**options)
    raise LatencyError(f"backend: got {name!r}; expected one of {list(BACKEND_NAMES)}")


def backend_from_config(config: dict[str, Any] | Any) -> LatencyBackend:
    """A backend from a JSON-ready config ``{"backend": "onnxruntime", "threads": 1, "runs": 50, ...}``
    (the form a controller sends to profiler workers): ``get_backend(config["backend"], **other options)``."""
    options = dict(config)
    return get_backend(options.pop("backend", "onnxruntime"), **options)
