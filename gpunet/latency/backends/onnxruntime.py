"""The ``onnxruntime`` latency backend, the CPU default.

Each module is exported to ONNX (opset 17) and run by ONNX Runtime's CPU execution provider at a fixed
thread count: ``warmup`` untimed runs, then ``runs`` timed runs (``time.perf_counter_ns``), median and IQR.
onnxruntime is imported when a backend is created.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BackendUnavailableError, LatencyError
from ..table import Measurement
from .base import CPU_ROUNDS, LatencyBackend, cpu_thread_device, register_backend, summarize_ms

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@register_backend("onnxruntime")
class OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime on the CPU: export to ONNX (opset 17), fixed threads, warm-up, timed runs, median.

    Args:
        threads: intra-op threads of the session (inter-op: 1, sequential execution). Part of the device
            name, because it changes latency.
        opset: ONNX opset of the export.
        device, precision: accepted when they say what this backend does (``"cpu"``, ``"fp32"``), so that one
            set of options can name any backend.
        **kwargs: ``warmup``, ``runs``, ``rounds``, ``batch_size`` of :class:`LatencyBackend`.

    Raises:
        BackendUnavailableError: the ``onnxruntime`` package is missing.
        LatencyError: a bad thread count, or another device or precision.
    """

    precision = "fp32"

    def __init__(self, *, threads: int = 1, opset: int = 17, device: str = "cpu", precision: str = "fp32",
                 **kwargs: Any) -> None:
        kwargs.setdefault("rounds", CPU_ROUNDS)
        super().__init__(**kwargs)
        for field, value, only in (("device", device, "cpu"), ("precision", precision, "fp32")):
            if value != only:
                raise LatencyError(field, value, (only,), reason="the onnxruntime backend measures on the CPU in fp32")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise BackendUnavailableError("onnxruntime", "the Python package 'onnxruntime'", "pip install onnxruntime") from None
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LatencyError("threads", threads, "an integer >= 1")
        self.threads, self.opset = threads, opset
        self._tmp = tempfile.TemporaryDirectory(prefix="gpunet-ort-")

    def device_name(self) -> str:
        return cpu_thread_device(self.threads)

    def version(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"

    def export(self, module: "nn.Module", input_shape: tuple[int, int, int, int]) -> Path:
        """Export ``module`` to an ONNX file in this backend's temporary folder (overwritten by the next export)."""
        from ...model import export_onnx

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
