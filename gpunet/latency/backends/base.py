"""The latency-backend interface, timing summaries and the backend registry.

A backend measures layers and networks on one device with one precision (:class:`LatencyBackend`) and
returns a :class:`~gpunet.latency.table.Measurement`: median and interquartile range (``numpy.percentile``)
of the per-run times, in ms (:func:`summarize_ms`). Backends register under their name with
:func:`register_backend` and are created with :func:`get_backend` (or :func:`backend_from_config`, the form a
controller sends to profiler workers). This module imports neither torch nor onnxruntime nor tensorrt; each
backend imports its library on use.
"""

from __future__ import annotations

import abc
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ...arch import Architecture, LayerSpec
from ..errors import LatencyError, TargetMismatchError
from ..keys import BACKEND_NAMES, LatencyTarget, LayerKey
from ..table import Measurement

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


def cpu_thread_device(threads: int) -> str:
    """The device name of a CPU backend: the CPU's model and the thread count, e.g. ``"<cpu> (1 thread)"``."""
    return f"{cpu_name()} ({threads} thread{'s' if threads > 1 else ''})"


def summarize_ms(times_ms: "np.ndarray | list[float]", backend: str, version: str) -> Measurement:
    """Median and interquartile range (ms) of per-run times, as a :class:`Measurement`."""
    import numpy as np

    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise LatencyError("times_ms", [], "at least one timed run to summarise")
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

    #: The name :func:`get_backend` knows it by (set by :func:`register_backend`), one of
    #: :data:`gpunet.latency.keys.BACKEND_NAMES`.
    name: str = ""
    precision: str = "fp32"

    def __init__(self, *, warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, rounds: int = 1,
                 batch_size: int = 1) -> None:
        for field, value, minimum in (("warmup", warmup, 0), ("runs", runs, 1), ("rounds", rounds, 1),
                                      ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise LatencyError(field, value, f"an integer >= {minimum}")
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
        from ...model import build_layer

        _, c, h, w = spec.input_shape
        return build_layer(spec), (self.batch_size, c, h, w)

    def _network_module(self, arch: Architecture) -> tuple["nn.Module", tuple[int, int, int, int]]:
        from ...model import build_model

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
# Registry
# ---------------------------------------------------------------------------------------------------

B = TypeVar("B", bound=type[LatencyBackend])
_REGISTRY: dict[str, type[LatencyBackend]] = {}


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator: make a :class:`LatencyBackend` subclass known to :func:`get_backend` as ``name``.

    Raises:
        LatencyError: ``name`` is not one of :data:`gpunet.latency.keys.BACKEND_NAMES` (latency keys name
            their backend, so the keys module must know it), or is registered already.
    """
    if name not in BACKEND_NAMES:
        raise LatencyError("backend name", name, BACKEND_NAMES, reason="layer keys know only these backends")
    if name in _REGISTRY:
        raise LatencyError("backend name", name, reason=f"registered already by {_REGISTRY[name].__qualname__}")

    def decorate(cls: B) -> B:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def backend_names() -> list[str]:
    """Names of the registered backends."""
    return sorted(_REGISTRY)


def get_backend(name: str = "onnxruntime", **options: Any) -> LatencyBackend:
    """Create a registered backend by name.

    Args:
        name: ``"onnxruntime"`` (CPU default), ``"torch"`` or ``"tensorrt"``.
        **options: the backend's keyword arguments: ``warmup``, ``runs``, ``rounds``, ``batch_size`` for all;
            ``threads`` (onnxruntime, torch CPU); ``device``, ``precision``, ``cuda_graphs`` (torch);
            ``mode`` (``"api"``/``"trtexec"``), ``workspace_mib``, ``trtexec`` (tensorrt).
            Options that are ``None`` are dropped (so CLI defaults pass through).

    Raises:
        LatencyError: an unknown backend name, or a bad option.
        BackendUnavailableError: the backend's library, GPU or binary is missing (the message names it).
    """
    if name not in _REGISTRY:
        raise LatencyError("backend", name, backend_names())
    return _REGISTRY[name](**{k: v for k, v in options.items() if v is not None})


def backend_from_config(config: dict[str, Any] | Any) -> LatencyBackend:
    """A backend from a JSON-ready config ``{"backend": "onnxruntime", "threads": 1, "runs": 50, ...}``
    (the form a controller sends to profiler workers): ``get_backend(config["backend"], **other options)``."""
    options = dict(config)
    return get_backend(options.pop("backend", "onnxruntime"), **options)
