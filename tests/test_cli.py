"""The `gpunet` command line: every group, -o table|json|yaml, --version, spec validate, status, results, the
deprecated `sample`, and exit 2 with a one-line message naming the field on bad input."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller_helpers import fake_profile, micro_doc, micro_spec, trainer_request, write_spec
from gpunet import load_space
from gpunet.archs import ARCHS_DIR
from gpunet.cli import main
from gpunet.cli.support import BUILD_META
from gpunet.controller import SearchController
from gpunet.controller.outputs import write_outputs
from gpunet.latency import LatencyTable, LatencyTarget, Measurement
from gpunet.nvidia import from_nvidia
from gpunet.rpc import pb
from gpunet.sampling import LayerGrid

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


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"gpunet {importlib.metadata.version('gpunet-nas')}"


def test_output_json_yaml_and_the_json_alias_print_the_same_data(capsys):
    as_json = run_json(capsys, "space", "describe", "--preset", "gpunet-tiny")
    assert main(["space", "describe", "--preset", "gpunet-tiny", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == as_json
    assert main(["space", "describe", "--preset", "gpunet-tiny", "--output", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == as_json


def test_every_data_printing_command_takes_output_and_json():
    from gpunet.cli import build_parser

    def leaves(parser, path=()):
        sub = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not sub:
            yield path, parser
            return
        for name, child in sub[0].choices.items():
            yield from leaves(child, (*path, name))

    for path, parser in leaves(build_parser()):
        options = {o for a in parser._actions for o in a.option_strings}
        assert {"-o", "--output", "--json"} <= options, f"gpunet {' '.join(path)} lacks -o/--json"


def test_arch_sample_prints_valid_vectors(capsys):
    assert main(["arch", "sample", "--preset", "gpunet", "-n", "5", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    space = load_space("gpunet")
    assert len(lines) == 5
    for line in lines:
        space.validate([int(x) for x in line.split(",")])
    data = run_json(capsys, "arch", "sample", "--preset", "gpunet", "-n", "5", "--seed", "3")
    assert data["vectors"] == [[int(x) for x in line.split(",")] for line in lines]


def test_usage_errors_name_the_option_and_exit_2(capsys):
    assert main(["arch", "sample", "-n", "-1"]) == 2
    assert capsys.readouterr().err == "gpunet: error: -n: got -1; expected an integer >= 0\n"


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


def test_library_errors_print_one_line_without_adapters(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**micro_doc(), "kind": "Deployment"}))
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "gpunet: error: kind: got 'Deployment'; expected NASSearch\n"
    assert not (tmp_path / "out").exists(), "nothing starts on a bad spec"


# --- spec validate --------------------------------------------------------------------------------------------
def test_spec_validate_accepts_good_files(tmp_path, capsys):
    good = write_spec(tmp_path / "good.yaml")
    examples = sorted(str(p) for p in (Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert main(["spec", "validate", str(good), *examples]) == 0
    out = capsys.readouterr().out
    assert f"{good}: valid (search 'micro'" in out and len(out.splitlines()) == 1 + len(examples)


def test_spec_validate_names_the_field_of_each_bad_file_and_exits_2(tmp_path, capsys):
    good = write_spec(tmp_path / "good.yaml")
    tolerance = tmp_path / "tolerance.yaml"
    doc = micro_doc()
    doc["spec"]["latency"]["tolerance"] = 1.5
    tolerance.write_text(yaml.safe_dump(doc))
    kernel = tmp_path / "kernel.yaml"
    doc = micro_doc()
    doc["spec"]["searchSpace"]["stages"][6]["kernel"] = [4]
    kernel.write_text(yaml.safe_dump(doc))
    missing = tmp_path / "missing.yaml"
    assert main(["spec", "validate", str(good), str(tolerance), str(kernel), str(missing), "-o", "json"]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[0] == f"{tolerance}: spec.latency.tolerance: got 1.5; expected a number in (0, 1)"
    assert err[1].startswith(f"{kernel}: ") and "stages[6].kernel: got 4; expected" in err[1]
    assert err[2] == f"{missing}: cannot read the file (No such file or directory)"
    data = json.loads(captured.out)
    assert [f["valid"] for f in data["files"]] == [True, False, False, False] and data["valid"] is False


# --- tiers stratify and the deprecated `sample` ---------------------------------------------------------------
def test_tiers_stratify_and_its_deprecated_name_give_the_same_tiers(tmp_path, capsys):
    target = LatencyTarget("onnxruntime", "test-cpu", "fp32", 1)
    grid = LayerGrid(load_space("gpunet-tiny"), target)
    values = np.random.default_rng(0).uniform(0.01, 0.1, len(grid))
    with LatencyTable(tmp_path / "t.sqlite") as table:
        table.put_many((k, Measurement(float(v), 0.0, 1, "onnxruntime", "placeholder")) for k, v in zip(grid.keys(), values))
        table.set_meta(BUILD_META, {"preset": "gpunet-tiny", "target": target.to_dict()})
    options = ["--preset", "gpunet-tiny", "-n", "256", "--table", str(tmp_path / "t.sqlite"), "--tiers", "0.5,0.8",
               "--out", str(tmp_path / "tiers.json"), "-o", "json"]
    assert main(["tiers", "stratify", *options]) == 0
    new = capsys.readouterr()
    assert main(["sample", *options]) == 0
    old = capsys.readouterr()
    assert "`gpunet sample` is deprecated" in old.err and "gpunet tiers stratify" in old.err and not new.err
    assert json.loads(old.out)["tiers"] == json.loads(new.out)["tiers"]
    assert main(["tiers", "stratify", *options[:-2], "--tiers", "0.5,x"]) == 2
    assert capsys.readouterr().err == "gpunet: error: --tiers: got '0.5,x'; expected comma-separated numbers (ms)\n"


# --- status and results ------------------------------------------------------------------------------------------
def finish_one(ctl: SearchController, top1: float) -> str:
    task = ctl.request_work(trainer_request("w")).candidate
    assert ctl.report_result(pb.ResultReport(worker_id="w", candidate_id=task.candidate_id, lease_id=task.lease_id,
                                             top1=top1, epochs=2, checkpoint_path=task.checkpoint_path)).accepted
    return task.candidate_id


def status_json(capsys, *argv: str) -> dict:
    return run_json(capsys, "status", *argv)


def test_status_follows_a_live_search_and_after_it_ended(tmp_path, capsys):
    spec_file = write_spec(tmp_path / "search.yaml", tiers=(0.1, 5.0), budget=2)
    run_dir = tmp_path / "run"
    ctl = SearchController(micro_spec(tiers=(0.1, 5.0), budget=2), run_dir, round_interval_s=0)
    try:
        ctl.step()
        ctl.request_work(pb.WorkRequest(worker_id="p", kind=pb.WORKER_KIND_PROFILER, device="test-cpu"))
        ctl.step()
        s = status_json(capsys, str(run_dir), "--spec", str(spec_file))
        assert s["phase"] == "Profiling" and s["active"] and not s["ended"]
        assert s["latency_table"] == {"entries": 0, "layers_needed": 14, "layers_measured": 0, "unmeasurable": 0,
                                      "complete": False}
        assert [t["target_ms"] for t in s["tiers"]] == [0.1, 5.0]

        fake_profile(ctl)
        first = finish_one(ctl, 0.61)
        finish_one(ctl, 0.72)
        shutil.copy(spec_file, run_dir / "search.yaml")  # as `gpunet run` leaves it
        s = status_json(capsys, str(run_dir))  # the controller is live: its SQLite files are open for writing
        assert s["phase"] == "Searching" and s["latency_table"]["entries"] == 14 and s["latency_table"]["complete"]
        assert s["candidates"]["completed"] == 2 and s["candidates"]["total"] >= 2
        tier = s["tiers"][0]
        assert tier["pool_size"] == 16 and tier["evaluated"] == 2 and tier["best"]["top1"] == pytest.approx(0.72)
        assert tier["best"]["candidate_id"] != first and s["tiers"][1]["best"] is None
        assert main(["status", str(run_dir)]) == 0
        table = capsys.readouterr().out
        assert "Searching" in table and "14 layers, complete" in table and "top-1 72.00%" in table
        assert main(["status", str(run_dir), "-o", "yaml"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["tiers"][0]["best"]["candidate_id"] == tier["best"]["candidate_id"]
    finally:
        ctl.close()
    s = status_json(capsys, str(run_dir))
    assert s["candidates"]["completed"] == 2 and s["tiers"][0]["best"] == tier["best"]


def test_status_of_a_folder_without_a_search_exits_2(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"gpunet: error: RUN_DIR: got '{tmp_path}'; no search state here; expected")
    (tmp_path / "state.sqlite").write_bytes(b"not a database at all, just bytes" * 10)
    assert main(["status", str(tmp_path)]) == 2
    assert "state.sqlite: not a SQLite database" in capsys.readouterr().err  # the state store's own refusal


def test_results_prints_the_hub(tmp_path, capsys):
    spec = micro_spec(tiers=(0.1, 5.0))
    ctl = SearchController(spec, tmp_path, round_interval_s=0)
    fake_profile(ctl)
    best = finish_one(ctl, 0.8)
    ctl.close()
    write_outputs(spec, tmp_path, measure=False, export=False)
    hub = run_json(capsys, "results", str(tmp_path))
    assert hub == json.loads((tmp_path / "hub.json").read_text())
    assert hub["tiers"][0]["candidate_id"] == best and hub["tiers"][1]["candidate_id"] is None
    assert main(["results", str(tmp_path / "hub.json")]) == 0
    out = capsys.readouterr().out
    assert best in out and "80.00" in out and "model hub of search 'micro'" in out
    assert main(["results", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith(f"gpunet: error: {tmp_path / 'nowhere' / 'hub.json'}: no such file")
