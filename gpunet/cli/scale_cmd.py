"""``gpunet scale ARCH --table T --targets 0.5,1,2``: the latency-only part of latency-aware compound scaling (LACS,
EfficientNet-X): which depth/width/resolution-scaled versions of a network meet which latency targets, according
to the latency table (:mod:`gpunet.scaling`). Nothing is trained; ``spec.scaling`` in a search trains them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..space import preset_names
from ..spec import ScalingSpec
from . import Output, UsageError, add_output_option


def _floats(option: str) -> Any:
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option}: got {text!r}; expected comma-separated numbers") from None
        if not values or any(not v > 0 for v in values):
            raise argparse.ArgumentTypeError(f"{option}: got {text!r}; expected comma-separated numbers > 0")
        return values
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    from .support import add_backend_options

    defaults = ScalingSpec()
    p = sub.add_parser("scale", help="LACS, latency only: the scaled networks that meet each latency target")
    p.add_argument("arch", help="the base network: comma-separated integers of --preset, or a JSON file (our format "
                                "or NVIDIA's layer list)")
    p.add_argument("--table", required=True, type=Path, help="the SQLite latency table")
    p.add_argument("--targets", required=True, type=_floats("--targets"), help="latency targets in ms, e.g. 0.5,1,2")
    p.add_argument("--preset", default=None, choices=preset_names(),
                   help="space of a vector and of the rounding steps (default: the table's build)")
    p.add_argument("--depth", type=_floats("--depth"), default=defaults.depth_multipliers, help="depth multipliers")
    p.add_argument("--width", type=_floats("--width"), default=defaults.width_multipliers, help="width multipliers")
    p.add_argument("--resolution", type=_floats("--resolution"), default=defaults.resolution_multipliers,
                   help="resolution multipliers")
    p.add_argument("--per-target", type=int, default=defaults.candidates_per_target,
                   help="scaled networks listed per target (closest under it first)")
    p.add_argument("--no-fill", action="store_true", help="fail instead of measuring layers the table lacks")
    add_backend_options(p)
    add_output_option(p)
    p.set_defaults(func=scale)


def scale(args: argparse.Namespace) -> Output:
    from ..latency.errors import MissingLayersError
    from ..latency.estimate import estimate_latency
    from ..latency.profiling import build_table, required_keys
    from ..latency.table import LatencyTable
    from ..scaling import family_grid, plan_family
    from .arch_cmd import parse_arch
    from .latency_cmd import _space_for
    from .support import backend_options, progress_bar, recorded_build, resolve_target

    if args.per_target < 1:
        raise UsageError("--per-target", args.per_target, "an integer >= 1")
    table = LatencyTable(args.table, readonly=args.no_fill)
    space = _space_for(args, table)
    base, _, _ = parse_arch(args.arch, space)
    grid = ScalingSpec(targets_ms=args.targets, depth_multipliers=args.depth, width_multipliers=args.width,
                       resolution_multipliers=args.resolution, candidates_per_target=args.per_target)
    networks = family_grid(base, space, grid)
    target = resolve_target(args, table)
    missing = table.missing(required_keys(target, archs=[a for *_, a in networks]))
    if missing and args.no_fill:
        raise MissingLayersError(missing, f"{len(networks)} scaled networks")
    if missing:
        from ..latency.backends import get_backend

        name, opts = backend_options(args, recorded_build(table).get("backend_options"))
        backend = get_backend(name, **opts)
        with progress_bar("profiling the scaled networks' layers", len(missing), args.output == "table") as advance:
            build_table(table, backend, missing, progress=lambda done, total: advance(done))
        backend.close()
    family = plan_family(networks, lambda a: estimate_latency(a, table, target), args.targets, args.per_target)
    base_ms = estimate_latency(base, table, target)
    data = {"base_latency_ms": base_ms, "target": target.to_dict(), "networks": len(networks),
            "layers_measured": len(missing), "family": [f.to_dict() for f in family]}
    return Output(data, lambda d: _view(d, base_ms))


def _view(data: dict[str, Any], base_ms: float) -> Any:
    from rich.table import Table

    view = Table(title=f"LACS over {data['networks']} scaled networks (base {base_ms:.4f} ms, table estimates)")
    for col in ("target (ms)", "depth x", "width x", "resolution x", "resolution", "layers", "latency (ms)"):
        view.add_column(col, justify="right")
    for member in data["family"]:
        if not member["choices"]:
            view.add_row(f"{member['target_ms']:g}", "–", "–", "–", "–", "–", "not met")
        for c in member["choices"]:
            view.add_row(f"{member['target_ms']:g}", f"{c['depth_mult']:g}", f"{c['width_mult']:g}",
                         f"{c['resolution_mult']:g}", str(c["resolution"]), str(c["layers"]),
                         f"{c['latency_ms_estimated']:.4f}")
    return view
