"""``hub.md``: a hub (``hub.json``'s content, :mod:`.outputs`) as Markdown tables: one row per latency tier, the
Pareto front of an ``mnas`` search, the LACS family, the baselines in the GPUNet paper's Table 3 layout
(:func:`.comparison.table3_markdown`) and where each end-to-end latency was measured.
"""

from __future__ import annotations

from typing import Any

from ..spec import SearchSpec
from .comparison import table3_markdown


def hub_markdown(hub: dict[str, Any], spec: SearchSpec) -> str:
    """``hub.md``: one row per latency tier."""
    target = hub.get("target") or {}
    lines = [
        f"# Model hub of search `{hub['search']}`",
        "",
        f"Latency: {target.get('backend', spec.latency.backend)} {target.get('precision', spec.latency.precision)}, "
        f"batch {target.get('batch_size', spec.latency.batch_size)}, on {target.get('device', spec.latency.device)}; "
        + (f"objective mnas: the reward top1 x (latency / {spec.algorithm.target_ms:g} ms)^{spec.algorithm.w:g}. "
           if spec.algorithm.objective == "mnas" else f"tiers are target ± {spec.latency.tolerance:.0%}. ")
        + f"Top-1 on the validation split (selection; the search's proxy training in \"search\", stage 2 in "
        f"\"top-1\") and on the test split ({spec.training.dataset.kind}).",
        "",
        "| tier (ms) | candidate | top-1 | top-1 search | top-1 test | stage-2 epochs | latency est. (ms) "
        "| latency meas. (ms) | params (M) | GFLOPs | weights | ONNX | vector |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(x: Any, spec_: str) -> str:
        return "–" if x is None else format(x, spec_)

    for e in hub["tiers"]:
        run = f" → {e['final_candidate_id']}" if e.get("final_candidate_id") else ""
        lines.append(
            f"| {e['target_ms']:g} | {e['candidate_id'] or '–'}{run} | {fmt(e['top1'] and 100 * e['top1'], '.2f')}% "
            f"| {fmt(e.get('top1_search') and 100 * e['top1_search'], '.2f')}% "
            f"| {fmt(e.get('top1_test') and 100 * e['top1_test'], '.2f')}% | {fmt(e.get('final_epochs'), 'd')} "
            f"| {fmt(e['latency_ms_estimated'], '.4f')} | {fmt(e['latency_ms_measured'], '.4f')} | {fmt(e['params_m'], '.3f')} "
            f"| {fmt(e['gflops'], '.4f')} | {e['weights'] or '–'} | {e['onnx'] or '–'} | `{e['vector'] if e['vector'] else '–'}` |"
        )
    if hub.get("pareto"):
        lines += ["", "Pareto front of the search (top-1 against estimated latency), by latency:", "",
                  "| candidate | top-1 | reward | latency est. (ms) |", "| --- | --- | --- | --- |"]
        lines += [f"| {p['candidate_id']} | {fmt(p['top1'] and 100 * p['top1'], '.2f')}% | {fmt(p['reward'], '.4f')} "
                  f"| {fmt(p['latency_ms_estimated'], '.4f')} |" for p in hub["pareto"]]
    if hub.get("family") is not None:
        lines += ["", "Latency-aware compound scaling (LACS): one family member per target, selected by the MnasNet reward.",
                  "", "| target (ms) | candidate | depth x | width x | resolution | top-1 | reward | latency est. (ms) "
                  "| latency meas. (ms) | params (M) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for e in hub["family"]:
            lines.append(f"| {e['target_ms']:g} | {e['candidate_id'] or '–'} | {fmt(e['depth_mult'], 'g')} "
                         f"| {fmt(e['width_mult'], 'g')} | {fmt(e['resolution'], 'd')} | {fmt(e['top1'] and 100 * e['top1'], '.2f')}% "
                         f"| {fmt(e['reward'], '.4f')} | {fmt(e['latency_ms_estimated'], '.4f')} "
                         f"| {fmt(e['latency_ms_measured'], '.4f')} | {fmt(e['params_m'], '.3f')} |")
    lines += table3_markdown(hub)
    lines.append("")
    for e in [*hub["tiers"], *(hub.get("family") or []), *(hub.get("baselines") or [])]:
        if not e.get("candidate_id"):
            continue
        on = e.get("latency_measured_on")
        where = (f"{on.get('backend_version') or on.get('backend')} {on.get('precision')}, batch {on.get('batch_size')}, "
                 f"on {on.get('device')} ({on.get('runs')} runs, profiler {on.get('worker_id')})") if on else \
            f"not measured: {e.get('latency_measurement_error') or 'unknown'}"
        lines.append(f"- {e['candidate_id']}: end-to-end latency {where}")
    return "\n".join(lines) + "\n"
