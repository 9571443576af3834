"""Latency backends: real CPU measurements, TensorRT's trtexec log parsing, clear errors without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpunet.arch import LayerSpec
from gpunet.errors import GpunetError
from gpunet.latency import (
    BackendUnavailableError,
    KeyFormatError,
    LatencyError,
    LatencyTarget,
    LayerKey,
    MissingLayersError,
    TableError,
    TargetMismatchError,
    TierError,
    backend_from_config,
    get_backend,
    register_backend,
)
from gpunet.latency.backends import backend_names
from gpunet.latency.backends.tensorrt import compute_times_from_export, parse_trtexec_log
from gpunet.space import load_space

DATA = Path(__file__).parent / "data" / "latency"
SMALL = LayerSpec("conv", (1, 8, 16, 16), 8, kernel=3, act="relu")
BIG = LayerSpec("conv", (1, 64, 56, 56), 64, kernel=5, act="relu")  # ~200x the multiply-adds of SMALL
#: Two measurements of one layer on this shared 2-core machine agree within a factor of 2 (stated tolerance).
AGREEMENT = 2.0


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def cpu_backend(request: pytest.FixtureRequest):
    backend = get_backend(request.param, threads=1, runs=20, warmup=3)
    yield backend
    backend.close()


def test_cpu_backend_measures_real_positive_latency(cpu_backend) -> None:
    m = cpu_backend.measure_layer(SMALL)
    assert m.median_ms > 0 and m.spread_ms >= 0 and m.runs == 20
    assert m.backend == cpu_backend.name and m.backend_version.startswith(cpu_backend.name)


def test_cpu_backend_measures_a_bigger_layer_slower(cpu_backend) -> None:
    small, big = cpu_backend.measure_layer(SMALL).median_ms, cpu_backend.measure_layer(BIG).median_ms
    assert big > 5 * small


def test_two_measurements_of_a_layer_agree(cpu_backend) -> None:
    a, b = (cpu_backend.measure_layer(BIG).median_ms for _ in range(2))
    assert max(a, b) / min(a, b) < AGREEMENT


def test_cpu_backend_measures_a_whole_network(cpu_backend) -> None:
    space = load_space("gpunet-tiny")
    arch = space.decode(space.sample(1, seed=4)[0])
    assert cpu_backend.measure_network(arch).median_ms > cpu_backend.measure_layer(arch.layer_specs()[-1]).median_ms


def test_device_name_carries_the_thread_count() -> None:
    assert get_backend("onnxruntime", threads=2).device_name().endswith("(2 threads)")
    assert get_backend("onnxruntime").target().device.endswith("(1 thread)")


def test_backend_refuses_keys_of_another_device() -> None:
    backend = get_backend("onnxruntime", runs=2, warmup=0)
    foreign = LayerKey.from_spec(SMALL, backend.target()).with_target(
        LatencyTarget("onnxruntime", "Some Other CPU (1 thread)", "fp32", 1))
    with pytest.raises(TargetMismatchError, match="device"):
        backend.measure_layer(foreign)


# --- without TensorRT or a GPU: clear errors ---------------------------------------------------------


def test_tensorrt_without_the_package_names_it() -> None:
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailableError, match="'tensorrt'"):
            get_backend("tensorrt")
    else:  # pragma: no cover - a machine with TensorRT
        pytest.skip("tensorrt is installed here")


def test_tensorrt_trtexec_mode_without_the_binary_names_it() -> None:
    with pytest.raises(BackendUnavailableError, match="trtexec binary"):
        get_backend("tensorrt", mode="trtexec", trtexec="/nonexistent/trtexec")


def test_torch_cuda_without_a_gpu_names_what_is_missing() -> None:
    import torch

    if torch.cuda.is_available():  # pragma: no cover
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        get_backend("torch", device="cuda", precision="fp16")
    with pytest.raises(LatencyError, match="fp16"):
        get_backend("torch", device="cpu", precision="fp16")
    with pytest.raises(LatencyError, match="backend: got 'tvm'"):
        get_backend("tvm")


# --- trtexec logs ----------------------------------------------------------------------------------------


def test_trtexec_log_gives_median_gpu_compute_time() -> None:
    summary = parse_trtexec_log((DATA / "trtexec_10.3_h100_fp16.log").read_text())
    assert summary.median_ms == pytest.approx(0.0275879)  # GPU Compute Time, not Latency (0.0441895) or Enqueue
    assert summary.gpu_compute_ms["min"] == pytest.approx(0.0264893)
    assert summary.spread_ms == pytest.approx(0.0297852 - 0.0275879)
    assert summary.runs == 200
    assert summary.tensorrt_version == "10.3.0"
    assert summary.device == "NVIDIA H100 80GB HBM3"
    assert summary.cov_percent == pytest.approx(9.94431)


def test_trtexec_log_of_older_format_without_equals_signs() -> None:
    log = ("&&&& RUNNING TensorRT.trtexec [TensorRT v8001] # trtexec --onnx=m.onnx --fp16\n"
           "[08/02/2021-10:14:58] [I] === Performance summary ===\n"
           "[08/02/2021-10:14:58] [I] GPU Compute Time: min = 0.598 ms, max 0.702 ms, mean 0.621 ms, median 0.615 ms, "
           "percentile(99%) 0.689 ms\n"
           "[08/02/2021-10:14:58] [I] Total GPU Compute Time: 2.98 s\n")
    summary = parse_trtexec_log(log)
    assert summary.median_ms == pytest.approx(0.615) and summary.spread_ms == pytest.approx(0.689 - 0.615)
    assert summary.tensorrt_version == "8.0.1" and summary.runs is None


def test_failed_trtexec_run_raises_with_its_first_error() -> None:
    with pytest.raises(LatencyError, match="While parsing node number 12"):
        parse_trtexec_log((DATA / "trtexec_8.0_gv100_failed.log").read_text())


def test_trtexec_export_times_give_per_run_compute_times(tmp_path: Path) -> None:
    path = tmp_path / "times.json"
    path.write_text(json.dumps([{"startEnqMs": 0.1, "computeMs": 0.031, "latencyMs": 0.05},
                                {"startEnqMs": 0.2, "computeMs": 0.029, "latencyMs": 0.05}]))
    assert compute_times_from_export(path) == [0.031, 0.029]


def test_interleaved_rounds_measure_each_layer_with_all_its_runs() -> None:
    backend = get_backend("onnxruntime", runs=12, warmup=1, rounds=4)
    small, big = backend.measure_layers([SMALL, BIG])
    assert small.runs == big.runs == 12
    assert big.median_ms > 5 * small.median_ms
    assert get_backend("onnxruntime", runs=3, warmup=0, rounds=10).measure_layer(SMALL).runs == 3
    with pytest.raises(LatencyError, match="rounds"):
        get_backend("onnxruntime", rounds=0)


# --- the registry, imports and errors ----------------------------------------------------------------------


def test_registry_knows_the_three_backends_and_refuses_unknown_names() -> None:
    assert backend_names() == ["onnxruntime", "tensorrt", "torch"]
    assert backend_from_config({"backend": "onnxruntime", "runs": 2, "threads": None}).runs == 2
    with pytest.raises(LatencyError) as info:
        get_backend("tvm")
    assert info.value.field == "backend" and info.value.expected == ("onnxruntime", "tensorrt", "torch")
    with pytest.raises(LatencyError, match="layer keys know only these backends"):
        register_backend("tvm")
    with pytest.raises(LatencyError, match="registered already"):
        register_backend("torch")


def test_onnxruntime_accepts_only_its_own_device_and_precision() -> None:
    assert get_backend("onnxruntime", device="cpu", precision="fp32").target().precision == "fp32"
    with pytest.raises(LatencyError) as info:
        get_backend("onnxruntime", device="cuda")
    assert str(info.value) == ("device: got 'cuda'; the onnxruntime backend measures on the CPU in fp32; "
                               "expected one of ['cpu']")


def test_importing_the_latency_package_loads_no_deep_learning_library() -> None:
    code = ("import sys, gpunet, gpunet.latency, gpunet.latency.backends, gpunet.sampling; "
            "print(sorted({'torch', 'onnxruntime', 'tensorrt'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_latency_errors_share_the_gpunet_message_format_and_builtin_bases() -> None:
    key = LayerKey.from_spec(SMALL, LatencyTarget())
    missing = MissingLayersError([key], "network X")
    assert isinstance(missing, GpunetError) and isinstance(missing, KeyError) and missing.keys == [key]
    assert str(missing).startswith("layers for network X: 1 missing from the latency table (first: conv k3")
    assert "`gpunet latency build`" in str(missing)
    table = TableError("/data/t.sqlite", "no such file")
    assert str(table) == "latency table /data/t.sqlite: no such file" and table.path == "/data/t.sqlite"
    bad_key = KeyFormatError("stride", 0, "a positive integer")
    assert isinstance(bad_key, ValueError) and bad_key.field == "stride"
    assert str(bad_key) == "layer key stride: got 0; expected a positive integer"
    unavailable = BackendUnavailableError("tensorrt", "a CUDA GPU", "run it on a GPU node")
    assert str(unavailable) == "latency backend: got 'tensorrt'; cannot run here: a CUDA GPU is missing; run it on a GPU node"
    mismatch = TargetMismatchError("device", "CPU A", "CPU B")
    assert mismatch.field == "device" and mismatch.expected == "CPU B"
    assert str(mismatch) == "layer key device: got 'CPU A'; expected 'CPU B', what this profiler measures"
    assert all(issubclass(e, LatencyError) for e in (TableError, KeyFormatError, TierError, TargetMismatchError))
