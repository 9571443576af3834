"""``gpunet space describe``: the ranges of a search space and its size."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ..space import load_space, preset_names
from . import Output, add_output_option


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("space", help="inspect search spaces").add_subparsers(dest="cmd", required=True)
    p = group.add_parser("describe", help="ranges of a search space and the number of architectures in it")
    p.add_argument("--preset", default="gpunet", choices=preset_names())
    add_output_option(p)
    p.set_defaults(func=describe)


def fmt_values(values: object) -> str:
    """Compact form of a range: ``96..192/16`` for an arithmetic progression, else ``3,5``."""
    if not isinstance(values, list):
        return str(values)
    if len(values) >= 3 and all(isinstance(v, int) for v in values):
        step = values[1] - values[0]
        if step > 0 and all(b - a == step for a, b in zip(values, values[1:])):
            return f"{values[0]}..{values[-1]}" + (f"/{step}" if step != 1 else "")
    return ",".join(str(v) for v in values)


def describe(args: argparse.Namespace) -> Output:
    return Output(load_space(args.preset).describe(), describe_view)


def describe_view(info: dict[str, Any]) -> list[Any]:
    """Stage table, resolution and size of ``space describe``."""
    table = Table(title=f"search space {info['name']}", caption=info["source"])
    for col in ("stage", "block", "stride", "filters", "kernel", "layers", "expansion", "SE", "act"):
        table.add_column(col)
    for row in info["stages"]:
        table.add_row(*(fmt_values(row.get(k, "-")) for k in ("stage", "block", "stride", "filters", "kernel", "layers", "expansion", "se", "act")))
    head = info["head"]
    table.add_row("8", "head", "1", str(head["channels"]), "1", "1", "-", "-", head["act"])
    return [
        table,
        f"resolution: {fmt_values(info['resolution'])}   input channels: {info['in_chans']}   classes: {info['num_classes']}",
        f"{info['num_vectors']:.3e} vectors of {info['vector_length']} integers, "
        f"{info['num_networks']:.3e} distinct networks (10^{info['log10_num_networks']})",
    ]
