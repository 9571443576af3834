"""The CUDA-only branches of the engine, reached on a CPU machine.

CUDA itself is replaced only where nothing else can run here: a stand-in ``torch.cuda`` (:class:`FakeCuda`) for
device selection, the AMP dtype choice and the CUDA-graph timer's capture and fallback. The training loop's AMP
paths (autocast, GradScaler, channels_last) run for real with CPU autocast, through the same code as on CUDA.
Tests marked ``gpu`` run the real CUDA paths where a GPU is present (the lent GPU machine) and are skipped here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import pytest
import torch

from gpunet.space import load_space
from gpunet.spec import parse_training
from gpunet.train import (
    CONTINUE,
    DeviceError,
    Precision,
    load_checkpoint,
    precision_policy,
    recipe_architecture,
    resolve_device,
    train_candidate,
)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class FakeStream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: "FakeStream") -> None:
        self.log.append(("wait", self.name, other.name))


class FakeEvent:
    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing, "timing events must be created with enable_timing=True"
        self.t: float | None = None

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "FakeEvent") -> float:
        assert self.t is not None and end.t is not None, "both events must be recorded"
        return (end.t - self.t) * 1000.0


class FakeGraph:
    def __init__(self) -> None:
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1


class FakeCuda:
    """The parts of ``torch.cuda`` that the CUDA branches use, with a log of what was called."""

    def __init__(self, *, available: bool = True, devices: int = 1, capability: tuple[int, int] = (9, 0),
                 fail_capture: bool = False, peak_bytes: int = 0) -> None:
        self.available, self.devices, self.capability = available, devices, capability
        self.fail_capture, self.peak_bytes = fail_capture, peak_bytes
        self.log: list[Any] = []
        self.current = FakeStream("default", self.log)
        self.capturing = False
        self.graphs: list[FakeGraph] = []

    def is_available(self) -> bool:
        return self.available

    def device_count(self) -> int:
        return self.devices

    def get_device_capability(self, device: Any = None) -> tuple[int, int]:
        return self.capability

    def Stream(self) -> FakeStream:  # noqa: N802 - torch.cuda's name
        return FakeStream("side", self.log)

    def current_stream(self) -> FakeStream:
        return self.current

    @contextlib.contextmanager
    def stream(self, s: FakeStream):
        previous, self.current = self.current, s
        try:
            yield
        finally:
            self.current = previous

    def synchronize(self, device: Any = None) -> None:
        self.log.append("synchronize")

    def CUDAGraph(self) -> FakeGraph:  # noqa: N802 - torch.cuda's name
        self.graphs.append(FakeGraph())
        return self.graphs[-1]

    @contextlib.contextmanager
    def graph(self, g: FakeGraph):
        self.capturing = True
        try:
            yield
        finally:
            self.capturing = False
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")

    def Event(self, enable_timing: bool = False) -> FakeEvent:  # noqa: N802 - torch.cuda's name
        return FakeEvent(enable_timing)

    def max_memory_allocated(self, device: Any = None) -> int:
        return self.peak_bytes

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.log.append("reset_peak")

    def empty_cache(self) -> None:
        self.log.append("empty_cache")


# --- device selection ---------------------------------------------------------------------------------------

def test_auto_device_is_cuda_when_torch_sees_a_gpu_and_cpu_otherwise() -> None:
    assert resolve_device("auto", FakeCuda(available=True)) == "cuda"
    assert resolve_device("auto", FakeCuda(available=False)) == "cpu"
    assert resolve_device("cuda:1", FakeCuda(devices=2)) == "cuda:1"
    assert resolve_device("cpu", FakeCuda(available=False)) == "cpu"


@pytest.mark.parametrize("name, cuda, message", [
    ("cuda", FakeCuda(available=False), "device: got 'cuda'; torch"),
    ("cuda:2", FakeCuda(devices=2), "device: got 'cuda:2'; expected a GPU index below 2"),
    ("tpu", FakeCuda(), "device: got 'tpu'; expected auto, cpu, cuda or cuda:<index>"),
    ("gpu0", FakeCuda(), "device: got 'gpu0'; expected auto, cpu, cuda or cuda:<index>"),
])
def test_a_device_this_process_cannot_use_is_refused_by_name(name: str, cuda: FakeCuda, message: str) -> None:
    with pytest.raises(DeviceError) as info:
        resolve_device(name, cuda)
    assert str(info.value).startswith(message)


def test_the_trainer_worker_refuses_cuda_without_a_gpu_with_one_line(monkeypatch, capsys) -> None:
    from gpunet.rpc import TOKEN_ENV
    from gpunet_worker.__main__ import main

    if torch.cuda.is_available():  # pragma: no cover - the lent GPU machine
        pytest.skip("this machine has a GPU")
    from gpunet.errors import EXIT_CANNOT_START

    monkeypatch.setenv(TOKEN_ENV, "t")
    # a worker that cannot start on this machine says why and exits EX_CONFIG (gpunet run then stops at once)
    assert main(["trainer", "--controller", "127.0.0.1:1", "--device", "cuda", "--threads", "1"]) == EXIT_CANNOT_START == 78
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpunet_worker: cannot start: device: got 'cuda'; torch") and err.endswith("expected cpu or auto")


# --- the AMP switches -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("capability, amp_dtype, dtype, scaler", [
    ((9, 0), "auto", torch.bfloat16, False),   # Hopper: bf16, no loss scaling
    ((8, 0), "auto", torch.bfloat16, False),   # Ampere
    ((7, 0), "auto", torch.float16, True),     # Volta: no fast bf16, so fp16 with a GradScaler
    ((9, 0), "float16", torch.float16, True),
    ((7, 0), "bfloat16", torch.bfloat16, False),
])
def test_cuda_precision_picks_the_amp_dtype_and_scales_only_float16(capability, amp_dtype, dtype, scaler) -> None:
    p = precision_policy("cuda", amp=True, amp_dtype=amp_dtype, cuda=FakeCuda(capability=capability))
    assert (p.device_type, p.amp_dtype, p.grad_scaler, p.channels_last) == ("cuda", dtype, scaler, True)


def test_cpu_and_amp_off_train_in_fp32_without_a_scaler() -> None:
    cpu = precision_policy("cpu", amp=True)
    assert cpu == Precision("cpu", None, False) and cpu.scaler() is None
    assert isinstance(cpu.autocast(), contextlib.nullcontext)
    off = precision_policy("cuda:0", amp=False, cuda=FakeCuda())
    assert (off.amp_dtype, off.grad_scaler, off.channels_last) == (None, False, True)
    assert precision_policy("cuda", channels_last=False, cuda=FakeCuda()).channels_last is False


def test_an_unknown_amp_dtype_is_refused_by_name() -> None:
    with pytest.raises(DeviceError) as info:
        precision_policy("cpu", amp_dtype="fp8")
    assert str(info.value) == "amp_dtype: got 'fp8'; expected one of ['auto', 'bfloat16', 'float16']"


# --- the training loop's AMP paths, run with CPU autocast ---------------------------------------------------------

def _tiny_run(tmp_path, precision: Precision, epochs: int = 1, resume: Any = None, name: str = "c.pt"):
    space = load_space({"preset": "gpunet-tiny", "inChans": 3})
    arch = space.decode([d.values[0] for d in space.digits])
    training = parse_training({"epochs": epochs, "batchSize": 2,
                               "recipe": {"ema": 0.9, "randAugment": "", "reprob": 0.0, "dropPathRate": 0.0}})
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, arch.resolution, arch.resolution, generator=g)
    data = torch.utils.data.TensorDataset(images, torch.tensor([0, 1, 0, 1]))
    dtypes: set[torch.dtype] = set()
    import gpunet.train as train_module

    real_build = train_module.build_model

    def build_and_watch(a):  # record the dtype that each convolution computes in
        model = real_build(a)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
        return model

    reports = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "build_model", build_and_watch)
        outcome = train_candidate(arch, training, tmp_path / name, resume_checkpoint=resume, device=precision.device_type,
                                  datasets=(data, data, 2), precision=precision,
                                  on_epoch=lambda r: reports.append(r) or CONTINUE)
    return recipe_architecture(arch, training, 2), outcome, reports, dtypes


def test_bfloat16_autocast_with_channels_last_trains_and_checkpoints_without_a_scaler(tmp_path) -> None:
    arch, outcome, reports, dtypes = _tiny_run(tmp_path, Precision("cpu", torch.bfloat16, True))
    assert outcome.status == "completed" and len(reports) == 1 and math.isfinite(reports[0].train_loss)
    assert torch.bfloat16 in dtypes, "the convolutions ran under autocast"
    state = load_checkpoint(tmp_path / "c.pt", arch)
    assert state["scaler"] is None
    weights = [t for t in state["model"].values() if t.dim() == 4 and t.shape[-1] > 1]
    assert weights and all(t.is_contiguous(memory_format=torch.channels_last) for t in weights)


def test_float16_autocast_uses_a_grad_scaler_whose_state_survives_a_resume(tmp_path) -> None:
    arch, outcome, reports, dtypes = _tiny_run(tmp_path, Precision("cpu", torch.float16, True))
    assert outcome.status == "completed" and math.isfinite(reports[0].train_loss) and torch.float16 in dtypes
    scaler = load_checkpoint(tmp_path / "c.pt", arch)["scaler"]
    assert scaler is not None and scaler["scale"] > 0
    _, resumed, more, _ = _tiny_run(tmp_path, Precision("cpu", torch.float16, True), epochs=2,
                                    resume=tmp_path / "c.pt", name="c2.pt")
    assert resumed.status == "completed" and not resumed.restarted_from_scratch and [r.epoch for r in more] == [2]


def test_fp32_precision_computes_in_float32(tmp_path) -> None:
    _, outcome, _, dtypes = _tiny_run(tmp_path, Precision("cpu"))
    assert outcome.status == "completed" and dtypes == {torch.float32}


# --- the CUDA-graph timer ---------------------------------------------------------------------------------------

def _counting_run(cuda: FakeCuda) -> tuple[Any, list]:
    calls: list[tuple[str, bool]] = []

    def run() -> None:
        calls.append((cuda.current.name, cuda.capturing))
        sum(range(2000))  # some work for the events to time

    return run, calls


def test_cuda_timer_warms_up_on_a_side_stream_then_times_graph_replays() -> None:
    from gpunet.latency.backends.torch import cuda_timer

    cuda = FakeCuda()
    run, calls = _counting_run(cuda)
    timer, captured = cuda_timer(run, cuda, graphs=True, warmup=3)
    assert captured and calls == [("side", False)] * 3 + [("default", True)]
    assert ("wait", "side", "default") in cuda.log and ("wait", "default", "side") in cuda.log
    assert cuda.log.index("synchronize") > cuda.log.index(("wait", "default", "side"))
    times = [timer() for _ in range(5)]
    assert cuda.graphs[0].replays == 5 and len(calls) == 4, "the timer replays the graph, it does not launch run()"
    assert all(t >= 0 for t in times)


def test_cuda_timer_falls_back_to_eager_launches_when_capture_fails(caplog) -> None:
    from gpunet.latency.backends.torch import cuda_timer

    cuda = FakeCuda(fail_capture=True)
    run, calls = _counting_run(cuda)
    with caplog.at_level(logging.WARNING, logger="gpunet.latency.backends.torch"):
        timer, captured = cuda_timer(run, cuda, graphs=True, warmup=2)
    assert not captured and "CUDA graph capture failed" in caplog.text
    before = len(calls)
    assert timer() > 0 and len(calls) == before + 1 and calls[-1] == ("default", False)
    assert cuda.graphs[0].replays == 0


def test_cuda_timer_without_graphs_never_captures() -> None:
    from gpunet.latency.backends.torch import cuda_timer

    cuda = FakeCuda()
    run, calls = _counting_run(cuda)
    timer, captured = cuda_timer(run, cuda, graphs=False, warmup=1)
    timer()
    assert not captured and not cuda.graphs and calls == [("side", False), ("default", False)]


# --- the real thing, where a GPU is present ------------------------------------------------------------------------

@needs_gpu
def test_gpu_torch_backend_times_fp16_graph_replays() -> None:  # pragma: no cover - needs a GPU
    from gpunet.arch import LayerSpec
    from gpunet.latency import get_backend

    backend = get_backend("torch", device="cuda", precision="fp16", runs=20, warmup=5)
    small = backend.measure_layer(LayerSpec("conv", (1, 32, 56, 56), 32, kernel=3, act="relu")).median_ms
    big = backend.measure_layer(LayerSpec("conv", (1, 256, 56, 56), 256, kernel=3, act="relu")).median_ms
    assert 0 < small < big and backend.graph_fallbacks == 0


@needs_gpu
def test_gpu_training_uses_the_default_cuda_policy(tmp_path) -> None:  # pragma: no cover - needs a GPU
    policy = precision_policy("cuda")
    _, outcome, reports, dtypes = _tiny_run(tmp_path, policy)
    assert outcome.status == "completed" and policy.amp_dtype in dtypes and math.isfinite(reports[0].train_loss)
