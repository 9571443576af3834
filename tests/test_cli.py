"""The `gpunet` command line: space describe, arch show, arch sample, and error exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpunet import load_space
from gpunet.cli import main
from gpunet.nvidia import from_nvidia

DATA = ARCHS_DIR  # NVIDIA's released layer lists (package data)


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, "--json prints exactly one JSON object"
    return json.loads(out[0])


def test_space_describe_json(capsys):
    info = run_json(capsys, "space", "describe", "--preset", "gpunet")
    assert info["vector_length"] == 41 and info["num_vectors"] == load_space("gpunet").num_vectors
    assert info["stages"][4]["filters"] == list(range(96, 193, 16))


def test_space_describe_text(capsys):
    assert main(["space", "describe", "--preset", "gpunet-tiny"]) == 0
    out = capsys.readouterr().out
    assert "gpunet-tiny" in out and "fused_irb" in out and "distinct networks" in out


def test_arch_show_vector_json(capsys):
    vector = load_space("gpunet-tiny").sample(1, seed=0)[0].tolist()
    info = run_json(capsys, "arch", "show", ",".join(map(str, vector)), "--preset", "gpunet-tiny")
    assert info["vector"] == vector and info["resolution"] == vector[0]
    assert info["params_m"] > 0 and info["gflops"] > 0


def test_arch_show_nvidia_json_encodes_gpunet_2(capsys):
    info = run_json(capsys, "arch", "show", str(DATA / "gpunet-2.json"))
    assert info["params_m"] == pytest.approx(25.8, rel=0.01)
    assert info["resolution"] == 384 and len(info["vector"]) == 41


def test_arch_show_reports_why_gpunet_0_has_no_vector(capsys):
    info = run_json(capsys, "arch", "show", str(DATA / "gpunet-0.json"))
    assert info["vector"] is None and "stage 4 filters" in info["not_in_space"]


def test_arch_show_writes_both_formats(tmp_path, capsys):
    ours, nvidia = tmp_path / "a.json", tmp_path / "b.json"
    run_json(capsys, "arch", "show", str(DATA / "gpunet-1.json"), "--write-json", str(ours), "--write-nvidia", str(nvidia))
    assert json.loads(nvidia.read_text()) == json.loads((DATA / "gpunet-1.json").read_text())
    assert json.loads(ours.read_text())["format"] == "gpunet-arch/v1"
    assert from_nvidia(json.loads(nvidia.read_text())).head_channels == 1280


def test_arch_sample_prints_valid_vectors(capsys):
    assert main(["arch", "sample", "--preset", "gpunet", "-n", "5", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    space = load_space("gpunet")
    assert len(lines) == 5
    for line in lines:
        space.validate([int(x) for x in line.split(",")])


def test_bad_vector_exits_2_with_the_field(capsys):
    vector = load_space("gpunet").sample(1, seed=0)[0].tolist()
    vector[19] = 9
    assert main(["arch", "show", ",".join(map(str, vector))]) == 2
    err = capsys.readouterr().err
    assert "digit 19 (stage 4 expansion): got 9" in err


def test_unparseable_arch_exits_2(capsys):
    assert main(["arch", "show", "1,two,3"]) == 2
    assert "41 comma-separated integers" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "gpunet", "space", "describe", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["name"] == "gpunet"


def test_import_gpunet_does_not_import_torch():
    code = "import sys, gpunet, gpunet.space, gpunet.arch, gpunet.nvidia, gpunet.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
