"""The GPU suite and the tools that carry it to the lent GPU machine, run here on the CPU.

The smoke test runs ``benchmarks/gpu/run.sh --smoke`` as the device would (carried wheels installed into a target
folder, the suite under a timeout) and checks the JSON file the issue's keys go into. The pieces (the wheel plan,
the candidate, the trainer's log format, the carried versions against the committed stubs) are tested one by one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu import install, prepare  # noqa: E402
from gpu.training import (  # noqa: E402
    EPOCH_LINE,
    SyntheticImages,
    nearest_in_space,
    parse_epochs,
    peak_memory_mib,
    pinned_space,
    reset_peak_memory,
)


def demo_wheel(folder: Path, name: str = "demo_pkg", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, so that pip can install it offline."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def write_manifest(folder: Path, wheels: list[dict]) -> None:
    (folder / "manifest.json").write_text(json.dumps({"python": "3.12", "commit": None, "wheels": wheels}))


@pytest.mark.slow
def test_smoke_run_through_run_sh_writes_every_key_with_sane_values(tmp_path: Path) -> None:
    wheels = tmp_path / "whl"
    wheel = demo_wheel(wheels)
    write_manifest(wheels, [{"name": "demo-pkg", "version": "1.0", "file": wheel.name, "requirement": "demo-pkg>=1.0"},
                            {"name": "grpcio", "version": "0", "file": "absent.whl", "requirement": "grpcio>=1.0"}])
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, WHEELS=str(wheels),
               SITE=str(tmp_path / "site"), RUN_DIR=str(tmp_path / "run"), GPUNET_SUITE_BUDGET="600",
               GPUNET_SUITE_TIMEOUT="800")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert not (out / "h200.json").exists(), "a CPU rehearsal must never write h200.json"
    assert {"smoke.json", "gpu_suite.log", "install.log", "latency.sqlite", "trainer.log", "profiler.log"} <= {
        p.name for p in out.iterdir()}
    r = json.loads((out / "smoke.json").read_text())

    meta = r["meta"]
    assert meta["mode"] == "smoke" and meta["command"] == "bash benchmarks/gpu/run.sh --smoke"
    assert meta["torch"] and meta["python"] and meta["date"].endswith("+00:00")
    assert meta["carried_wheels"]["installed"] == [{"name": "demo-pkg", "version": "1.0", "replaces": None}]
    assert "grpcio" in meta["carried_wheels"]["kept"]
    assert all(r[k]["status"] == "ok" for k in ("fidelity", "gpunets", "sampling", "training", "trainer")), {
        k: r[k].get("status") for k in r}

    f = r["fidelity"]
    assert isinstance(f["n"], int) and f["n"] == f["networks_sampled"] >= 4
    assert -1 <= f["spearman"] <= 1 and -1 <= f["kendall"] <= 1
    assert f["mre_raw"] >= 0 and f["mre_calibrated"] >= 0 and f["mean_ratio_table_to_e2e"] > 0
    assert f["layer_keys_measured"] == f["layer_keys"] > 0

    for key, paper in (("gpunet0", 0.62), ("gpunet1", 0.82), ("gpunet2", 1.76)):
        assert r["gpunets"][key]["latency_ms"] > 0 and r["gpunets"][key]["paper_gv100_tensorrt_ms"] == paper
    assert "not TensorRT" not in r["gpunets"]["note"], "the CPU run makes no claim about CUDA graphs"

    s = r["sampling"]
    assert s["networks"] == 20_000 and s["seconds"] > 0
    assert s["covered"] >= f["n"], "the fidelity networks are the Sobol prefix of the sample, all in the table"
    assert s["layer_keys_in_table"] == f["layer_keys"] and all(t["count"] >= 0 for t in s["tiers"])

    t = r["training"]
    assert t["throughput_ratio"] > 0 and t["candidate"]["params_m"] > 0
    for mode, scaler in (("bf16", False), ("fp16", True)):
        block = t[mode]
        assert block["images_per_s"] > 0 and block["images_per_s_timm"] > 0 and block["peak_mem_mib"] is None
        assert block["throughput_ratio"] == pytest.approx(block["images_per_s"] / block["images_per_s_timm"])
        assert ("GradScaler" in block["precision"]) == scaler and "channels_last" in block["precision"]

    e = r["trainer"]
    assert e["phase"] == "Succeeded" and [x["epoch"] for x in e["epochs"]] == [1, 2]
    assert e["epoch_s"] > 0 and 0 < e["checkpoint_share"] < 1 and e["checkpoint_mb"] > 0
    assert 0 < e["checkpoint_share_imagenet_epoch"] < e["checkpoint_share"]


def test_install_plans_only_what_the_interpreter_lacks_and_installs_it_offline(tmp_path: Path) -> None:
    from importlib import metadata

    have = metadata.version("grpcio")
    wheel = demo_wheel(tmp_path / "whl")
    write_manifest(tmp_path / "whl", [
        {"name": "demo-pkg", "version": "1.0", "file": wheel.name, "requirement": "demo-pkg>=1.0"},
        {"name": "grpcio", "version": have, "file": "g.whl", "requirement": f"grpcio>={have}"},
        {"name": "pyyaml", "version": "99.0", "file": "y.whl", "requirement": "pyyaml>=99"}])
    todo, kept = install.plan(json.loads((tmp_path / "whl" / "manifest.json").read_text()))
    assert [(w["name"], w["replaces"]) for w in todo] == [("demo-pkg", None), ("pyyaml", metadata.version("pyyaml"))]
    assert kept == {"grpcio": have}
    write_manifest(tmp_path / "whl", [{"name": "demo-pkg", "version": "1.0", "file": wheel.name,
                                       "requirement": "demo-pkg>=1.0"}])
    assert install.main(["--wheels", str(tmp_path / "whl"), "--target", str(tmp_path / "site")]) == 0
    assert (tmp_path / "site" / "demo_pkg" / "__init__.py").is_file()
    assert json.loads((tmp_path / "site" / "gpunet-carried.json").read_text())["installed"][0]["name"] == "demo-pkg"


def test_install_without_a_manifest_says_how_to_make_one(tmp_path: Path, capsys) -> None:
    assert install.main(["--wheels", str(tmp_path), "--target", str(tmp_path / "site")]) == 2
    assert "benchmarks/gpu/prepare.py" in capsys.readouterr().err


@pytest.mark.parametrize("version, requirement, ok", [
    ("1.85.1", "grpcio>=1.85.1", True), ("1.80.0", "grpcio>=1.85.1", False), ("2.11.0+cu130", "torch==2.14.1", False),
    ("7.36.2", "protobuf>=7.35.1", True), ("1.0.20", "timm>=1.0", True), ("0.9.16", "timm>=1.0", False),
])
def test_requirements_are_checked_as_pip_would(version: str, requirement: str, ok: bool) -> None:
    assert install.satisfies(version, requirement) is ok


def test_carried_pins_satisfy_the_committed_stubs_and_pyproject() -> None:
    """The wheels prepare.py carries must pass the version checks of gpunet/rpc's generated code."""
    import re

    pins, required = prepare.pins(ROOT / "constraints.txt"), prepare.requirements(ROOT / "pyproject.toml")
    assert set(prepare.CARRIED) <= set(pins) and set(prepare.CARRIED) <= set(required)
    grpc_stub = (ROOT / "gpunet/rpc/controller_pb2_grpc.py").read_text()
    generated = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_stub).group(1)
    assert install.satisfies(pins["grpcio"], f"grpcio>={generated}")
    gencode = re.search(r"Protobuf Python Version: ([\d.]+)", (ROOT / "gpunet/rpc/controller_pb2.py").read_text()).group(1)
    assert install.satisfies(pins["protobuf"], f"protobuf>={gencode}")
    assert pins["protobuf"].split(".")[0] == gencode.split(".")[0], "protobuf checks the major version exactly"
    for name in prepare.CARRIED:
        assert install.satisfies(pins[name], required[name])


def test_the_trainer_log_line_is_read_back_by_the_suite() -> None:
    from gpunet_worker.trainer import EPOCH_LOG

    line = "2026-01-01 trainer w INFO " + EPOCH_LOG % ("t0-c0000", 2, 0.5, 3456.7, 12.25, 0.125, "PROGRESS_ACTION_CONTINUE")
    assert parse_epochs(line) == [{"epoch": 2, "top1": 0.5, "images_per_s": 3457.0, "epoch_s": 12.25,
                                   "checkpoint_s": 0.125}]
    assert EPOCH_LINE.search("t0 epoch 1: top-1 0.1000, 10 images/s -> CONTINUE") is None


def test_the_gpunet_1_sized_candidate_is_the_nearest_network_of_table_1() -> None:
    from gpunet.archs import released_path
    from gpunet.nvidia import load_architecture
    from gpunet.space import load_space

    space = load_space("gpunet")
    gpunet1 = dataclasses.replace(load_architecture(released_path("gpunet-1")), resolution=224)
    vector = nearest_in_space(space, gpunet1)
    arch = space.decode(vector)  # valid in the space
    assert arch.resolution == 224 and arch.stages[5].filters == 224, "288 filters is above Table 1's 224"
    assert [s.layers for s in arch.stages] == [s.layers for s in gpunet1.stages]
    assert [s.kernel for s in arch.stages[1:]] == [s.kernel for s in gpunet1.stages[1:]]
    pinned = load_space(pinned_space("gpunet", space, vector))
    assert pinned.num_networks == 1 and pinned.decode([d.values[0] for d in pinned.digits]) == arch


def test_synthetic_images_are_imagenet_shaped_and_cheap_views() -> None:
    ds = SyntheticImages(10, 32, num_classes=1000, pool=4, seed=0)
    x, y = ds[9]
    assert len(ds) == 10 and tuple(x.shape) == (3, 32, 32) and 0 <= y < 1000
    assert x.data_ptr() == ds[1][0].data_ptr(), "sample i reuses pool image i % pool"


def test_peak_memory_is_read_from_cuda_and_absent_on_the_cpu() -> None:
    import torch

    from test_cuda_paths import FakeCuda

    cuda = FakeCuda(peak_bytes=3 * 2**20)
    reset_peak_memory(torch.device("cuda"), cuda)
    assert cuda.log == ["synchronize", "empty_cache", "reset_peak"]
    assert peak_memory_mib(torch.device("cuda"), cuda) == 3.0
    assert peak_memory_mib(torch.device("cpu")) is None
