"""``gpunet sample``: Sobol-sample a space, estimate every network from the latency table, and group the
networks into latency tiers with counts and deterministic pools (GPUNet paper, 3.2)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ..space import load_space, preset_names
from . import UsageError, console, emit
from .latency_cmd import latency_errors_as_usage

#: Networks estimated per step of the progress bar.
CHUNK = 131072


def register(sub: argparse._SubParsersAction) -> None:
    from ..latency.cli_support import add_backend_options

    p = sub.add_parser("sample", help="Sobol-sample networks, estimate their latency, group them into latency tiers")
    p.add_argument("--preset", default="gpunet", choices=preset_names())
    p.add_argument("-n", type=int, required=True, help="number of Sobol samples")
    p.add_argument("--table", required=True, type=Path, help="the latency table")
    tiers = p.add_mutually_exclusive_group(required=True)
    tiers.add_argument("--tiers", help="comma-separated target latencies in ms, e.g. 0.5,1.0,2.0")
    tiers.add_argument("--edges", help="comma-separated increasing bin edges in ms, e.g. 0,0.5,1,2,inf")
    p.add_argument("--tolerance", default="0.1", help="tier width around each target: a fraction (0.1 = ±10%%) or ms (0.05ms)")
    p.add_argument("--seed", type=int, default=0, help="Sobol scrambling seed")
    p.add_argument("--pool-size", type=int, default=1000, help="networks kept per tier (first ones in Sobol order; 0 = all)")
    p.add_argument("--calibrated", action="store_true", help="use the calibrated estimate (see `gpunet latency validate`)")
    p.add_argument("--allow-missing", action="store_true", help="leave out networks with layers missing from the table")
    p.add_argument("--out", type=Path, default=None, help="where to write tiers and pools (default: tiers-<preset>.json)")
    add_backend_options(p, measuring=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=latency_errors_as_usage(sample))


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{option}: got {text!r}; expected comma-separated numbers (ms)") from None


def sample(args: argparse.Namespace) -> int:
    import numpy as np

    from ..latency.cli_support import progress_bar, resolve_target
    from ..latency.estimate import load_calibration
    from ..latency.table import LatencyTable
    from ..sampling import LatencyEstimator, stratify, tiers_from_edges, tiers_from_targets

    if args.n < 1:
        raise UsageError(f"-n: got {args.n}; expected an integer >= 1")
    if args.pool_size < 0:
        raise UsageError(f"--pool-size: got {args.pool_size}; expected an integer >= 0")
    tiers = (tiers_from_targets(_floats(args.tiers, "--tiers"), args.tolerance) if args.tiers
             else tiers_from_edges(_floats(args.edges, "--edges")))
    space = load_space(args.preset)
    table = LatencyTable(args.table, readonly=True)
    target = resolve_target(args, table)
    calibration = load_calibration(table, target) if args.calibrated else None
    if args.calibrated and calibration is None:
        raise UsageError(f"--calibrated: table {args.table} has no calibration for {target.text}; run `gpunet latency validate`")
    start = time.perf_counter()
    estimator = LatencyEstimator(space, table, target, calibration=calibration)
    vectors = space.sobol(args.n, args.seed)
    latency = np.empty(args.n)
    with progress_bar(f"estimating {args.n} networks", args.n, not args.json) as advance:
        for i in range(0, args.n, CHUNK):
            latency[i : i + CHUNK] = estimator.estimate(vectors[i : i + CHUNK], calibrated=args.calibrated,
                                                        allow_missing=args.allow_missing)
            advance(min(i + CHUNK, args.n))
    pools = stratify(vectors, latency, tiers, pool_size=args.pool_size or None, space=space)
    seconds = time.perf_counter() - start
    out = args.out or Path(f"tiers-{args.preset}.json")
    finite = latency[np.isfinite(latency)]
    summary = {
        "preset": args.preset, "n": args.n, "seed": args.seed, "target": target.to_dict(), "calibrated": args.calibrated,
        "estimated": int(len(finite)), "missing": int(args.n - len(finite)),
        "latency_ms": {"min": float(finite.min()), "median": float(np.median(finite)), "max": float(finite.max())}
        if len(finite) else None,
        "tiers": [{k: v for k, v in p.to_dict().items() if k not in ("pool", "latency_ms")} for p in pools],
        "seconds": round(seconds, 3), "out": str(out),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**summary, "space": space.name, "tiers": [p.to_dict() for p in pools]}) + "\n")
    if args.json:
        emit(summary, True)
        return 0
    from rich.table import Table

    view = Table(title=f"{args.n} Sobol samples of {args.preset}, {target.text}")
    for col in ("tier", "low ms", "high ms", "count", "pool"):
        view.add_column(col)
    for p in pools:
        high = "inf" if math.isinf(p.tier.high_ms) else f"{p.tier.high_ms:.4g}"
        view.add_row(p.tier.name, f"{p.tier.low_ms:.4g}", high, str(p.count), str(len(p.vectors)))
    out_console = console()
    out_console.print(view)
    if summary["latency_ms"]:
        lat = summary["latency_ms"]
        left_out = f"; {summary['missing']} left out (missing layers)" if summary["missing"] else ""
        out_console.print(f"estimated latency: min {lat['min']:.4g} ms, median {lat['median']:.4g} ms, max {lat['max']:.4g} ms{left_out}")
    out_console.print(f"tiers and pools written to {out} ({seconds:.2f} s)")
    return 0
