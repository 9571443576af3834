"""``gpunet results RUN_DIR``: the model hub of a search (``hub.json``): the best network of each latency tier."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import Output, add_output_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="the model hub of a search: the best network of each latency tier",
                       description="Print RUN_DIR/hub.json (written when a search ends) as a table, or as is with -o "
                                   "json|yaml. Load a tier's network in Python with gpunet.hub.load(RUN_DIR, tier=...).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory, or a hub.json path")
    add_output_option(p)
    p.set_defaults(func=results)


def results(args: argparse.Namespace) -> Output:
    from ..controller.outputs import read_hub

    return Output(read_hub(args.run_dir), hub_view)


def hub_view(hub: dict[str, Any]) -> list[Any]:
    """One row per latency tier (then per LACS family member, then per baseline): candidate, validation and test
    top-1, latencies, size and weights file."""
    from rich.table import Table

    def fmt(x: Any, spec: str, scale: float = 1.0) -> str:
        return "–" if x is None else format(scale * x, spec)

    target = hub.get("target") or {}
    where = " ".join(str(target[k]) for k in ("backend", "precision", "device") if target.get(k))
    table = Table(title=f"model hub of search {hub.get('search')!r} ({hub.get('phase', '?')})" + (f", {where}" if where else ""))
    for col in ("tier (ms)", "candidate", "top-1 %", "test top-1 %", "weights top-1 %", "est. ms", "meas. ms",
                "params M", "GFLOPs", "weights"):
        table.add_column(col, overflow="fold")
    family = [{**e, "label": f"LACS {e.get('target_ms', 0):g} (d{fmt(e.get('depth_mult'), 'g')} "
                             f"w{fmt(e.get('width_mult'), 'g')} r{e.get('resolution') or '–'})"}
              for e in hub.get("family") or []]
    baselines = [{**e, "label": f"baseline {e.get('model')}"} for e in hub.get("baselines") or []]
    for e in [*hub["tiers"], *family, *baselines]:
        table.add_row(e.get("label") or fmt(e.get("target_ms"), "g"), e.get("final_candidate_id") or e.get("candidate_id") or "–",
                      fmt(e.get("top1"), ".2f", 100), fmt(e.get("top1_test"), ".2f", 100),
                      fmt(e.get("weights_top1"), ".2f", 100), fmt(e.get("latency_ms_estimated"), ".4f"),
                      fmt(e.get("latency_ms_measured"), ".4f"), fmt(e.get("params_m"), ".3f"), fmt(e.get("gflops"), ".4f"),
                      e.get("weights") or "–")
    return [table, "vectors, architectures and files: -o json or -o yaml"]
