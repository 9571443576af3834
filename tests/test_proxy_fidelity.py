"""benchmarks/proxy_fidelity.py: rank statistics on hand-made rankings, the prefix-equals-proxy claim, a smoke run."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import proxy_fidelity as pf  # noqa: E402
from controller_helpers import micro_doc  # noqa: E402

HAVE_FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()


def test_rank_agreement_on_hand_made_rankings() -> None:
    same = pf.rank_agreement([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8])
    assert same["kendall_tau"] == pytest.approx(1.0) and same["spearman_rho"] == pytest.approx(1.0)
    assert same["proxy_winner_long_rank"] == 1
    reverse = pf.rank_agreement([0.1, 0.2, 0.3, 0.4], [0.8, 0.7, 0.6, 0.5])
    assert reverse["kendall_tau"] == pytest.approx(-1.0) and reverse["spearman_rho"] == pytest.approx(-1.0)
    assert reverse["proxy_winner_long_rank"] == 4
    # One swapped pair of 4: 5 concordant, 1 discordant pair -> tau (5 - 1) / 6; rho 1 - 6 * 2 / (4 * 15) = 0.8.
    swap = pf.rank_agreement([0.1, 0.2, 0.3, 0.4], [0.1, 0.3, 0.2, 0.4])
    assert swap["kendall_tau"] == pytest.approx(4 / 6) and swap["spearman_rho"] == pytest.approx(0.8)
    assert 0.0 < swap["kendall_p"] <= 1.0 and 0.0 < swap["spearman_p"] <= 1.0
    # The proxy's winner (the last) is second under the long budget.
    assert pf.rank_agreement([0.1, 0.2, 0.3, 0.9], [0.1, 0.2, 0.9, 0.8])["proxy_winner_long_rank"] == 2
    with pytest.raises(ValueError, match="expected two equal 1-d sequences"):
        pf.rank_agreement([0.1, 0.2], [0.1, 0.2, 0.3])


def test_choose_draws_distinct_rows_and_rejects_a_draw_larger_than_the_pool() -> None:
    rows = pf.choose(50, 12, seed=3)
    assert len(set(rows.tolist())) == 12 and rows.min() >= 0 and rows.max() < 50
    assert rows.tolist() == pf.choose(50, 12, seed=3).tolist() != pf.choose(50, 12, seed=4).tolist()
    with pytest.raises(ValueError, match=r"--n: 60; expected 2\.\.50"):
        pf.choose(50, 60, seed=0)


def _stratification(tmp_path: Path, space: object, n: int = 6) -> Path:
    vectors = space.sobol(16, seed=0)[:n]  # type: ignore[attr-defined]
    path = tmp_path / "stratification.json"
    path.write_text(json.dumps({"tiers": [{"target_ms": 0.1, "pool": vectors.tolist(), "latency_ms": [0.1] * n},
                                          {"target_ms": 0.2, "pool": [], "latency_ms": []}]}))
    return path


def test_tier_pool_names_an_empty_or_missing_tier(tmp_path: Path) -> None:
    from gpunet.spec import load_spec

    path = _stratification(tmp_path, load_spec(micro_doc()).space())
    vectors, latency = pf.tier_pool(path, 0)
    assert vectors.shape == (6, 41) and latency.shape == (6,)
    with pytest.raises(ValueError, match="tier 0.2 ms has an empty pool"):
        pf.tier_pool(path, 1)
    with pytest.raises(ValueError, match=r"--tier: 5; expected 0\.\.1"):
        pf.tier_pool(path, 5)


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_the_first_epochs_of_a_long_training_are_the_proxy_training(tmp_path: Path) -> None:
    """The benchmark reads the proxy score off the long run's first E epochs; that is only right if a separate
    E-epoch training gives the same validation top-1 (schedule, batch order, augmentation and EMA independent of
    the total). Python's ``random`` is drawn from on purpose first: train_candidate must seed what timm's
    RandomErasing draws from itself."""
    import random

    import torch

    from gpunet.spec import load_spec
    from gpunet.train import train_candidate

    torch.set_num_threads(1)
    doc = micro_doc(train_subset=200, val_subset=100, epochs=1)
    doc["spec"]["training"]["recipe"].update(ema=0.99, reprob=0.2, dropRate=0.1, sched="step", decayEpochs=1, decayRate=0.5)
    spec = load_spec(doc)
    arch = spec.space().decode(spec.space().sobol(4, seed=0)[1].tolist())
    random.seed(1)
    short = train_candidate(arch, dataclasses.replace(spec.training, epochs=2), tmp_path / "short.pt")
    random.seed(2)
    long = train_candidate(arch, dataclasses.replace(spec.training, epochs=4), tmp_path / "long.pt")
    assert len(short.history) == 2 and len(long.history) == 4
    assert long.history[:2] == short.history and max(short.history) == short.best_top1
    # Bit for bit: the weights of two 2-epoch trainings, whatever Python's random held before each.
    random.seed(3)
    again = train_candidate(arch, dataclasses.replace(spec.training, epochs=2), tmp_path / "again.pt")
    from gpunet.train import load_checkpoint, recipe_architecture

    trained = recipe_architecture(arch, spec.training, 10)  # Fashion-MNIST's classes and channel
    first = load_checkpoint(short.checkpoint_path, trained)["model"]
    second = load_checkpoint(again.checkpoint_path, trained)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_smoke_run_prints_the_statistics_of_its_own_networks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from gpunet.spec import load_spec

    doc = micro_doc(train_subset=200, val_subset=100, epochs=1)
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    strat = _stratification(tmp_path, load_spec(doc).space(), n=5)
    argv = ["--spec", str(spec_path), "--stratification", str(strat), "--n", "3", "--k", "2", "--train-subset", "200",
            "--results", str(tmp_path / "nets.jsonl"), "--json"]
    assert pf.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len((tmp_path / "nets.jsonl").read_text().splitlines()) == 3
    assert (out["n"], out["k"], out["proxy_epochs"], out["long_epochs"]) == (3, 2, 1, 2)
    assert out["settings"]["departures_from_spec"]["training.dataset.train_subset"] == 200
    assert out["settings"]["train_subset"] == 200 and out["settings"]["pool_size"] == 5
    nets = out["networks"]
    assert len(nets) == 3 and len({n["pool_row"] for n in nets}) == 3
    for net in nets:
        assert len(net["history"]) == 2 and net["proxy_top1"] == pytest.approx(net["history"][0], abs=1e-6)
        assert net["long_top1"] == pytest.approx(max(net["history"]), abs=1e-6) and 0.0 <= net["long_top1"] <= 1.0
    again = pf.rank_agreement([n["proxy_top1"] for n in nets], [n["long_top1"] for n in nets])
    for key in ("kendall_tau", "spearman_rho", "proxy_winner_long_rank"):
        assert out[key] == pytest.approx(again[key]) or (np.isnan(out[key]) and np.isnan(again[key]))
    # A rerun with the same results file trains nothing and reports the same networks.
    assert pf.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.count("read from") == 3
    rerun = json.loads(captured.out)
    assert [n["long_top1"] for n in rerun["networks"]] == [n["long_top1"] for n in nets]
    # --finished-only trains nothing and gives the statistics of the networks there.
    (tmp_path / "two.jsonl").write_text("\n".join(json.dumps(n) for n in nets[:2]) + "\n")
    argv_two = [a if a != str(tmp_path / "nets.jsonl") else str(tmp_path / "two.jsonl") for a in argv]
    assert pf.main([*argv_two, "--finished-only"]) == 0
    partial = json.loads(capsys.readouterr().out)
    assert (partial["n"], partial["n_requested"]) == (2, 3)
    assert [n["pool_row"] for n in partial["networks"]] == [n["pool_row"] for n in nets[:2]]
