"""The hub against its baselines, as the GPUNet paper's Table 3 lays it out (section 4.2).

Table 3 lists, for each GPUNet, the baselines of about its accuracy with their top-1, TensorRT latency, parameters
and FLOPs, and the GPUNet's speedup (baseline latency / GPUNet latency) and accuracy gain (GPUNet top-1 - baseline
top-1, points) over each. Here:

- **speedup at equal accuracy**: against the baseline nearest in accuracy, ``latency(baseline) / latency(model)``;
- **accuracy gain at equal latency**: against the baseline nearest in latency (by ratio), ``top1(model) -
  top1(baseline)`` in points.

Accuracy is top-1 on the test split (``top1_test``) when the model and the baselines all have it, else the
validation top-1 (``top1``), and the result says which. Latency is the end-to-end measurement only
(``latency_ms_measured``, same backend, device, precision and batch size for all): a table estimate is not
comparable with a measured baseline. Pure functions over ``hub.json``'s entries; torch-free.
"""

from __future__ import annotations

import math
from typing import Any


def _accuracy_key(entry: dict[str, Any], baselines: list[dict[str, Any]]) -> str:
    both = [entry, *baselines]
    return "top1_test" if all(e.get("top1_test") is not None for e in both) else "top1"


def _comparable(baselines: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [b for b in baselines if b.get(key) is not None and (b.get("latency_ms_measured") or 0) > 0]


def compare_to_baselines(entry: dict[str, Any], baselines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A hub model (a ``hub.json`` tier entry) against the baselines: ``{"accuracy": "top1_test" | "top1",
    "equal_accuracy": {"baseline", "baseline_top1", "baseline_latency_ms", "speedup"}, "equal_latency":
    {"baseline", "baseline_top1", "baseline_latency_ms", "accuracy_gain"}}`` (gain in points), or None when the
    model or every baseline lacks a measured latency or an accuracy."""
    comparable = [b for b in baselines if (b.get("latency_ms_measured") or 0) > 0]
    key = _accuracy_key(entry, comparable)
    latency, top1 = entry.get("latency_ms_measured"), entry.get(key)
    pool = _comparable(comparable, key)
    if not pool or top1 is None or not latency or latency <= 0:
        return None
    by_accuracy = min(pool, key=lambda b: (abs(b[key] - top1), b["model"]))
    by_latency = min(pool, key=lambda b: (abs(math.log(b["latency_ms_measured"] / latency)), b["model"]))

    def side(b: dict[str, Any]) -> dict[str, Any]:
        return {"baseline": b["model"], "baseline_top1": b[key], "baseline_latency_ms": b["latency_ms_measured"]}

    return {"accuracy": key,
            "equal_accuracy": {**side(by_accuracy), "speedup": round(by_accuracy["latency_ms_measured"] / latency, 4)},
            "equal_latency": {**side(by_latency), "accuracy_gain": round(100 * (top1 - by_latency[key]), 4)}}


def _fmt(x: Any, spec: str, scale: float = 1.0) -> str:
    return "–" if x is None else format(x * scale, spec)


def table3_markdown(hub: dict[str, Any]) -> list[str]:
    """``hub.md``'s Table 3: per hub model, the baselines nearest to it in accuracy (each baseline in one group)
    with the model's speedup and accuracy gain over each, then the model; and one line per model with its speedup at
    equal accuracy and accuracy gain at equal latency. Empty without baselines."""
    baselines = hub.get("baselines") or []
    models = [(f"tier {e['target_ms']:g} ms: {e.get('final_candidate_id') or e['candidate_id']}", e)
              for e in hub["tiers"] if e.get("candidate_id")]
    if not baselines:
        return []
    key = _accuracy_key(models[0][1], baselines) if models else "top1_test"
    if any(_accuracy_key(e, baselines) != key for _, e in models):
        key = "top1"
    what = "test" if key == "top1_test" else "validation"
    lines = ["", f"## Against the baselines (GPUNet paper, Table 3 layout; top-1 on the {what} split, end-to-end "
             "latency)", "",
             f"| model | top-1 {what} (%) | latency meas. (ms) | params (M) | GFLOPs | speedup | accuracy gain (points) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(models))}
    orphans = []
    for b in baselines:
        scored = [(abs(b[key] - e[key]), i) for i, (_, e) in enumerate(models)
                  if b.get(key) is not None and e.get(key) is not None]
        (groups[min(scored)[1]] if scored else orphans).append(b)

    def row(name: str, e: dict[str, Any], speedup: str = "", gain: str = "") -> str:
        return (f"| {name} | {_fmt(e.get(key), '.2f', 100)} | {_fmt(e.get('latency_ms_measured'), '.4f')} "
                f"| {_fmt(e.get('params_m'), '.3f')} | {_fmt(e.get('gflops'), '.4f')} | {speedup} | {gain} |")

    for i, (name, e) in enumerate(models):
        for b in sorted(groups[i], key=lambda b: (b.get(key) or 0.0)):
            lat, blat = e.get("latency_ms_measured"), b.get("latency_ms_measured")
            speedup = f"{blat / lat:.2f}x" if lat and blat else "–"
            gain = f"{100 * (e[key] - b[key]):+.2f}" if e.get(key) is not None and b.get(key) is not None else "–"
            lines.append(row(f"{b['model']} ({b['resolution']}x{b['resolution']}, {b['in_chans']} ch)", b, speedup, gain))
        lines.append(row(f"**{name}**", e))
    for b in orphans:
        lines.append(row(f"{b['model']} (not trained: {b.get('error') or b.get('state')})", b, "–", "–"))
    lines.append("")
    for name, e in models:
        vs = e.get("vs_baselines")
        if not vs:
            lines.append(f"- {name}: no comparison (a measured latency and a top-1 are needed on both sides)")
            continue
        a, l_ = vs["equal_accuracy"], vs["equal_latency"]
        lines.append(f"- {name}: speedup at equal accuracy {a['speedup']:.2f}x over {a['baseline']} "
                     f"({100 * a['baseline_top1']:.2f}%, {a['baseline_latency_ms']:.4f} ms); accuracy gain at equal "
                     f"latency {l_['accuracy_gain']:+.2f} points over {l_['baseline']} ({l_['baseline_latency_ms']:.4f} ms)")
    return lines
