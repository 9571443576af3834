"""The TensorRT backend: ONNX -> engine at batch 1 with explicit shapes, median GPU compute time.

The paper measured "FP16 GPU compute time" with ``trtexec --onnx=M.onnx --fp16`` at batch size 1, explicit
shapes and a 10 GiB workspace (sections 3.2 and 4.1; TensorRT 10 spells the workspace option
``--memPoolSize=workspace:10240``). TensorRT 11 (the pinned ``tensorrt`` extra) has no ``--fp16`` any more: every
network is strongly typed, so an FP16 measurement exports its ONNX in FP16 and the engine runs it as given
(:mod:`.tensorrt_api` cites the migration notes). Two modes, same numbers:

- ``mode="api"``: TensorRT's Python API builds the engine (:func:`.tensorrt_api.build_engine`: strongly typed,
  workspace memory-pool limit) on GPU ``device``, and each ``execute_async_v3`` is timed there with a pair of CUDA
  events (torch's CUDA events and buffers); every TensorRT call's result is checked;
- ``mode="trtexec"``: runs NVIDIA's ``trtexec --device=<device>`` and parses its "GPU Compute Time" median from the
  "Performance summary" (:func:`parse_trtexec_log`); per-run times from ``--exportTimes`` give the IQR.

Without TensorRT, a GPU or ``trtexec``, constructing the backend raises
:class:`~gpunet.latency.errors.BackendUnavailableError` naming what is missing. tensorrt and torch are imported
when a backend is created.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, LatencyError
from ..table import Measurement
from .base import LatencyBackend, register_backend, summarize_ms
from .tensorrt_api import build_engine, engine_timer, error_logger, require_version

#: The paper's workspace: 10 GiB (NVIDIA's GPUNet release, ``--memPoolSize=workspace:10240``).
DEFAULT_WORKSPACE_MIB = 10240
#: ONNX opset NVIDIA's release exported with is 10; TensorRT 8+ reads newer opsets, we export 17.
ONNX_OPSET = 17

_STAT = r"(min|max|mean|median|percentile\(\d+(?:\.\d+)?%\))\s*=?\s*([0-9.eE+-]+)\s*ms"


@dataclass(frozen=True)
class TrtexecSummary:
    """The parts of a trtexec log that a latency table needs.

    Attributes:
        gpu_compute_ms: the "GPU Compute Time" statistics in ms, e.g. ``{"min": .., "median": .., "percentile(90%)": ..}``.
        runs: timed inferences ("Timing trace has N queries"), or None when the log does not say.
        tensorrt_version: e.g. ``"10.3.0"`` (from ``[TensorRT v100300]`` or "TensorRT version: 8.6.3"), or None.
        device: the "Selected Device", or None.
        cov_percent: the coefficient of variance trtexec warns about when unstable, or None.
    """

    gpu_compute_ms: dict[str, float]
    runs: int | None
    tensorrt_version: str | None
    device: str | None
    cov_percent: float | None

    @property
    def median_ms(self) -> float:
        return self.gpu_compute_ms["median"]

    @property
    def spread_ms(self) -> float:
        """``percentile(90%) - median`` (trtexec prints no quartiles; older logs without the 90th percentile:
        the 99th), in ms; 0 when the log has neither."""
        high = self.gpu_compute_ms.get("percentile(90%)", self.gpu_compute_ms.get("percentile(99%)"))
        return max(high - self.median_ms, 0.0) if high is not None else 0.0


def _version_from_tag(tag: str) -> str:
    """``100300`` -> ``10.3.0``; ``8601`` -> ``8.6.1`` (trtexec's ``[TensorRT vNNNN]`` tags)."""
    n = int(tag)
    if n >= 10000:  # TensorRT 10: MMmmpp
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def parse_trtexec_log(text: str) -> TrtexecSummary:
    """Parse a trtexec log (TensorRT 8.x-10.x formats).

    Reads the "=== Performance summary ===" line ``GPU Compute Time: min = .. ms, max = .. ms, mean = .. ms,
    median = .. ms, percentile(90%) = .. ms, ...`` (older logs may omit the ``=``), and, when present, the
    "Timing trace has N queries" count, the TensorRT version and the selected device.

    Raises:
        LatencyError: no "GPU Compute Time" median in the log (the message quotes the log's first error line
            when there is one, e.g. a failed engine build).
    """
    stats: dict[str, float] = {}
    summary = text.split("=== Performance summary ===", 1)[-1]
    for line in summary.splitlines():
        if "GPU Compute Time:" in line and "Total GPU Compute Time" not in line:
            stats = {name: float(value) for name, value in re.findall(_STAT, line.split("GPU Compute Time:", 1)[1])}
            break
    if "median" not in stats:
        errors = [ln.split("[E]", 1)[1].strip() for ln in text.splitlines() if "[E]" in ln]
        detail = f"; first error: {errors[0]}" if errors else ""
        raise LatencyError("trtexec log", reason=f"no 'GPU Compute Time' median in the performance summary{detail}")
    runs = re.search(r"Timing trace has (\d+) queries", text)
    version = re.search(r"TensorRT version:\s*([0-9.]+)", text)
    version_text = version.group(1) if version else None
    if version_text is None:
        tag = re.search(r"\[TensorRT v(\d+)\]", text)
        version_text = _version_from_tag(tag.group(1)) if tag else None
    device = re.search(r"Selected Device:\s*(.+)", text)
    cov = re.search(r"coefficient of variance = ([0-9.]+)%", text)
    return TrtexecSummary(
        gpu_compute_ms=stats, runs=int(runs.group(1)) if runs else None, tensorrt_version=version_text,
        device=device.group(1).strip() if device else None, cov_percent=float(cov.group(1)) if cov else None,
    )


def compute_times_from_export(path: str | Path) -> list[float]:
    """Per-run GPU compute times (ms) from a ``trtexec --exportTimes=FILE`` JSON (``computeMs`` of each run)."""
    data = json.loads(Path(path).read_text())
    return [float(row["computeMs"]) for row in data if isinstance(row, dict) and "computeMs" in row]


@register_backend("tensorrt")
class TensorRTBackend(LatencyBackend):
    """TensorRT engines at batch 1 with explicit shapes; median GPU compute time (paper 4.1).

    Args:
        mode: ``"api"`` (TensorRT Python API + CUDA events) or ``"trtexec"`` (run the binary, parse its log).
        workspace_mib: the builder's workspace memory-pool limit (paper: 10240 MiB).
        precision: ``"fp16"`` (paper) or ``"fp32"``: the type of the exported ONNX graph, which the strongly typed
            engine keeps.
        trtexec: path or name of the trtexec binary (mode ``trtexec``).
        device: the GPU: ``"cuda"`` (GPU 0), ``"cuda:<index>"`` or an index. Engines are built and timed there.

    Raises:
        BackendUnavailableError: the ``tensorrt`` package (mode api, >= 10), the ``trtexec`` binary (mode trtexec),
            torch with CUDA, or a GPU is missing.
        LatencyError: a bad mode, precision or device (``"cpu"``, or an index this machine does not have).
    """

    def __init__(self, *, mode: str = "api", workspace_mib: int = DEFAULT_WORKSPACE_MIB, precision: str = "fp16",
                 trtexec: str = "trtexec", device: int | str = 0, **kwargs: Any) -> None:
        kwargs.setdefault("runs", 200)
        super().__init__(**kwargs)
        if mode not in ("api", "trtexec"):
            raise LatencyError("mode", mode, ("api", "trtexec"))
        if precision not in ("fp16", "fp32"):
            raise LatencyError("precision", precision, ("fp16", "fp32"))
        self.mode, self.workspace_mib, self.precision = mode, workspace_mib, precision
        self.device_index = cuda_index(device)
        self.trtexec = trtexec
        self._version: str | None = None
        self._device: str | None = None
        if mode == "trtexec":
            found = shutil.which(trtexec)
            if found is None:
                raise BackendUnavailableError("tensorrt", f"the trtexec binary ({trtexec!r} not on PATH)",
                                              "install TensorRT or pass --trtexec /path/to/trtexec")
            self.trtexec = found
        else:
            try:
                import tensorrt
            except ImportError:
                raise BackendUnavailableError("tensorrt", "the Python package 'tensorrt'",
                                              "pip install '.[tensorrt]' on a CUDA machine, or use mode trtexec") from None
            require_version(tensorrt)
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is in the engine extra
            raise BackendUnavailableError("tensorrt", "the Python package 'torch' (CUDA buffers and events)") from None
        if not torch.cuda.is_available():
            raise BackendUnavailableError("tensorrt", "a CUDA GPU (torch.cuda.is_available() is False)",
                                          "run the profiler on a GPU node, or use the onnxruntime/torch backend")
        count = torch.cuda.device_count()
        if self.device_index >= count:
            raise LatencyError("device", device, f"one of cuda:0..cuda:{count - 1}",
                               reason=f"this machine has {count} CUDA device{'s' if count != 1 else ''}")
        self._tmp = tempfile.TemporaryDirectory(prefix="gpunet-trt-")

    # --- identity (GPU needed from here on) --------------------------------------------------------  # pragma: no cover
    def device_name(self) -> str:  # pragma: no cover
        if self._device is None:
            import torch

            self._device = torch.cuda.get_device_name(self.device_index)
        return self._device

    def version(self) -> str:  # pragma: no cover
        if self._version is None:
            if self.mode == "api":
                import tensorrt as trt

                self._version = f"TensorRT {trt.__version__}"
            else:
                out = subprocess.run([self.trtexec, "--help"], capture_output=True, text=True, timeout=60)
                tag = re.search(r"\[TensorRT v(\d+)\]", out.stdout + out.stderr)
                self._version = f"TensorRT {_version_from_tag(tag.group(1))}" if tag else "TensorRT (trtexec)"
        return self._version

    # --- measuring -------------------------------------------------------------------------------------
    def export(self, module: Any, input_shape: tuple[int, int, int, int]) -> Path:  # pragma: no cover
        """ONNX of ``module`` in this backend's precision (an FP16 graph for fp16: strong typing keeps it)."""
        import torch

        from ...model import export_onnx

        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        return export_onnx(module.cpu(), Path(self._tmp.name) / "model.onnx", input_shape, opset=ONNX_OPSET, dtype=dtype)

    def measure_modules(self, items: list[tuple[Any, tuple[int, int, int, int]]]) -> list[Measurement]:  # pragma: no cover
        """trtexec: one engine build and timing per module, in order; api: interleaved rounds (base class)."""
        if self.mode == "api":
            return super().measure_modules(items)
        return [self.measure_onnx(self.export(module, shape)) for module, shape in items]

    def prepare(self, module: Any, input_shape: tuple[int, int, int, int]) -> Any:  # pragma: no cover
        return self._prepare_api(self.export(module, input_shape))

    def measure_onnx(self, path: Path) -> Measurement:  # pragma: no cover - needs a GPU and TensorRT
        """Median GPU compute time (ms) of an ONNX file with static shapes (its types are the engine's)."""
        if self.mode == "trtexec":
            return self._measure_trtexec(path)
        timer = self._prepare_api(path)
        for _ in range(max(self.warmup, 1)):
            timer()
        return summarize_ms([timer() for _ in range(self.runs)], self.name, self.version())

    def trtexec_command(self, path: Path, times_json: Path, major: int = 11) -> list[str]:
        """The trtexec command line (paper 4.1), e.g. ``trtexec --onnx=M.onnx --memPoolSize=workspace:10240 ...``.

        TensorRT ``major`` < 11 gets ``--fp16`` for an fp16 backend (weak typing; the FP16 graph runs in FP16
        either way); 11.x removed the flag and runs the graph's own types.
        """
        cmd = [self.trtexec, f"--onnx={path}", f"--memPoolSize=workspace:{self.workspace_mib}",
               f"--iterations={self.runs}", f"--warmUp={max(self.warmup, 1) * 10}", "--avgRuns=1",
               "--duration=0", f"--device={self.device_index}", f"--exportTimes={times_json}"]
        if self.precision == "fp16" and major < 11:
            cmd.insert(2, "--fp16")
        return cmd

    def _measure_trtexec(self, path: Path) -> Measurement:  # pragma: no cover
        times_json = Path(self._tmp.name) / "times.json"
        major = int(re.sub(r"\D.*", "", self.version().removeprefix("TensorRT ")) or 11)
        proc = subprocess.run(self.trtexec_command(path, times_json, major), capture_output=True, text=True, timeout=1800)
        summary = parse_trtexec_log(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise LatencyError("trtexec", proc.returncode, reason=f"exited with {proc.returncode} on {path}")
        if summary.tensorrt_version:
            self._version = f"TensorRT {summary.tensorrt_version}"
        times = compute_times_from_export(times_json) if times_json.exists() else []
        if times:
            m = summarize_ms(times, self.name, self.version())
            return Measurement(summary.median_ms, m.spread_ms, len(times), self.name, self.version())
        return Measurement(summary.median_ms, summary.spread_ms, summary.runs or self.runs, self.name, self.version())

    def _prepare_api(self, path: Path) -> Any:  # pragma: no cover
        """Build an engine from ONNX on this backend's GPU and return its timer (:mod:`.tensorrt_api`)."""
        import tensorrt as trt
        import torch

        logger = error_logger(trt)
        with torch.cuda.device(self.device_index):  # TensorRT builds for the current device
            serialized = build_engine(trt, Path(path).read_bytes(), self.workspace_mib, logger, what=f"ONNX file {path}")
        return engine_timer(trt, serialized, self.device_index, logger)

    def close(self) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.cleanup()


def cuda_index(device: int | str) -> int:
    """The GPU index of a ``device`` option: ``"cuda"`` -> 0, ``"cuda:1"`` -> 1, ``1`` -> 1.

    Raises:
        LatencyError: ``"cpu"`` or anything else (TensorRT runs on CUDA GPUs only).
    """
    expected = "'cuda', 'cuda:<index>' or an index >= 0 (TensorRT runs on CUDA GPUs only)"
    if isinstance(device, int) and not isinstance(device, bool):
        if device < 0:
            raise LatencyError("device", device, expected)
        return device
    match = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if match is None:
        raise LatencyError("device", device, expected)
    return int(match.group(1) or 0)
