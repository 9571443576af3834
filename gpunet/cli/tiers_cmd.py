"""``gpunet tiers stratify``: Sobol-sample a space, estimate every network from the latency table, and group the
networks into latency tiers with counts and deterministic pools (GPUNet paper, 3.2, "stratification").

``gpunet sample`` is the same command under its old name, deprecated: it warns on stderr and goes away in the
release after this one.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from ..space import load_space, preset_names
from . import Output, UsageError, add_output_option, warn

#: Networks estimated per step of the progress bar.
CHUNK = 131072


#: The deprecated name and its replacement.
DEPRECATED_NAME, NEW_NAME = "gpunet sample", "gpunet tiers stratify"


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("tiers", help="latency tiers: stratify").add_subparsers(dest="cmd", required=True)
    add_stratify_options(group.add_parser(
        "stratify", help="Sobol-sample networks, estimate their latency, group them into latency tiers"), stratify)
    add_stratify_options(sub.add_parser("sample", help=f"deprecated name of `{NEW_NAME}`"), deprecated_sample)


def add_stratify_options(p: argparse.ArgumentParser, func: Any) -> None:
    from .support import add_backend_options

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
    add_output_option(p)
    p.set_defaults(func=func)


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(option, text, "comma-separated numbers (ms)") from None


def deprecated_sample(args: argparse.Namespace) -> Output:
    warn(f"`{DEPRECATED_NAME}` is deprecated and will be removed in the next release; use `{NEW_NAME}` (same options)")
    return stratify(args)


def stratify(args: argparse.Namespace) -> Output:
    import numpy as np

    from ..latency.estimate import load_calibration
    from ..latency.table import LatencyTable
    from ..sampling import LatencyEstimator, tiers_from_edges, tiers_from_targets
    from ..sampling import stratify as stratify_pools
    from .support import progress_bar, resolve_target

    if args.n < 1:
        raise UsageError("-n", args.n, "an integer >= 1")
    if args.pool_size < 0:
        raise UsageError("--pool-size", args.pool_size, "an integer >= 0")
    tiers = (tiers_from_targets(_floats(args.tiers, "--tiers"), args.tolerance) if args.tiers
             else tiers_from_edges(_floats(args.edges, "--edges")))
    space = load_space(args.preset)
    table = LatencyTable(args.table, readonly=True)
    target = resolve_target(args, table)
    calibration = load_calibration(table, target) if args.calibrated else None
    if args.calibrated and calibration is None:
        raise UsageError("--calibrated", True, "a table calibrated by `gpunet latency validate`",
                         reason=f"table {args.table} has no calibration for {target.text}")
    start = time.perf_counter()
    estimator = LatencyEstimator(space, table, target, calibration=calibration)
    vectors = space.sobol(args.n, args.seed)
    latency = np.empty(args.n)
    with progress_bar(f"estimating {args.n} networks", args.n, args.output == "table") as advance:
        for i in range(0, args.n, CHUNK):
            latency[i : i + CHUNK] = estimator.estimate(vectors[i : i + CHUNK], calibrated=args.calibrated,
                                                        allow_missing=args.allow_missing)
            advance(min(i + CHUNK, args.n))
    pools = stratify_pools(vectors, latency, tiers, pool_size=args.pool_size or None, space=space)
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
    return Output(summary, lambda d: stratify_view(d, pools, target))


def stratify_view(summary: dict[str, Any], pools: list[Any], target: Any) -> list[Any]:
    """Tier table, latency range and output file of ``tiers stratify``."""
    from rich.table import Table

    view = Table(title=f"{summary['n']} Sobol samples of {summary['preset']}, {target.text}")
    for col in ("tier", "low ms", "high ms", "count", "pool"):
        view.add_column(col)
    for p in pools:
        high = "inf" if math.isinf(p.tier.high_ms) else f"{p.tier.high_ms:.4g}"
        view.add_row(p.tier.name, f"{p.tier.low_ms:.4g}", high, str(p.count), str(len(p.vectors)))
    lines: list[Any] = [view]
    if summary["latency_ms"]:
        lat = summary["latency_ms"]
        left_out = f"; {summary['missing']} left out (missing layers)" if summary["missing"] else ""
        lines.append(f"estimated latency: min {lat['min']:.4g} ms, median {lat['median']:.4g} ms, max {lat['max']:.4g} ms{left_out}")
    lines.append(f"tiers and pools written to {summary['out']} ({summary['seconds']:.2f} s)")
    return lines
