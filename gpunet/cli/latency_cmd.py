"""``gpunet latency build|estimate|validate``: fill the per-layer latency table, estimate a network from it,
and check the estimate against end-to-end measurements (GPUNet paper, 3.2)."""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any, Callable

from ..space import load_space, preset_names
from . import UsageError, emit


def latency_errors_as_usage(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn latency errors (bad table file, missing backend, missing layers) into one-line usage errors."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from ..latency.errors import LatencyError

        try:
            return func(args)
        except LatencyError as exc:
            raise UsageError(str(exc)) from None

    return wrapper


def register(sub: argparse._SubParsersAction) -> None:
    from ..latency.cli_support import add_backend_options

    group = sub.add_parser("latency", help="per-layer latency table: build, estimate, validate").add_subparsers(
        dest="cmd", required=True)

    p = group.add_parser("build", help="measure the layers of a space's networks that the table lacks (resumable)")
    p.add_argument("--preset", required=True, choices=preset_names(), help="search space whose layers to measure")
    p.add_argument("--table", required=True, type=Path, help="the SQLite latency table (created if missing)")
    p.add_argument("--samples", type=int, default=None,
                   help="measure the layers of N Sobol-sampled networks (default: every layer of the space)")
    p.add_argument("--seed", type=int, default=0, help="Sobol scrambling seed")
    add_backend_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=latency_errors_as_usage(build))

    p = group.add_parser("estimate", help="table estimate of one network: the sum of its layers' latencies")
    p.add_argument("arch", help="41 comma-separated integers, or a JSON file (our format or NVIDIA's layer list)")
    p.add_argument("--table", required=True, type=Path)
    p.add_argument("--preset", default=None, choices=preset_names(), help="space of a vector (default: the table's build)")
    p.add_argument("--calibrated", action="store_true", help="apply the calibration fitted by `latency validate`")
    add_backend_options(p, measuring=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=latency_errors_as_usage(estimate))

    p = group.add_parser("validate", help="measure N random networks end to end; rank correlation and error of the estimate")
    p.add_argument("--table", required=True, type=Path)
    p.add_argument("-n", type=int, default=50, help="number of random networks")
    p.add_argument("--preset", default=None, choices=preset_names(), help="space (default: the table's build)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random networks")
    p.add_argument("--calibration", choices=("linear", "per-type"), default="linear", help="calibration model to fit")
    p.add_argument("--no-fill", action="store_true", help="fail instead of measuring layers the table lacks")
    add_backend_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=latency_errors_as_usage(validate))


def build(args: argparse.Namespace) -> int:
    from ..latency.backends import get_backend
    from ..latency.cli_support import BUILD_META, backend_options, progress_bar, stop_on_sigterm
    from ..latency.profiling import build_table, required_keys
    from ..latency.table import LatencyTable
    from ..sampling import layer_grid

    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples: got {args.samples}; expected an integer >= 1")
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
    with stop_on_sigterm() as should_stop, progress_bar(f"profiling {args.preset} layers", missing, not args.json) as advance:
        report = build_table(table, backend, keys, progress=lambda done, total: advance(done), should_stop=should_stop)
    backend.close()
    data = {"table": str(args.table), "preset": args.preset, "target": target.to_dict(), **report.to_dict(),
            "entries": len(table)}
    emit(data, args.json, None if args.json else (
        f"{report.measured} layer(s) measured, {report.already} already in the table, {report.required} needed "
        f"({report.layers_per_minute:.0f} layers/min); table {args.table}: {data['entries']} entries"
        + ("  [stopped early; rerun to continue]" if report.interrupted else "")))
    return 0 if not report.interrupted else 130


def _space_for(args: argparse.Namespace, table: Any) -> Any:
    from ..latency.cli_support import recorded_build

    preset = args.preset or recorded_build(table).get("preset")
    if preset is None:
        raise UsageError(f"--preset: the table {args.table} records no build preset; expected one of {preset_names()}")
    return load_space(preset)


def estimate(args: argparse.Namespace) -> int:
    from ..latency.cli_support import resolve_target
    from ..latency.estimate import estimate_latency, load_calibration
    from ..latency.table import LatencyTable
    from .arch_cmd import parse_arch

    table = LatencyTable(args.table, readonly=True)
    space = _space_for(args, table)
    arch, vector, _ = parse_arch(args.arch, space)
    target = resolve_target(args, table)
    calibration = load_calibration(table, target) if args.calibrated else None
    if args.calibrated and calibration is None:
        raise UsageError(f"--calibrated: table {args.table} has no calibration for {target.text}; run `gpunet latency validate`")
    latency = estimate_latency(arch, table, target, calibration)
    data = {"latency_ms": latency, "layers": arch.num_layers}
    emit(data, args.json, f"{latency:.4f} ms ({'calibrated' if calibration else 'sum of'} {arch.num_layers} layers; {target.text})")
    return 0


def validate(args: argparse.Namespace) -> int:
    import numpy as np

    from ..latency.backends import get_backend
    from ..latency.cli_support import backend_options, progress_bar, recorded_build
    from ..latency.errors import MissingLayersError
    from ..latency.estimate import compare, network_features, save_calibration
    from ..latency.profiling import build_table, required_keys
    from ..latency.table import LatencyTable

    if args.n < 3:
        raise UsageError(f"-n: got {args.n}; expected an integer >= 3 (rank correlation and a calibration fit)")
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
        with progress_bar("profiling missing layers", len(missing), not args.json) as advance:
            build_table(table, backend, missing, progress=lambda done, total: advance(done))
    start = time.perf_counter()
    chunk = 16  # networks measured together, their runs interleaved in --rounds rounds
    measured = []
    with progress_bar("measuring networks end to end", args.n, not args.json) as advance:
        for i in range(0, args.n, chunk):
            measured += [m.median_ms for m in backend.measure_networks(archs[i : i + chunk])]
            advance(len(measured))
    features = np.stack([network_features(a, table, target) for a in archs])
    report = compare(features, measured, args.calibration, target)
    save_calibration(table, report.calibration, target)
    backend.close()
    data = report.to_dict()
    data["seconds"] = round(time.perf_counter() - start, 2)
    emit(data, args.json, None if args.json else (
        f"n={report.n}  spearman={report.spearman:.3f}  kendall={report.kendall:.3f}  "
        f"MRE raw={report.mre_raw:.1%}  calibrated={report.mre_calibrated:.1%} (leave-one-out {report.mre_calibrated_cv:.1%})  "
        f"sum/measured={report.ratio_raw:.2f}; calibration ({args.calibration}) saved in {args.table}"))
    return 0
