"""Results of a search, written from its state directory: candidates, the model hub, a Pareto plot, ONNX files.

- ``candidates.jsonl``: one JSON object per candidate (every line has an ``"id"``).
- ``hub.json``: ``{"search", "target", "tiers": [{"target_ms", "candidate_id", "vector", "top1" (fraction),
  "latency_ms_estimated", "latency_ms_measured", "params_m", "gflops", "onnx"}, ...]}``, one entry per latency
  tier in ``spec.latency.tiers`` order (``candidate_id`` null for a tier without a result).
- ``hub.md``: the same as a Markdown table.
- ``pareto.png``: top-1 against estimated latency for every candidate with a result, tiers shaded.
- ``onnx/tier-<t>-<candidate>.onnx``: the best network of each tier with its trained weights.

Needs torch (ONNX export, FLOPs), matplotlib and a latency backend for the measured latency; each of these parts
is skipped with a note when it fails, so the JSON outputs are always written.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..spec import SearchSpec
from ..fileio import write_json_atomic
from .state import FINISHED, Candidate, ControllerState

log = logging.getLogger(__name__)


def _num(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def candidate_record(c: Candidate, spec: SearchSpec) -> dict[str, Any]:
    """One line of ``candidates.jsonl``."""
    return {
        "id": c.id, "tier": c.tier, "target_ms": spec.latency.tiers[c.tier], "state": c.state, "vector": c.vector,
        "top1": _num(c.top1), "history": [round(h, 6) for h in c.history], "epochs": c.epoch,
        "latency_ms_estimated": _num(c.latency_ms), "attempts": c.attempts, "preemptions": c.preemptions,
        "lease_expiries": c.lease_expiries, "failures": c.failures, "restarts_from_scratch": c.restarts_from_scratch,
        "worker_id": c.worker_id, "checkpoint": c.checkpoint, "events": c.events,
    }


def best_per_tier(candidates: list[Candidate], num_tiers: int) -> list[Candidate | None]:
    """The candidate with the highest top-1 of each tier (ties: the lower id), or None."""
    out: list[Candidate | None] = []
    for t in range(num_tiers):
        done = [c for c in candidates if c.tier == t and c.state in FINISHED and c.top1 is not None]
        out.append(min(done, key=lambda c: (-(c.top1 or 0.0), c.id)) if done else None)
    return out


def _load_trained(c: Candidate) -> Any:
    """The trained network of a candidate from its final checkpoint (the better of raw and EMA weights)."""
    import torch

    from ..arch import Architecture
    from ..model import build_model

    state = torch.load(c.checkpoint, map_location="cpu", weights_only=False)
    arch = Architecture.from_dict(state["arch"])
    model = build_model(arch)
    use_ema = state.get("ema") is not None and state.get("ema_better", False)
    model.load_state_dict(state["ema"] if use_ema else state["model"])
    return model.eval(), arch


def write_outputs(spec: SearchSpec, state_dir: str | Path, out_dir: str | Path | None = None, *,
                  measure: bool = True, export: bool = True, threads: int = 1) -> dict[str, Any]:
    """Write the result files of the search in ``state_dir`` into ``out_dir`` (default: ``state_dir``).

    Returns the hub (``hub.json``'s content) with the written paths under ``"files"``.
    """
    state_dir = Path(state_dir)
    out = Path(out_dir or state_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = ControllerState.load(state_dir)
    candidates = sorted(state.candidates.values(), key=lambda c: c.id)
    files: dict[str, str] = {}

    with open(out / "candidates.jsonl.tmp", "w") as f:
        for c in candidates:
            f.write(json.dumps(candidate_record(c, spec)) + "\n")
    (out / "candidates.jsonl.tmp").replace(out / "candidates.jsonl")
    files["candidates"] = str(out / "candidates.jsonl")

    space = spec.space()
    backend = None
    if measure:
        try:
            from ..latency import get_backend

            options: dict[str, Any] = {"batch_size": spec.latency.batch_size}
            if spec.latency.device == "cpu":
                options["threads"] = threads
            if spec.latency.backend == "torch":
                options.update(device=spec.latency.device, precision=spec.latency.precision)
            backend = get_backend(spec.latency.backend, **options)
        except Exception as exc:  # noqa: BLE001 - the hub is written without measured latencies
            log.warning("no latency backend for measured latencies: %s", exc)

    tiers = []
    for t, best in enumerate(best_per_tier(candidates, len(spec.latency.tiers))):
        entry: dict[str, Any] = {"target_ms": spec.latency.tiers[t], "candidate_id": None, "vector": None, "top1": None,
                                 "latency_ms_estimated": None, "latency_ms_measured": None, "params_m": None,
                                 "gflops": None, "onnx": None}
        if best is not None:
            entry.update(candidate_id=best.id, vector=best.vector, top1=_num(best.top1), latency_ms_estimated=_num(best.latency_ms))
            arch = space.decode(best.vector)
            try:
                from ..model import model_stats

                stats = model_stats(arch)
                entry.update(params_m=round(stats.params_m, 4), gflops=round(stats.gflops, 6))
            except Exception as exc:  # noqa: BLE001
                log.warning("model stats of %s failed: %s", best.id, exc)
            if backend is not None:
                try:
                    entry["latency_ms_measured"] = _num(backend.measure_network(arch).median_ms)
                except Exception as exc:  # noqa: BLE001
                    log.warning("measuring %s failed: %s", best.id, exc)
            if export and best.checkpoint and Path(best.checkpoint).exists():
                try:
                    from ..model import export_onnx

                    model, trained_arch = _load_trained(best)
                    path = out / "onnx" / f"tier-{t}-{best.id}.onnx"
                    export_onnx(model, path, (1, trained_arch.in_chans, trained_arch.resolution, trained_arch.resolution))
                    entry["onnx"] = str(path.relative_to(out))
                except Exception as exc:  # noqa: BLE001
                    log.warning("ONNX export of %s failed: %s", best.id, exc)
        tiers.append(entry)
    if backend is not None:
        backend.close()
    hub = {"search": spec.name, "phase": state.phase, "target": state.target, "tiers": tiers}
    write_json_atomic(out / "hub.json", hub)
    files["hub_json"] = str(out / "hub.json")
    (out / "hub.md").write_text(hub_markdown(hub, spec))
    files["hub_md"] = str(out / "hub.md")
    try:
        files["pareto"] = str(pareto_plot(candidates, spec, out / "pareto.png"))
    except Exception as exc:  # noqa: BLE001
        log.warning("pareto plot failed: %s", exc)
    return {**hub, "files": files}


def hub_markdown(hub: dict[str, Any], spec: SearchSpec) -> str:
    """``hub.md``: one row per latency tier."""
    target = hub.get("target") or {}
    lines = [
        f"# Model hub of search `{hub['search']}`",
        "",
        f"Latency: {target.get('backend', spec.latency.backend)} {target.get('precision', spec.latency.precision)}, "
        f"batch {target.get('batch_size', spec.latency.batch_size)}, on {target.get('device', spec.latency.device)}; "
        f"tiers are target ± {spec.latency.tolerance:.0%}. Top-1 on the validation split "
        f"({spec.training.dataset.kind}).",
        "",
        "| tier (ms) | candidate | top-1 | latency est. (ms) | latency meas. (ms) | params (M) | GFLOPs | ONNX | vector |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(x: Any, spec_: str) -> str:
        return "–" if x is None else format(x, spec_)

    for e in hub["tiers"]:
        lines.append(
            f"| {e['target_ms']:g} | {e['candidate_id'] or '–'} | {fmt(e['top1'] and 100 * e['top1'], '.2f')}% "
            f"| {fmt(e['latency_ms_estimated'], '.4f')} | {fmt(e['latency_ms_measured'], '.4f')} | {fmt(e['params_m'], '.3f')} "
            f"| {fmt(e['gflops'], '.4f')} | {e['onnx'] or '–'} | `{e['vector'] if e['vector'] else '–'}` |"
        )
    return "\n".join(lines) + "\n"


def pareto_plot(candidates: list[Candidate], spec: SearchSpec, path: str | Path) -> Path:
    """Scatter of top-1 (%) against estimated latency (ms) of every candidate with a result; tiers shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    tol = spec.latency.tolerance
    for t, target in enumerate(spec.latency.tiers):
        color = colors[t % len(colors)]
        ax.axvspan(target * (1 - tol), target * (1 + tol), color=color, alpha=0.12, lw=0)
        ax.axvline(target, color=color, ls="--", lw=0.8)
        done = [c for c in candidates if c.tier == t and c.state in FINISHED and c.top1 is not None and math.isfinite(c.latency_ms)]
        if done:
            ax.scatter([c.latency_ms for c in done], [100 * (c.top1 or 0) for c in done], color=color, s=22,
                       label=f"tier {target:g} ms ({len(done)})", edgecolors="none",
                       marker="o")
            stopped = [c for c in done if c.state == "stopped"]
            if stopped:
                ax.scatter([c.latency_ms for c in stopped], [100 * (c.top1 or 0) for c in stopped], facecolors="none",
                           edgecolors="k", s=40, lw=0.6)
            best = max(done, key=lambda c: c.top1 or 0)
            ax.scatter([best.latency_ms], [100 * (best.top1 or 0)], marker="*", s=160, color=color, edgecolors="k", lw=0.6)
    ax.set_xlabel("estimated latency (ms, latency table)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{spec.name}: candidates per latency tier (★ best, ○ early-stopped)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
