"""The TensorRT backend without a GPU: its API surface against the pinned TensorRT, every TensorRT result checked
(with a stand-in ``tensorrt`` module), the device index, FP16 graphs for strong typing, and the precision passed
from the spec through ``gpunet run`` and the profiler to the backend."""

from __future__ import annotations

import ast
import re
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from controller_helpers import micro_doc
from gpunet.latency import LatencyError, get_backend
from gpunet.latency.backends import base
from gpunet.latency.backends import tensorrt_api as api
from gpunet.latency.backends.base import LatencyBackend
from gpunet.latency.backends.tensorrt import TensorRTBackend, cuda_index

ROOT = Path(__file__).resolve().parent.parent
BACKEND_SOURCES = [ROOT / "gpunet/latency/backends/tensorrt_api.py", ROOT / "gpunet/latency/backends/tensorrt.py"]
#: Variables of tensorrt_api.py that hold TensorRT objects, and their classes.
TRT_OBJECTS = {"builder": "Builder", "parser": "OnnxParser", "config": "IBuilderConfig", "runtime": "Runtime",
               "engine": "ICudaEngine", "context": "IExecutionContext"}


def pinned(name: str) -> str:
    constraints = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                       if "==" in line and not line.startswith("#"))
    return constraints[name]


# --- the API surface -------------------------------------------------------------------------------------


def test_the_tensorrt_extra_is_pinned_and_constrained_alike() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]
    assert extra == [f"tensorrt-cu13=={pinned('tensorrt-cu13')}"]
    assert pinned("tensorrt-cu13") == pinned("tensorrt-cu13-bindings") == pinned("tensorrt-cu13-libs") == "11.4.0.106"


def test_every_tensorrt_name_the_backend_uses_is_listed() -> None:
    """Each ``trt.<name>`` in the backend's sources, and each member used on a TensorRT object, is in
    TENSORRT_API (so the installed-package check below covers all of them), and no listed member is unused."""
    listed = set(api.TENSORRT_API)
    used: set[str] = set()
    for source in BACKEND_SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            if not isinstance(inner, ast.Name):
                continue
            if inner.id == "trt":
                used.add(".".join(chain))
            elif inner.id in TRT_OBJECTS and source.name == "tensorrt_api.py":
                used.add(f"{TRT_OBJECTS[inner.id]}.{chain[0]}")
    used = {name for name in used if not name.endswith("__init__")}
    prefixes = {".".join(name.split(".")[:i]) for name in listed for i in range(1, name.count(".") + 2)}
    assert used - prefixes == set(), "names the backend uses but TENSORRT_API does not list"
    code = re.sub(r"TENSORRT_API = \(.*?\n\)", "", "\n".join(s.read_text() for s in BACKEND_SOURCES), flags=re.S)
    unused = {name for name in listed if not re.search(rf"\b{re.escape(name.rsplit('.', 1)[-1])}\b", code)}
    assert unused == set(), "listed names the backend no longer uses"


def test_the_pinned_tensorrt_has_every_name_the_backend_uses() -> None:
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - ImportError, or the libraries' OSError without a CUDA driver
        pytest.skip(f"tensorrt does not import here ({type(exc).__name__}: {exc}); building engines needs a GPU machine "
                    f"with the pinned tensorrt-cu13=={pinned('tensorrt-cu13')}")
    assert trt.__version__ == pinned("tensorrt-cu13"), "the installed TensorRT is the pinned one"
    missing = []
    for name in api.TENSORRT_API:
        obj: Any = trt
        for part in name.split("."):
            if not hasattr(obj, part):
                missing.append(name)
                break
            obj = getattr(obj, part)
    assert missing == []
    assert not hasattr(trt.BuilderFlag, "FP16"), "TensorRT 11 is strongly typed only: the port relies on it"


# --- every TensorRT result is checked ----------------------------------------------------------------------


class FakeParser:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.num_errors = 0 if ok else 2

    def parse(self, data: bytes) -> bool:
        return self.ok

    def get_error(self, i: int) -> str:
        return f"node {i}: unsupported op"


class FakeBuilder:
    def __init__(self, network: Any = "network", engine: Any = b"plan", logger: Any = None) -> None:
        self.network, self.engine, self.logger, self.calls = network, engine, logger, {}

    def create_network(self, flags: int) -> Any:
        self.calls["flags"] = flags
        return self.network

    def create_builder_config(self) -> Any:
        calls = self.calls
        return SimpleNamespace(set_memory_pool_limit=lambda pool, size: calls.update(pool=pool, size=size))

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        if self.engine is None and self.logger is not None:
            self.logger.errors.append("Error Code 4: out of memory while building")
        return self.engine


def fake_trt(builder: FakeBuilder, parser: FakeParser) -> Any:
    return SimpleNamespace(Builder=lambda logger: builder, OnnxParser=lambda network, logger: parser,
                           NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
                           MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"), __version__="11.4.0.106")


def test_an_engine_is_built_strongly_typed_with_the_workspace_limit() -> None:
    builder = FakeBuilder()
    assert api.build_engine(fake_trt(builder, FakeParser()), b"onnx", 10240, SimpleNamespace(errors=[])) == b"plan"
    assert builder.calls == {"flags": 1 << 1, "pool": "workspace", "size": 10240 << 20}


def test_failed_tensorrt_steps_raise_errors_that_name_them() -> None:
    logger = SimpleNamespace(errors=[])
    with pytest.raises(LatencyError, match="model.onnx: TensorRT's ONNX parser refused it: node 0: unsupported op; node 1"):
        api.build_engine(fake_trt(FakeBuilder(), FakeParser(ok=False)), b"x", 1, logger, what="model.onnx")
    with pytest.raises(LatencyError, match=r"build_serialized_network returned None\); TensorRT said: Error Code 4"):
        api.build_engine(fake_trt(FakeBuilder(engine=None, logger=logger), FakeParser()), b"x", 1, logger)
    with pytest.raises(LatencyError, match="Builder.create_network: got None; TensorRT returned nothing"):
        api.build_engine(fake_trt(FakeBuilder(network=None), FakeParser()), b"x", 1, SimpleNamespace(errors=[]))


def test_a_failed_enqueue_or_an_empty_timing_is_an_error_not_a_latency() -> None:
    logger = SimpleNamespace(errors=["IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (illegal address)"])
    with pytest.raises(LatencyError, match=r"execute_async_v3: got False; TensorRT could not run the engine; TensorRT "
                                           r"said: IExecutionContext::enqueueV3"):
        api.run_once(SimpleNamespace(execute_async_v3=lambda stream: False), 0, logger)
    api.run_once(SimpleNamespace(execute_async_v3=lambda stream: True), 0, logger)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(LatencyError, match="GPU compute time"):
            api.check_elapsed(bad)
    assert api.check_elapsed(0.031) == 0.031


def test_tensorrt_before_10_is_refused() -> None:
    from gpunet.latency import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"TensorRT >= 10 \(found 8.6.1\)"):
        api.require_version(SimpleNamespace(__version__="8.6.1"))
    assert api.require_version(SimpleNamespace(__version__="11.4.0.106")) == 11


# --- device and precision -------------------------------------------------------------------------------------


def test_the_device_option_names_a_gpu_index() -> None:
    assert [cuda_index(d) for d in ("cuda", "cuda:0", "cuda:3", 2)] == [0, 0, 3, 2]
    for bad in ("cpu", "cuda:", "gpu", -1):
        with pytest.raises(LatencyError, match="device: got .*TensorRT runs on CUDA GPUs only"):
            cuda_index(bad)
    with pytest.raises(LatencyError, match="device: got 'cpu'"):
        get_backend("tensorrt", device="cpu")  # refused before anything is imported


def bare_backend(tmp_path: Path, precision: str) -> TensorRTBackend:
    """A backend object without the GPU checks of its constructor, for its pure methods."""
    import tempfile

    backend = object.__new__(TensorRTBackend)
    backend.precision, backend.device_index, backend.workspace_mib = precision, 2, 10240
    backend.runs, backend.warmup, backend.trtexec = 50, 5, "trtexec"
    backend._tmp = tempfile.TemporaryDirectory(dir=tmp_path)
    return backend


def test_trtexec_gets_the_device_and_fp16_only_before_tensorrt_11(tmp_path: Path) -> None:
    backend = bare_backend(tmp_path, "fp16")
    cmd = backend.trtexec_command(Path("m.onnx"), Path("t.json"), major=11)
    assert "--fp16" not in cmd and "--device=2" in cmd and "--memPoolSize=workspace:10240" in cmd
    assert "--fp16" in backend.trtexec_command(Path("m.onnx"), Path("t.json"), major=10)
    assert "--fp16" not in bare_backend(tmp_path, "fp32").trtexec_command(Path("m.onnx"), Path("t.json"), major=10)


@pytest.mark.parametrize("precision, elem_type", [("fp16", 10), ("fp32", 1)])  # onnx.TensorProto.FLOAT16 / FLOAT
def test_the_exported_graph_carries_the_precision_a_strongly_typed_engine_keeps(tmp_path: Path, precision: str,
                                                                                 elem_type: int) -> None:
    import onnx

    from gpunet.model import build_model
    from gpunet.space import load_space

    space = load_space("gpunet-tiny")
    arch = space.decode(space.sample(1, seed=3)[0])
    backend = bare_backend(tmp_path, precision)
    path = backend.export(build_model(arch), (1, arch.in_chans, arch.resolution, arch.resolution))
    graph = onnx.load(path).graph
    assert graph.input[0].type.tensor_type.elem_type == graph.output[0].type.tensor_type.elem_type == elem_type
    assert {init.data_type for init in graph.initializer if init.data_type in (1, 10)} == {elem_type}


class FakeTensorRT(LatencyBackend):
    """Stands in for TensorRT where it is absent: TensorRT's defaults (fp16, GPU 0), a fixed 0.01 ms per run."""

    made: list[dict[str, Any]] = []

    def __init__(self, *, device: int | str = 0, precision: str = "fp16", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.precision, self.device = precision, device
        FakeTensorRT.made.append({"device": device, "precision": precision})

    def device_name(self) -> str:
        return "Fake GPU"

    def version(self) -> str:
        return "TensorRT (fake)"

    def prepare(self, module: Any, input_shape: tuple[int, int, int, int]) -> Any:
        return lambda: 0.01


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> type[FakeTensorRT]:
    FakeTensorRT.made = []
    FakeTensorRT.name = "tensorrt"
    monkeypatch.setitem(base._REGISTRY, "tensorrt", FakeTensorRT)
    return FakeTensorRT


def fp32_tensorrt_spec(**kwargs: Any) -> Any:
    from gpunet.spec import load_spec

    doc = micro_doc(**kwargs)
    doc["spec"]["latency"].update(backend="tensorrt", device="cuda", precision="fp32")
    return load_spec(doc)


def test_a_tensorrt_fp32_search_reaches_its_tiers_through_gpunet_run_and_the_profiler(
        fake_tensorrt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec's precision reaches the backend (before, the profiler dropped it and TensorRT measured fp16, so every
    fp32 layer key failed its check and the search ended with no network in any tier)."""
    import gpunet.controller.local as local
    from gpunet.controller import ControllerServer
    from gpunet_worker.__main__ import parser, profiler_backend
    from gpunet.rpc.client import ControllerClient
    from gpunet_worker.profiler import ProfilerWorker

    spec = fp32_tensorrt_spec(tiers=(0.1,), tolerance=0.5)
    commands = []
    monkeypatch.setattr(local.subprocess, "Popen", lambda cmd, **kw: commands.append(cmd) or SimpleNamespace(poll=lambda: 0))
    run = local.LocalRun(spec, tmp_path / "run", workers=1, profilers=1)
    run._spawn("profiler", 0)
    run.controller.close()
    argv = commands[0][commands[0].index("profiler"):]
    backend = profiler_backend(parser().parse_args(argv))
    assert fake_tensorrt.made == [{"device": "cuda", "precision": "fp32"}] and backend.target().precision == "fp32"

    from gpunet.controller import SearchController

    ctl = SearchController(spec, tmp_path / "state", lease_s=10.0, round_interval_s=0)
    srv = ControllerServer(ctl, "trt-token", "127.0.0.1:0").start()
    try:
        worker = ProfilerWorker(ControllerClient(srv.address, "trt-token"), "p-trt", backend)
        assert worker.run() == 0
        deadline = time.time() + 30
        while ctl.state.phase not in ("Searching", "Failed") and time.time() < deadline:
            time.sleep(0.05)
        assert ctl.state.phase == "Searching", ctl.state.message
        assert ctl.state.target == {"backend": "tensorrt", "device": "Fake GPU", "precision": "fp32", "batch_size": 1}
        assert not ctl.state.unmeasurable and len(ctl.table.medians()) == 14
    finally:
        srv.stop()
