"""Proxy fidelity: does the search's short training rank networks as a k-times longer training does? (issue 11, item 5)

Draws ``--n`` networks (seeded, without replacement) from one latency tier's pool, the pool the search itself
searched: ``stratification.json`` of a ``gpunet run`` of the spec. Each network is trained with the spec's recipe
by :func:`gpunet.train.train_candidate` (the trainer workers' function) for ``k x E`` epochs, ``E`` being the
spec's ``training.epochs`` (the proxy budget), and scored like the search scores a candidate: the best validation
top-1 over its epochs (:attr:`gpunet.train.TrainOutcome.best_top1`). The proxy score is the best over the first
``E`` epochs of the same run. That equals a separate ``E``-epoch training: the timm step schedule's rate at an
epoch, the batch order (seeded by epoch) and the EMA do not depend on the total number of epochs, so the first
``E`` epochs of the long run are the proxy run (``tests/test_proxy_fidelity.py`` checks it), and the benchmark
costs ``k x E`` epochs per network instead of ``(k + 1) x E``. Early stopping is off: every network gets both budgets.
``train_candidate`` seeds Python's ``random`` (which timm's RandomErasing draws from) per epoch, so a network's
scores repeat exactly; the first figures in benchmarks/README.md were measured before it did, and each of their
scores is one draw of that augmentation noise (one network scored 69.7, 68.1 and 59.7 % at 3 epochs in three
trainings). The tier's pool is the only thing read from the stratification: the spec's ``latency`` is not used, so
a stratification of the spec with other ``latency.tiers`` (a loaded host whose table has none of the spec's) serves.

The two rankings are compared with Kendall's tau-b and Spearman's rho (``scipy.stats.kendalltau``,
``scipy.stats.spearmanr``, with their two-sided p-values). Printed JSON: ``{"kendall_tau", "kendall_p",
"spearman_rho", "spearman_p", "n", "n_requested", "k", "proxy_epochs", "long_epochs", "proxy_winner_long_rank",
"networks": [{"vector", "latency_ms_estimated", "proxy_top1", "long_top1", "history", "train_s", "pool_row"}, ...],
"settings": {...}}``; top-1 values are fractions; ``n`` is the networks measured (``--n``, fewer with
``--finished-only``); ``settings`` names every departure from the spec's recipe (``--train-subset``,
``--val-subset``, ``--epochs``) so that a shrunk run says so.

    python benchmarks/proxy_fidelity.py --stratification runs/nas-vs-random/lamcts-bo-s0/stratification.json \\
        --n 12 --k 4 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SPEC = ROOT / "examples" / "fashion-mnist.yaml"
#: The default k: the long budget is 4x the proxy's (12 epochs for the demo's 3). At the demo's sizes (5,000 / 3,000
#: images) an epoch cost about 18 CPU-s in the k = 3 run (about 2,000 CPU-s for 12 x 9 epochs), so 12 networks at
#: k = 4 take about 45 CPU minutes.
DEFAULT_K = 4


def rank_agreement(proxy: Sequence[float], long: Sequence[float]) -> dict[str, float]:
    """Kendall's tau-b and Spearman's rho of two scorings of the same networks (``n`` values each, n >= 2), with
    the two-sided p-values, and the 1-based rank under ``long`` of the proxy's best network (ties: the first).

    Raises:
        ValueError: the lengths differ or are below 2.
    """
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(proxy, dtype=float), np.asarray(long, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"scores: shapes {a.shape} and {b.shape}; expected two equal 1-d sequences of >= 2 values")
    tau = kendalltau(a, b)
    rho = spearmanr(a, b)
    winner = int(np.argmax(a))
    long_rank = 1 + int(np.sum(b > b[winner]))
    return {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue), "proxy_winner_long_rank": long_rank}


def tier_pool(path: Path, tier: int) -> tuple[np.ndarray, np.ndarray]:
    """The pool of tier ``tier`` in a ``stratification.json``: ``(vectors, latency_ms)``, a ``p x 41`` int64 array
    and a ``p`` array (ms, the latency table's estimate).

    Raises:
        ValueError: no such tier, or its pool is empty.
    """
    tiers = json.loads(path.read_text())["tiers"]
    if not 0 <= tier < len(tiers):
        raise ValueError(f"--tier: {tier}; expected 0..{len(tiers) - 1} ({path} has {len(tiers)} tiers)")
    pool = tiers[tier]
    if not pool["pool"]:
        raise ValueError(f"--tier: {tier}; {path}: tier {pool.get('target_ms')} ms has an empty pool")
    return np.asarray(pool["pool"], dtype=np.int64), np.asarray(pool["latency_ms"], dtype=float)


def choose(pool_size: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct row numbers of a pool of ``pool_size``, drawn by ``numpy.random.default_rng(seed)``, sorted.

    Raises:
        ValueError: ``n`` < 2 or above ``pool_size``.
    """
    if not 2 <= n <= pool_size:
        raise ValueError(f"--n: {n}; expected 2..{pool_size} (the tier's pool size)")
    return np.sort(np.random.default_rng(seed).choice(pool_size, size=n, replace=False))


def _finished(results: Path | None, epochs: int) -> dict[tuple[int, ...], dict[str, Any]]:
    """The rows of ``results`` (JSON lines) trained for ``epochs`` epochs, by vector (a later row wins)."""
    done: dict[tuple[int, ...], dict[str, Any]] = {}
    if results is not None and results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            if len(row["history"]) == epochs:
                done[tuple(row["vector"])] = row
    return done


def measure(spec: Any, vectors: np.ndarray, latency_ms: np.ndarray, k: int, workdir: Path,
            say: Any = lambda *a: None, results: Path | None = None, reverse: bool = False,
            start: int = 0) -> list[dict[str, Any]]:
    """Train each network of ``vectors`` (``n x 41``) for ``k x spec.training.epochs`` epochs with the spec's recipe
    (early stopping off, seed 0 as the workers) and score both budgets. Returns one dict per network, in the order
    of ``vectors``.

    ``results``: a JSON-lines file; each network's row is appended when it is done, and a network whose row (same
    vector and long budget) is there before its turn is read instead of trained, so an interrupted run resumes and
    two processes can share the work (one with ``reverse``: last network first; they overlap by at most the
    network both are training when they meet; a third can begin at network ``start``, 0-based, and wrap around)."""
    from gpunet.data import build_datasets
    from gpunet.train import train_candidate

    space = spec.space()
    proxy_epochs = spec.training.epochs
    long_epochs = k * proxy_epochs
    long_training = dataclasses.replace(spec.training, epochs=long_epochs)
    datasets: dict[tuple[int, int], Any] = {}
    rows: dict[int, dict[str, Any]] = {}
    order = [(start + j) % len(vectors) for j in range(len(vectors))]
    if reverse:
        order.reverse()
    for i in order:
        vector, lat = vectors[i], latency_ms[i]
        done = _finished(results, long_epochs).get(tuple(vector.tolist()))
        if done is not None:
            rows[i] = done
            say(f"network {i + 1}/{len(vectors)}: read from {results}")
            continue
        arch = space.decode(vector.tolist())
        key = (arch.resolution, arch.in_chans)
        if key not in datasets:
            datasets[key] = build_datasets(long_training.dataset, long_training.recipe, *key)
        outcome = train_candidate(arch, long_training, workdir / f"net{i}.pt", datasets=datasets[key])
        if outcome.status != "completed" or len(outcome.history) != long_epochs:
            raise RuntimeError(f"network {i}: training ended {outcome.status} after {outcome.epochs} epochs")
        row = {"vector": vector.tolist(), "latency_ms_estimated": float(lat),
               "proxy_top1": max(outcome.history[:proxy_epochs]), "long_top1": outcome.best_top1,
               "history": [round(h, 6) for h in outcome.history], "train_s": round(outcome.train_s, 1)}
        rows[i] = row
        if results is not None:
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
        say(f"network {i + 1}/{len(vectors)}: proxy {row['proxy_top1']:.4f}, long {row['long_top1']:.4f} "
            f"({row['train_s']:.0f} s)")
    return [rows[i] for i in range(len(vectors))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="search YAML whose recipe is measured (default: the demo's)")
    p.add_argument("--stratification", type=Path, required=True,
                   help="stratification.json of a `gpunet run` of the spec (its tier pools)")
    p.add_argument("--tier", type=int, default=0, help="tier index in the stratification (default 0)")
    p.add_argument("--n", type=int, default=12, help="networks drawn from the tier's pool (default 12)")
    p.add_argument("--k", type=int, default=DEFAULT_K, help=f"long budget = k x the proxy epochs (default {DEFAULT_K})")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw from the pool (default 0)")
    p.add_argument("--epochs", type=int, help="proxy epochs (default: the spec's training.epochs)")
    p.add_argument("--train-subset", type=int, help="override training.dataset.trainSubset (a smaller, honest run)")
    p.add_argument("--val-subset", type=int, help="override training.dataset.valSubset")
    p.add_argument("--workdir", type=Path, help="checkpoints go here (default: a temporary folder)")
    p.add_argument("--results", type=Path, help="JSON-lines file of finished networks: appended to, and read on a rerun "
                   "(resume)")
    p.add_argument("--reverse", action="store_true", help="train the last network first (a second process sharing "
                   "--results)")
    p.add_argument("--start", type=int, default=0, help="begin with this network (0-based) and wrap around (a third "
                   "process sharing --results)")
    p.add_argument("--finished-only", action="store_true", help="train nothing: the statistics of the drawn networks "
                   "already in --results (n says how many; n_requested is --n)")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    args = p.parse_args(argv)
    if args.finished_only and args.results is None:
        p.error("--finished-only: needs --results")
    if args.k < 2:
        p.error(f"--k: {args.k}; expected an integer >= 2")
    if not 0 <= args.start < args.n:
        p.error(f"--start: {args.start}; expected 0..{args.n - 1} (a network of --n)")

    import torch

    from gpunet.spec import load_spec

    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    dataset_over = {k: v for k, v in (("train_subset", args.train_subset), ("val_subset", args.val_subset)) if v is not None}
    training = dataclasses.replace(spec.training, dataset=dataclasses.replace(spec.training.dataset, **dataset_over),
                                   epochs=args.epochs or spec.training.epochs)
    spec = dataclasses.replace(spec, training=training)
    vectors, latency = tier_pool(args.stratification, args.tier)
    rows_chosen = choose(len(vectors), args.n, args.seed)
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    t0 = time.perf_counter()
    if args.finished_only:
        done = _finished(args.results, args.k * training.epochs)
        kept = [(i, done[tuple(vectors[i].tolist())]) for i in rows_chosen if tuple(vectors[i].tolist()) in done]
        if len(kept) < 2:
            p.error(f"--finished-only: {len(kept)} of the {args.n} drawn networks are in {args.results}; expected >= 2")
        rows_chosen, rows = np.array([i for i, _ in kept]), [r for _, r in kept]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = measure(spec, vectors[rows_chosen], latency[rows_chosen], args.k, args.workdir or Path(tmp), say,
                           args.results, args.reverse, args.start)
    wall = time.perf_counter() - t0
    stats = rank_agreement([r["proxy_top1"] for r in rows], [r["long_top1"] for r in rows])
    tiers = json.loads(args.stratification.read_text())["tiers"]
    result = {**stats, "n": len(rows), "n_requested": args.n, "k": args.k, "proxy_epochs": training.epochs, "long_epochs": args.k * training.epochs,
              "networks": [{**r, "pool_row": int(i)} for r, i in zip(rows, rows_chosen)], "wall_s": round(wall, 1),
              "settings": {"spec": str(args.spec), "stratification": str(args.stratification), "tier": args.tier,
                           "tier_target_ms": tiers[args.tier].get("target_ms"), "pool_size": len(vectors),
                           "seed": args.seed, "train_subset": training.dataset.train_subset,
                           "val_subset": training.dataset.val_subset, "val_split": training.dataset.val_split,
                           "batch_size": training.batch_size, "torch_threads": 1,
                           "departures_from_spec": {**{f"training.dataset.{k}": v for k, v in dataset_over.items()},
                                                    **({"training.epochs": args.epochs} if args.epochs else {}),
                                                    "training.earlyStopping": "off (both budgets in full)"}}}
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
