"""``gpunet latency build|estimate|validate``: fill the per-layer latency table, estimate a network from it,
and check the estimate against end-to-end measurements (GPUNet paper, 3.2)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..space import load_space, preset_names
from . import Output, UsageError, add_output_option


def register(sub: argparse._SubParsersAction) -> None:
    from .support import add_backend_options

    group = sub.add_parser("latency", help="per-layer latency table: build, estimate, validate").add_subparsers(
        dest="cmd", required=True)

    p = group.add_parser("build", help="measure the layers of a space's networks that the table lacks (resumable)")
    p.add_argument("--preset", required=True, choices=preset_names(), help="search space whose layers to measure")
    p.add_argument("--table", required=True, type=Path, help="the SQLite latency table (created if missing)")
    p.add_argument("--samples", type=int, default=None,
                   help="measure the layers of N Sobol-sampled networks (default: every layer of the space)")
    p.add_argument("--seed", type=int, default=0, help="Sobol scrambling seed")
    add_backend_options(p)
    add_output_option(p)
    p.set_defaults(func=build)

    p = group.add_parser("estimate", help="table estimate of one network: the sum of its layers' latencies")
    p.add_argument("arch", help="a vector (41 comma-separated integers; 48 for gpunet-x), or a JSON file (our format or NVIDIA's layer list)")
    p.add_argument("--table", required=True, type=Path)
    p.add_argument("--preset", default=None, choices=preset_names(), help="space of a vector (default: the table's build)")
    p.add_argument("--calibrated", action="store_true", help="apply the calibration fitted by `latency validate`")
    add_backend_options(p, measuring=False)
    add_output_option(p)
    p.set_defaults(func=estimate)

    p = group.add_parser("validate", help="measure N random networks end to end; rank correlation and error of the estimate")
    p.add_argument("--table", required=True, type=Path)
    p.add_argument("-n", type=int, default=50, help="number of random networks")
    p.add_argument("--preset", default=None, choices=preset_names(), help="space (default: the table's build)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random networks")
    p.add_argument("--calibration", choices=("linear", "per-type"), default="linear", help="calibration model to fit")
    p.add_argument("--no-fill", action="store_true", help="fail instead of measuring layers the table lacks")
    add_backend_options(p)
    add_output_option(p)
    p.set_defaults(func=validate)


def build(args: argparse.Namespace) -> Output:
    from ..latency.backends import get_backend
    from ..latency.profiling import build_table, required_keys
    from ..latency.table import LatencyTable
    from ..sampling import layer_grid
    from .support import BUILD_META, backend_options, progress_bar, stop_on_sigterm

    if args.samples is not None and args.samples < 1:
        raise UsageError("--samples", args.samples, "an integer >= 1")
    space = load_space(args.preset)
    table = LatencyTable(args.table)  # checks the file before anything is measured
    name, opts = backend_options(args)
    backend = get_backend(name, **opts)
    target = backend.target()
    if args.samples is None:
        keys = sorted(layer_grid(space, target).keys(), key=lambda k: k.text)
    else:
        keys = required_keys(target, vectors=space.sobol(args.samples, args.seed), space=space)
    table.set_meta(BUILD_META, {"preset": args.preset, "target": target.to_dict(), "backend_options": {"backend": name, **opts},
                                "samples": args.samples, "seed": args.seed})
    missing = len(table.missing(keys))
    with stop_on_sigterm() as should_stop, progress_bar(f"profiling {args.preset} layers", missing, args.output == "table") as advance:
        report = build_table(table, backend, keys, progress=lambda done, total: advance(done), should_stop=should_stop)
    backend.close()
    data = {"table": str(args.table), "preset": args.preset, "target": target.to_dict(), **report.to_dict(),
            "entries": len(table)}
    return Output(data, lambda d: (
        f"{report.measured} layer(s) measured, {report.already} already in the table, {report.required} needed "
        f"({report.layers_per_minute:.0f} layers/min); table {args.table}: {d['entries']} entries"
        + ("  [stopped early; rerun to continue]" if report.interrupted else "")), code=130 if report.interrupted else 0)


def _space_for(args: argparse.Namespace, table: Any) -> Any:
    from .support import recorded_build

    preset = args.preset or recorded_build(table).get("preset")
    if preset is None:
        raise UsageError("--preset", None, preset_names(), reason=f"the table {args.table} records no build preset")
    return load_space(preset)


def estimate(args: argparse.Namespace) -> Output:
    from ..latency.estimate import estimate_latency, load_calibration
    from ..latency.table import LatencyTable
    from .arch_cmd import parse_arch
    from .support import resolve_target

    table = LatencyTable(args.table, readonly=True)
    space = _space_for(args, table)
    arch, vector, _ = parse_arch(args.arch, space)
    target = resolve_target(args, table)
    calibration = load_calibration(table, target) if args.calibrated else None
    if args.calibrated and calibration is None:
        raise UsageError("--calibrated", True, "a table calibrated by `gpunet latency validate`",
                         reason=f"table {args.table} has no calibration for {target.text}")
    latency = estimate_latency(arch, table, target, calibration)
    data = {"latency_ms": latency, "layers": arch.num_layers}
    return Output(data, lambda d: f"{latency:.4f} ms ({'calibrated' if calibration else 'sum of'} {arch.num_layers} layers; {target.text})")


def validate(args: argparse.Namespace) -> Output:
    import numpy as np

    from ..latency.backends import get_backend
    from ..latency.errors import MissingLayersError
    from ..latency.estimate import compare, network_features, save_calibration
    from ..latency.profiling import build_table, required_keys
    from ..latency.table import LatencyTable
    from .support import backend_options, progress_bar, recorded_build

    if args.n < 3:
        raise UsageError("-n", args.n, "an integer >= 3 (rank correlation and a calibration fit)")
    table = LatencyTable(args.table)
    space = _space_for(args, table)
    name, opts = backend_options(args, recorded_build(table).get("backend_options"))
    backend = get_backend(name, **opts)
    target = backend.target()
    archs = [space.decode(v) for v in space.sample(args.n, args.seed)]
    keys = required_keys(target, archs=archs)
    missing = table.missing(keys)
    if missing and args.no_fill:
        raise MissingLayersError(missing, f"{args.n} random networks")
    if missing:
        with progress_bar("profiling missing layers", len(missing), args.output == "table") as advance:
            build_table(table, backend, missing, progress=lambda done, total: advance(done))
    start = time.perf_counter()
    chunk = 16  # networks measured together, their runs interleaved in --rounds rounds
    measured = []
    with progress_bar("measuring networks end to end", args.n, args.output == "table") as advance:
        for i in range(0, args.n, chunk):
            measured += [m.median_ms for m in backend.measure_networks(archs[i : i + chunk])]
            advance(len(measured))
    features = np.stack([network_features(a, table, target) for a in archs])
    report = compare(features, measured, args.calibration, target)
    save_calibration(table, report.calibration, target)
    backend.close()
    data = report.to_dict()
    data["seconds"] = round(time.perf_counter() - start, 2)
    return Output(data, lambda d: (
        f"n={report.n}  spearman={report.spearman:.3f}  kendall={report.kendall:.3f}  "
        f"MRE raw={report.mre_raw:.1%}  calibrated={report.mre_calibrated:.1%} (leave-one-out {report.mre_calibrated_cv:.1%})  "
        f"sum/measured={report.ratio_raw:.2f}; calibration ({args.calibration}) saved in {args.table}"))
