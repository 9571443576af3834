"""``pareto.png``: top-1 against latency of every candidate of a search, its Pareto front, the hub models, the
baselines and the LACS family (matplotlib's object-oriented API on an Agg canvas, imported when a figure is drawn).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from ..fileio import write_atomic
from ..objectives import pareto_front
from ..spec import SearchSpec
from .state import FINISHED, Candidate
from .winners import family_members


def pareto_figure(candidates: list[Candidate], spec: SearchSpec, hub: dict[str, Any] | None = None) -> Any:
    """The figure of ``pareto.png`` (matplotlib's object-oriented API, Agg canvas; no pyplot state).

    Top-1 (%, validation) against latency (ms): every searched candidate with a result at its latency-table
    estimate (tiers shaded; ○ ringed: early-stopped); the Pareto front of all of them (:func:`gpunet.objectives.
    pareto_front`, a step line labelled ``"Pareto front"``); with ``hub``, the hub models (★, label ``"hub
    models"``, at their end-to-end measured latency when there is one, with a dotted line from their estimate) and
    the baselines (■, label ``"baselines"``, at their measured latency); the Scaling phase's scaled networks and its
    family as a line. Artists carry these labels, so a test can read the plotted data back."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    tol = spec.latency.tolerance
    mnas = spec.algorithm.objective == "mnas"
    searched = [c for c in candidates if not c.final and c.tier < len(spec.tier_targets) and c.state in FINISHED
                and c.top1 is not None and math.isfinite(c.latency_ms)]
    for t, target in enumerate(spec.tier_targets):
        color = colors[t % len(colors)]
        if not mnas:  # an mnas search has no tiers, only the reward's target
            ax.axvspan(target * (1 - tol), target * (1 + tol), color=color, alpha=0.12, lw=0)
        ax.axvline(target, color=color, ls="--", lw=0.8)
        done = [c for c in searched if c.tier == t]
        if done:
            ax.scatter([c.latency_ms for c in done], [100 * (c.top1 or 0) for c in done], color=color, s=22,
                       label=f"tier {target:g} ms ({len(done)})", edgecolors="none", marker="o")
            stopped = [c for c in done if c.state == "stopped"]
            if stopped:
                ax.scatter([c.latency_ms for c in stopped], [100 * (c.top1 or 0) for c in stopped], facecolors="none",
                           edgecolors="k", s=40, lw=0.6)
    if searched:
        front = [searched[i] for i in pareto_front([(c.latency_ms, c.top1 or 0.0) for c in searched])]
        ax.plot([c.latency_ms for c in front], [100 * (c.top1 or 0) for c in front], color="k", lw=1.2,
                drawstyle="steps-post", label="Pareto front", zorder=3)
    if hub is not None:
        models = [e for e in [*hub.get("tiers", []), *(hub.get("family") or [])] if e.get("candidate_id")
                  and e.get("top1") is not None and e.get("latency_ms_estimated") is not None]
        xs = [e["latency_ms_measured"] or e["latency_ms_estimated"] for e in models]
        if models:
            for e, x in zip(models, xs):
                if e["latency_ms_measured"]:
                    ax.plot([e["latency_ms_estimated"], x], [100 * e["top1"]] * 2, color="0.3", ls=":", lw=0.8)
            ax.scatter(xs, [100 * e["top1"] for e in models], marker="*", s=180, color="gold", edgecolors="k",
                       lw=0.7, zorder=4, label="hub models")
        bases = [b for b in hub.get("baselines") or [] if b.get("top1") is not None and b.get("latency_ms_measured")]
        if bases:
            ax.scatter([b["latency_ms_measured"] for b in bases], [100 * b["top1"] for b in bases], marker="s", s=42,
                       color="crimson", edgecolors="k", lw=0.6, zorder=4, label="baselines")
            for b in bases:
                ax.annotate(b["model"], (b["latency_ms_measured"], 100 * b["top1"]), fontsize=7,
                            xytext=(4, -9), textcoords="offset points")
    if spec.scaling.enabled:
        first = len(spec.tier_targets)
        scaled = [c for c in candidates if c.tier >= first and not c.final and c.state in FINISHED
                  and c.top1 is not None and math.isfinite(c.latency_ms)]
        if scaled:
            ax.scatter([c.latency_ms for c in scaled], [100 * (c.top1 or 0) for c in scaled], marker="D", s=18,
                       color="0.5", edgecolors="none", label=f"scaled (LACS, {len(scaled)})")
        family = [m for m in family_members(candidates, spec) if m is not None and math.isfinite(m.latency_ms)]
        if family:
            family.sort(key=lambda c: c.latency_ms)
            ax.plot([c.latency_ms for c in family], [100 * (c.top1 or 0) for c in family], "k-D", ms=6, lw=1.2,
                    label="LACS family")
        for target in spec.scaling.targets_ms:
            ax.axvline(target, color="0.4", ls=":", lw=0.8)
    ax.set_xlabel("latency (ms): candidates at the table estimate; hub models, baselines measured end to end")
    ax.set_ylabel("top-1 (%, validation)")
    what = f"mnas reward, target {spec.algorithm.target_ms:g} ms" if mnas else "candidates per latency tier"
    ax.set_title(f"{spec.name}: {what} (○ early-stopped)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def pareto_plot(candidates: list[Candidate], spec: SearchSpec, path: str | Path,
                hub: dict[str, Any] | None = None) -> Path:
    """Write :func:`pareto_figure` as a PNG at ``path`` (atomically)."""
    fig = pareto_figure(candidates, spec, hub)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(Path(path), lambda f: f.write(buffer.getvalue()))
