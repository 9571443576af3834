"""NAS vs random search on real training (issue 11, item 8).

Runs the demo's search (``examples/fashion-mnist.yaml`` by default) restricted to one latency tier, once per
(algorithm, seed), through ``gpunet run`` itself: the same controller, trainers, early stopping and stage 2 as
``make demo``. Every run of the comparison has the same budget (``--budget`` candidates per tier) and differs
from its peers only in ``spec.algorithm.name`` and ``spec.algorithm.seed`` (the seed also picks the Sobol sample,
so both algorithms of one seed search the same tier pool when they share one latency table, see ``--latency-table``).

From each run's ``hub.json`` the script reads the tier's entry: ``top1_search`` is the best validation top-1 the
search found (the proxy top-1 by which the winner was selected), ``top1_test`` the winner's top-1 on the
Fashion-MNIST test split after stage 2 (``spec.training.final``). It prints one JSON object:
``{"runs": [{"algorithm", "seed", "best_val_top1", "winner_test_top1", "winner_val_top1_stage2", "candidates",
"wall_s", "out"}, ...], "summary": {algorithm: {"best_val_top1": {"mean", "std", "per_seed"}, "winner_test_top1":
{...}}}, "settings": {...}}`` (top-1 values are fractions). Runs whose ``hub.json`` says Succeeded are read, not
rerun, so the script resumes after an interruption.

    python benchmarks/nas_vs_random.py --out runs/nas-vs-random --seeds 0 1 2 --budget 6 --json

``--train-subset`` / ``--val-subset`` / ``--epochs`` shrink the recipe's training; the JSON's ``settings`` names every departure
from the base spec.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpunet.controller.outputs import HubError, hub_path, read_hub  # noqa: E402

DEFAULT_SPEC = ROOT / "examples" / "fashion-mnist.yaml"
DEFAULT_ALGOS = ("lamcts-bo", "random")


def derive_spec(base: dict[str, Any], *, algorithm: str, seed: int, budget: int, tier_ms: float,
                name: str, epochs: int | None = None, train_subset: int | None = None,
                val_subset: int | None = None, keep_baselines: bool = False) -> dict[str, Any]:
    """The NASSearch document of one run: ``base`` (a parsed search YAML) with one latency tier ``tier_ms``,
    ``algorithm``/``seed``/``budget``, ``metadata.name`` ``name``, no baselines unless ``keep_baselines`` (they
    do not depend on the algorithm), and optionally fewer ``epochs`` or a smaller ``train_subset``/``val_subset``.

    Raises:
        ValueError: ``base`` is not a NASSearch document (no ``spec`` mapping), or ``budget`` < 1.
    """
    if not isinstance(base, dict) or not isinstance(base.get("spec"), dict):
        raise ValueError(f"base spec: expected a NASSearch document with a 'spec' mapping, got {type(base).__name__}")
    if budget < 1:
        raise ValueError(f"--budget: {budget}; expected an integer >= 1")
    doc = copy.deepcopy(base)
    doc.setdefault("metadata", {})["name"] = name
    spec = doc["spec"]
    spec.setdefault("latency", {})["tiers"] = [tier_ms]
    spec.setdefault("algorithm", {}).update(name=algorithm, seed=seed, budget=budget)
    training = spec.setdefault("training", {})
    if epochs is not None:
        training["epochs"] = epochs
    if train_subset is not None:
        training.setdefault("dataset", {})["trainSubset"] = train_subset
    if val_subset is not None:
        training.setdefault("dataset", {})["valSubset"] = val_subset
    if not keep_baselines:
        spec["baselines"] = []
    return doc


def read_result(out: Path) -> dict[str, Any]:
    """The tier result of a finished run in ``out``: ``{"best_val_top1", "winner_test_top1",
    "winner_val_top1_stage2", "candidate_id", "candidates"}`` from ``hub.json`` (read by
    :func:`gpunet.controller.outputs.read_hub`) and ``candidates.jsonl``.

    Raises:
        HubError: no ``hub.json`` in ``out``, or it is unreadable, not a hub, not of a Succeeded one-tier search,
            or its tier has no winner (:class:`gpunet.controller.outputs.HubError`, a ``ValueError``).
        FileNotFoundError: the hub is there but ``candidates.jsonl`` is not.
    """
    hub = read_hub(out)
    where = str(hub_path(out))
    if hub.get("phase") != "Succeeded":
        raise HubError(f"{where}: phase", hub.get("phase"), "'Succeeded' (a finished search)")
    if len(hub["tiers"]) != 1:
        raise HubError(f"{where}: tiers", f"{len(hub['tiers'])} entries", "1 (a one-tier search)")
    tier = hub["tiers"][0]
    if tier.get("candidate_id") is None:
        raise HubError(f"{where}: tiers[0].candidate_id", None, "a winner's id")
    lines = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines() if x.strip()]
    searched = [c for c in lines if not c.get("final")]  # stage-2 runs and baselines carry "final"
    return {"best_val_top1": tier["top1_search"], "winner_test_top1": tier["top1_test"],
            "winner_val_top1_stage2": tier["top1"], "candidate_id": tier["candidate_id"],
            "candidates": len(searched), "states": sorted({c.get("state", "?") for c in searched})}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per algorithm, mean, sample standard deviation (ddof 1; 0 for one seed) and the per-seed values of
    ``best_val_top1`` and ``winner_test_top1`` over the runs (fractions)."""
    out: dict[str, Any] = {}
    for algo in dict.fromkeys(r["algorithm"] for r in runs):
        mine = sorted((r for r in runs if r["algorithm"] == algo), key=lambda r: r["seed"])
        out[algo] = {}
        for key in ("best_val_top1", "winner_test_top1"):
            values = np.array([r[key] for r in mine], dtype=float)
            out[algo][key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                              "per_seed": {str(r["seed"]): r[key] for r in mine}}
    return out


def copy_table(source: Path, dest: Path) -> None:
    """Copy the SQLite latency table ``source`` to ``dest`` with SQLite's online backup (a plain file copy would
    miss rows still in its write-ahead log)."""
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)


def run_one(doc: dict[str, Any], out: Path, *, workers: int, latency_table: Path | None, profiler_runs: int,
            timeout_s: float | None, lease_s: float = 30.0) -> float:
    """Write ``doc`` to ``out/search.yaml`` and run ``gpunet run`` on it (niced, one thread per trainer) until it
    ends; returns the wall time in seconds. A copy of ``latency_table`` seeds ``out/latency.sqlite`` on the first
    start, so the profiling phase measures nothing the table already has.

    Raises:
        RuntimeError: ``gpunet run`` exited with a non-zero status (its last output lines are in the message).
    """
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "search.yaml"
    spec_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if latency_table is not None and not (out / "latency.sqlite").exists():
        copy_table(latency_table, out / "latency.sqlite")
    cmd = [sys.executable, "-m", "gpunet", "run", str(spec_path), "--out", str(out), "--workers", str(workers),
           "--threads", "1", "--profiler-runs", str(profiler_runs), "--lease-seconds", str(lease_s), "--no-display"]
    if timeout_s:
        cmd += ["--timeout", str(timeout_s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(out / "run.log", "a") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (out / "run.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"gpunet run {spec_path} exited {proc.returncode}:\n" + "\n".join(tail))
    return wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="base search YAML (default: the demo's)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "nas-vs-random", help="one folder per run under it")
    p.add_argument("--algos", nargs="+", default=list(DEFAULT_ALGOS), help="default: lamcts-bo random")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=int, help="candidates per run (default: the base spec's algorithm.budget)")
    p.add_argument("--tier", type=float, help="the one latency tier in ms (default: the base spec's first)")
    p.add_argument("--epochs", type=int, help="override training.epochs (default: the base spec's)")
    p.add_argument("--train-subset", type=int, help="override training.dataset.trainSubset (default: the base spec's)")
    p.add_argument("--val-subset", type=int, help="override training.dataset.valSubset (default: the base spec's)")
    p.add_argument("--workers", type=int, default=2, help="trainer processes per run (default 2, as the demo)")
    p.add_argument("--latency-table", type=Path, help="latency.sqlite to seed every run with (default: the first "
                   "run measures its own, and the later runs copy it)")
    p.add_argument("--profiler-runs", type=int, default=20, help="timed runs per layer measurement (demo: 20)")
    p.add_argument("--lease-seconds", type=float, default=30.0,
                   help="the controller's lease duration (default 30, gpunet run's); raise it on a host where the "
                        "trainers may be paused (SIGSTOP) for minutes, so that a pause does not cost an attempt")
    p.add_argument("--timeout", type=float, help="seconds per gpunet run before it stops (resumable)")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    args = p.parse_args(argv)

    base = yaml.safe_load(args.spec.read_text())
    budget = args.budget if args.budget is not None else int(base["spec"].get("algorithm", {}).get("budget", 6))
    tier_ms = args.tier if args.tier is not None else float(base["spec"]["latency"]["tiers"][0])
    table = args.latency_table
    runs: list[dict[str, Any]] = []
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    for seed in args.seeds:
        for algo in args.algos:
            name = f"{base['metadata']['name']}-{algo}-s{seed}"
            out = args.out / f"{algo}-s{seed}"
            doc = derive_spec(base, algorithm=algo, seed=seed, budget=budget, tier_ms=tier_ms, name=name,
                              epochs=args.epochs, train_subset=args.train_subset,
                              val_subset=args.val_subset)
            wall = None
            try:
                result = read_result(out)
                say(f"{out}: finished before, read")
            except HubError:  # not run, or not finished: run (a rerun resumes it)
                wall = run_one(doc, out, workers=args.workers, latency_table=table,
                               profiler_runs=args.profiler_runs, timeout_s=args.timeout,
                               lease_s=args.lease_seconds)
                result = read_result(out)
            if table is None and (out / "latency.sqlite").exists():
                table = out / "latency.sqlite"
            runs.append({"algorithm": algo, "seed": seed, **result, "wall_s": wall, "out": str(out)})
            say(f"{algo} seed {seed}: best val top-1 {result['best_val_top1']:.4f}, winner test top-1 "
                f"{result['winner_test_top1']:.4f} ({result['candidates']} candidates)")
    training = base["spec"].get("training", {})
    settings = {"base_spec": str(args.spec), "tier_ms": tier_ms, "budget": budget, "seeds": args.seeds,
                "algorithms": args.algos, "epochs": args.epochs or training.get("epochs"),
                "train_subset": args.train_subset if args.train_subset is not None
                else training.get("dataset", {}).get("trainSubset"),
                "val_subset": args.val_subset if args.val_subset is not None
                else training.get("dataset", {}).get("valSubset"),
                "final_epochs": training.get("final", {}).get("epochs"), "workers": args.workers,
                "lease_seconds": args.lease_seconds,
                "shared_latency_table": str(table) if table else None,
                "departures_from_base": {k: v for k, v in {"latency.tiers": [tier_ms], "baselines": [],
                                                           "training.epochs": args.epochs,
                                                           "training.dataset.trainSubset": args.train_subset,
                                                           "training.dataset.valSubset": args.val_subset}.items()
                                         if v is not None}}
    print(json.dumps({"runs": runs, "summary": summarize(runs), "settings": settings}, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
