"""benchmarks/nas_vs_random.py: the derived specs, reading a run's hub, the summary, and the printed JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import nas_vs_random as nvr  # noqa: E402
from gpunet.controller.outputs import HubError  # noqa: E402

DEMO = ROOT / "examples" / "fashion-mnist.yaml"


def test_derived_spec_is_the_demo_with_one_tier_the_algorithm_and_no_baselines() -> None:
    from gpunet.spec import load_spec

    base = yaml.safe_load(DEMO.read_text())
    doc = nvr.derive_spec(base, algorithm="random", seed=2, budget=5, tier_ms=0.8, name="x-random-s2",
                          train_subset=2000, val_subset=1000)
    spec = load_spec(doc)  # the project's own loader accepts it
    demo = load_spec(base)
    assert spec.latency.tiers == (0.8,) and spec.baselines == ()
    assert (spec.algorithm.name, spec.algorithm.seed, spec.algorithm.budget) == ("random", 2, 5)
    assert (spec.training.dataset.train_subset, spec.training.dataset.val_subset) == (2000, 1000)
    # Everything else is the demo's recipe, stage 2 included.
    assert spec.training.recipe == demo.training.recipe and spec.training.epochs == demo.training.epochs
    assert spec.training.final == demo.training.final and spec.training.early_stopping == demo.training.early_stopping
    assert spec.algorithm.initial_samples == demo.algorithm.initial_samples and spec.name == "x-random-s2"
    assert base["spec"]["latency"]["tiers"] == [0.6, 0.9]  # the base document is not changed
    with pytest.raises(ValueError, match="--budget: 0; expected an integer >= 1"):
        nvr.derive_spec(base, algorithm="random", seed=0, budget=0, tier_ms=0.8, name="x")


def _finished_run(out: Path, val: float, test: float, phase: str = "Succeeded") -> Path:
    out.mkdir(parents=True)
    (out / "hub.json").write_text(json.dumps({"phase": phase, "tiers": [
        {"target_ms": 0.8, "candidate_id": "t0-c0003", "top1_search": val, "top1": val + 0.01, "top1_test": test}]}))
    lines = [{"id": f"t0-c000{i}", "state": "completed"} for i in range(6)]
    lines += [{"id": "t0-c0006", "state": "completed", "final": {"source_id": "t0-c0003"}}]
    (out / "candidates.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return out


def test_read_result_takes_the_search_best_and_the_stage2_test_top1(tmp_path: Path) -> None:
    got = nvr.read_result(_finished_run(tmp_path / "a", 0.81, 0.79))
    assert got["best_val_top1"] == 0.81 and got["winner_test_top1"] == 0.79
    assert got["winner_val_top1_stage2"] == pytest.approx(0.82) and got["candidates"] == 6  # the stage-2 run left out
    with pytest.raises(HubError, match=r"hub.json: phase: got 'Failed'; expected 'Succeeded'"):
        nvr.read_result(_finished_run(tmp_path / "b", 0.8, 0.8, phase="Failed"))


def test_read_result_raises_hub_error_for_a_missing_or_corrupt_hub(tmp_path: Path) -> None:
    # The hub is read by gpunet.controller.outputs.read_hub: its errors, not the benchmark's own.
    with pytest.raises(HubError, match="hub.json: no such file"):
        nvr.read_result(tmp_path / "missing")
    corrupt = _finished_run(tmp_path / "corrupt", 0.8, 0.8)
    (corrupt / "hub.json").write_text('{"phase": "Succeeded", "tiers": [')
    with pytest.raises(HubError, match="hub.json: unreadable"):
        nvr.read_result(corrupt)
    not_a_hub = _finished_run(tmp_path / "list", 0.8, 0.8)
    (not_a_hub / "hub.json").write_text('[1, 2]')
    with pytest.raises(HubError, match="not a model hub"):
        nvr.read_result(not_a_hub)
    two_tiers = _finished_run(tmp_path / "two", 0.8, 0.8)
    hub = json.loads((two_tiers / "hub.json").read_text())
    (two_tiers / "hub.json").write_text(json.dumps({**hub, "tiers": hub["tiers"] * 2}))
    with pytest.raises(HubError, match="tiers: got '2 entries'; expected 1"):
        nvr.read_result(two_tiers)


def test_main_runs_a_search_whose_hub_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # A missing hub (HubError) means "not run yet": main runs it, then reads the hub the run wrote.
    ran: list[Path] = []

    def fake_run(doc: dict, out: Path, **kw: object) -> float:
        ran.append(out)
        _finished_run(out, 0.8, 0.78)
        return 1.5

    monkeypatch.setattr(nvr, "run_one", fake_run)
    assert nvr.main(["--out", str(tmp_path), "--algos", "random", "--seeds", "0", "--tier", "0.8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert ran == [tmp_path / "random-s0"] and out["runs"][0]["wall_s"] == 1.5
    assert out["runs"][0]["best_val_top1"] == 0.8


def test_summary_mean_and_sample_std_per_algorithm() -> None:
    runs = [{"algorithm": "lamcts-bo", "seed": s, "best_val_top1": v, "winner_test_top1": t}
            for s, v, t in ((0, 0.80, 0.78), (1, 0.82, 0.80), (2, 0.84, 0.79))]
    runs.append({"algorithm": "random", "seed": 0, "best_val_top1": 0.79, "winner_test_top1": 0.77})
    s = nvr.summarize(runs)
    assert s["lamcts-bo"]["best_val_top1"]["mean"] == pytest.approx(0.82)
    assert s["lamcts-bo"]["best_val_top1"]["std"] == pytest.approx(0.02)  # ddof 1
    assert s["lamcts-bo"]["winner_test_top1"]["per_seed"] == {"0": 0.78, "1": 0.80, "2": 0.79}
    assert s["random"]["winner_test_top1"] == {"mean": pytest.approx(0.77), "std": 0.0, "per_seed": {"0": 0.77}}


def test_main_reads_finished_runs_and_prints_every_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for algo, val in (("lamcts-bo", 0.83), ("random", 0.81)):
        for seed in (0, 1):
            _finished_run(tmp_path / f"{algo}-s{seed}", val + seed / 100, val - 0.02)
    assert nvr.main(["--out", str(tmp_path), "--seeds", "0", "1", "--tier", "0.8", "--train-subset", "2000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["algorithm"], r["seed"]) for r in out["runs"]] == [("lamcts-bo", 0), ("random", 0), ("lamcts-bo", 1),
                                                                  ("random", 1)]
    assert all(r["wall_s"] is None for r in out["runs"])  # read, not rerun
    assert out["summary"]["lamcts-bo"]["best_val_top1"]["mean"] == pytest.approx(0.835)
    assert out["summary"]["random"]["winner_test_top1"]["mean"] == pytest.approx(0.79)
    settings = out["settings"]
    assert settings["budget"] == 6 and settings["tier_ms"] == 0.8 and settings["train_subset"] == 2000
    assert settings["departures_from_base"] == {"latency.tiers": [0.8], "baselines": [], "training.dataset.trainSubset": 2000}
