"""Results of a search, written from its state directory: candidates, the model hub, a Pareto plot, weights.

- ``candidates.jsonl``: one JSON object per candidate (every line has an ``"id"``).
- ``hub.json`` (format :data:`HUB_FORMAT`): ``{"format", "search", "phase", "target", "preprocessing": {"mean",
  "std"}, "tiers": [{"target_ms", "candidate_id", "vector", "top1", "top1_search", "top1_test", "final_candidate_id",
  "final_epochs", "latency_ms_estimated", "latency_ms_measured", "latency_measured_on", "latency_measurement_error",
  "params_m", "gflops", "architecture", "weights", "weights_top1", "weights_ema", "onnx", "vs_baselines"}, ...],
  "baselines": [...]}``, one entry per latency tier in ``spec.latency.tiers`` order (``candidate_id`` null for a
  tier without a result). Paths are relative to the hub's folder. Top-1 values are fractions at the best epoch.
  ``top1`` is the validation top-1 the model was selected by: its stage-2 run's (:mod:`.stage2`,
  ``final_candidate_id``, ``final_epochs`` epochs; the weights are that run's) or, without stage 2, the search's;
  ``top1_search`` is the search's proxy top-1 of the same network; ``top1_test`` the stage-2 run's top-1 on the
  test split (null without stage 2). ``baselines``: ``{"model", "candidate_id", "top1", "top1_test",
  "latency_ms_measured", "latency_measured_on", "params_m", "gflops", ...}`` per ``spec.baselines`` entry
  (:func:`baseline_entry`); ``vs_baselines`` compares the tier's model with them (:mod:`.comparison`).
  Where each latency was measured: ``latency_ms_estimated`` is the sum of the latency table's layer latencies,
  measured by profilers on ``target`` (``{"backend", "device", "precision", "batch_size"}``);
  ``latency_ms_measured`` is the whole network's median latency measured by a profiler in phase Finalizing
  (:mod:`.finalizing`), and ``latency_measured_on`` says where and how: ``{"backend", "backend_version", "device"
  (the device's name), "precision", "batch_size", "runs", "worker_id"}``. Without a measurement both are null and
  ``latency_measurement_error`` says why. ``"objective"``: ``{"name": "tiered"}`` or ``{"name": "mnas", "target_ms",
  "w", "hard"}``; with ``mnas`` the one tier is the best reward and ``"pareto"`` lists the trained candidates on the
  Pareto front of top-1 against latency (:func:`pareto_entries`). With ``spec.scaling``, ``"family"`` has one entry
  per target of phase Scaling (:mod:`.scaling`): the tier fields plus ``"depth_mult", "width_mult",
  "resolution_mult", "resolution", "base_candidate_id", "reward"`` (:func:`family_members`).
- ``weights/<candidate>.safetensors``: the state dict of each tier winner's network as trained (the last epoch's
  checkpoint; its EMA weights when they scored the higher top-1), with the architecture in the file's metadata.
  ``weights_top1`` is that checkpoint's top-1. :func:`gpunet.hub.load` turns it back into a module.
- ``hub.md``: the same as Markdown tables, the baselines in the GPUNet paper's Table 3 layout with the speedup at
  equal accuracy and the accuracy gain at equal latency (:func:`.comparison.table3_markdown`).
- ``pareto.png``: every candidate with a result, the Pareto front, the hub models and the baselines
  (:func:`pareto_figure`).
- ``onnx/tier-<t>-<candidate>.onnx``: the best network of each tier with its trained weights
  (``onnx/family-<j>-<candidate>.onnx`` for the family members).

Every file is written atomically (:mod:`gpunet.fileio`). Training checkpoints are read with
``torch.load(weights_only=True)``: nothing is unpickled. Needs torch (weights, ONNX, FLOPs) and matplotlib; each of
these parts is skipped with a note when it fails, so the JSON outputs are always written. Nothing is timed here: the
controller that writes these files may run on another machine than the target device.

This module writes the files (:func:`write_outputs`) and builds ``candidates.jsonl``'s and ``hub.json``'s
entries. The hub's format constants and its reader (:func:`read_hub`, :func:`select_tier`, no torch) live in
:mod:`.hubfile`, the choice of each tier's winner in :mod:`.winners`, ``hub.md`` in :mod:`.hub_markdown` and
``pareto.png`` in :mod:`.pareto`; their public names are importable from here too (``__all__``).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from ..fileio import write_atomic, write_json_atomic
from ..spec import SearchSpec
from ..objectives import pareto_front
from .comparison import compare_to_baselines
from .hub_markdown import hub_markdown
from .hubfile import HUB_FILE, HUB_FORMAT, WEIGHTS_DIR, WEIGHTS_FORMAT, HubError, hub_path, read_hub, select_tier
from .measurements import FINALIZING_FILE, NetworkJob, read_network_measurements
from .pareto import pareto_figure, pareto_plot
from .state import FINISHED, Candidate, ControllerState, architecture_of, is_baseline, score_of, target_ms_of
from .winners import best_per_tier, family_members, stage2_winners

#: The public names: this module's, and those of the modules above that callers import from here.
__all__ = ["HUB_FILE", "HUB_FORMAT", "WEIGHTS_DIR", "WEIGHTS_FORMAT", "HubError", "best_per_tier", "baseline_entry",
           "candidate_record", "family_members", "hub_markdown", "hub_path", "pareto_entries", "pareto_figure",
           "pareto_plot", "read_hub", "save_weights", "select_tier", "stage2_winners", "write_outputs"]

log = logging.getLogger(__name__)


def _num(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def candidate_record(c: Candidate, spec: SearchSpec) -> dict[str, Any]:
    """One line of ``candidates.jsonl`` (a scaled network of phase Scaling adds ``architecture`` and ``scaling``; a
    stage-2 run adds ``final``, ``epochs_budget`` and ``top1_test``, a baseline its ``architecture``)."""
    extra: dict[str, Any] = {"architecture": c.architecture, "scaling": c.scaling} if c.scaling else {}
    if c.final:
        extra.update(final=c.final, epochs_budget=(c.training or {}).get("epochs"), top1_test=_num(c.top1_test))
        if c.architecture:
            extra["architecture"] = c.architecture
    return {
        "id": c.id, "tier": c.tier, "target_ms": _num(target_ms_of(spec, c)), "state": c.state, "vector": c.vector, **extra,
        "top1": _num(c.top1), "history": [round(h, 6) for h in c.history], "epochs": c.epoch,
        "latency_ms_estimated": _num(c.latency_ms), "attempts": c.attempts, "preemptions": c.preemptions,
        "lease_expiries": c.lease_expiries, "failures": c.failures, "restarts_from_scratch": c.restarts_from_scratch,
        "error": c.error, "worker_id": c.worker_id, "checkpoint": c.checkpoint, "events": c.events,
    }


def _load_trained(c: Candidate) -> tuple[Any, Any, dict[str, Any]]:
    """The trained network of a candidate from its final checkpoint (the better of raw and EMA weights).

    Returns ``(model in eval mode, architecture, {"weights_ema", "weights_top1"})``. The checkpoint is read with
    ``weights_only=True`` (tensors and plain containers only).
    """
    import torch

    from ..baselines import network_from_dict
    from ..model import build_model

    state = torch.load(c.checkpoint, map_location="cpu", weights_only=True)
    arch = network_from_dict(state["arch"])
    model = build_model(arch)
    use_ema = state.get("ema") is not None and bool(state.get("ema_better", False))
    model.load_state_dict(state["ema"] if use_ema else state["model"])
    history = state.get("history") or []
    return model.eval(), arch, {"weights_ema": use_ema, "weights_top1": _num(history[-1]) if history else None}


def save_weights(model: Any, arch: Any, path: str | Path, candidate_id: str) -> Path:
    """Write ``model``'s state dict as safetensors, with ``arch`` (our JSON format) in the file's metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": WEIGHTS_FORMAT, "candidate_id": candidate_id, "architecture": json.dumps(arch.to_dict())}
    data = save(tensors, metadata=metadata)
    return write_atomic(path, lambda f: f.write(data))


def _export_onnx(model: Any, arch: Any, path: Path) -> None:
    from ..model import export_onnx

    with tempfile.TemporaryDirectory() as tmp:  # the exporter wants a path; the hub folder gets the file whole
        export_onnx(model, Path(tmp) / path.name, (1, arch.in_chans, arch.resolution, arch.resolution))
        data = (Path(tmp) / path.name).read_bytes()
    write_atomic(path, lambda f: f.write(data))


def write_outputs(spec: SearchSpec, state_dir: str | Path, out_dir: str | Path | None = None, *,
                  measure: bool = True, export: bool = True, phase: str | None = None) -> dict[str, Any]:
    """Write the result files of the search in ``state_dir`` into ``out_dir`` (default: ``state_dir``).

    Args:
        measure: record each tier winner's end-to-end latency as phase Finalizing measured it on a profiler
            (``finalizing.json`` in ``state_dir``); False leaves ``latency_ms_measured`` null.
        export: also export each tier winner to ONNX (its weights are written whenever its checkpoint is readable).
        phase: the phase to record in ``hub.json`` (default: the state's). Finalizing writes the files just before
            it sets ``Succeeded`` and records that.

    Returns the hub (``hub.json``'s content) with the written paths under ``"files"``.
    """
    state_dir = Path(state_dir)
    out = Path(out_dir or state_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = ControllerState.load(state_dir)
    candidates = sorted(state.candidates.values(), key=lambda c: c.id)
    files: dict[str, str] = {}

    lines = "".join(json.dumps(candidate_record(c, spec)) + "\n" for c in candidates).encode()
    write_atomic(out / "candidates.jsonl", lambda f: f.write(lines))
    files["candidates"] = str(out / "candidates.jsonl")

    space = spec.space()
    measured = read_network_measurements(state_dir) if measure else {}

    def entry_of(best: Candidate | None, index: int, target_ms: float, name: str,
                 trained: Candidate | None = None) -> dict[str, Any]:
        """A tier's entry: ``best`` the searched network, ``trained`` its stage-2 run (default: ``best`` itself,
        whose weights the entry then has)."""
        entry: dict[str, Any] = {"target_ms": target_ms, "candidate_id": None, "vector": None, "top1": None,
                                 "top1_search": None, "top1_test": None, "final_candidate_id": None,
                                 "final_epochs": None, "latency_ms_estimated": None, "latency_ms_measured": None,
                                 "latency_measured_on": None, "latency_measurement_error": None, "params_m": None,
                                 "gflops": None, "architecture": None, "weights": None, "weights_top1": None,
                                 "weights_ema": None, "onnx": None}
        if best is None:
            return entry
        trained = trained or best
        entry.update(candidate_id=best.id, vector=best.vector, top1=_num(trained.top1), top1_search=_num(best.top1),
                     latency_ms_estimated=_num(best.latency_ms))
        if trained.final:
            entry.update(final_candidate_id=trained.id, final_epochs=trained.epoch, top1_test=_num(trained.top1_test))
        entry.update(_stats(architecture_of(space, best), best.id))  # a stage-2 run has its source's network
        entry.update(_measured_latency(measured.get(best.id), best.id, measure))
        if trained.checkpoint and Path(trained.checkpoint).exists():
            _write_winner(trained, name, out, entry, export)
        return entry

    # With stage 2 a tier reports its best stage-2 run (by its validation top-1) and that run's searched network.
    winners = best_per_tier(candidates, len(spec.tier_targets), spec)
    runs = stage2_winners(candidates, len(spec.tier_targets))
    by_id = {c.id: c for c in candidates}
    tiers = [entry_of(by_id.get(runs[t].final["source_id"], best) if runs[t] else best, t, spec.tier_targets[t],
                      f"tier-{t}", runs[t]) for t, best in enumerate(winners)]
    baselines = [baseline_entry(c, measured.get(c.id), measure) for c in candidates if is_baseline(c)]
    baselines.sort(key=lambda b: b["index"])
    for entry in tiers:
        entry["vs_baselines"] = compare_to_baselines(entry, baselines)
    hub = {"format": HUB_FORMAT, "search": spec.name, "phase": phase or state.phase, "target": state.target,
           "preprocessing": _preprocessing(spec), "objective": _objective(spec), "tiers": tiers,
           "baselines": baselines}
    if spec.algorithm.objective == "mnas":
        hub["pareto"] = pareto_entries(candidates, spec)
    if spec.scaling.enabled:
        first = len(spec.tier_targets)
        hub["family"] = []
        for j, member in enumerate(family_members(candidates, spec)):
            entry = entry_of(member, first + j, spec.scaling.targets_ms[j], f"family-{j}")
            scale = (member.scaling or {}) if member is not None else {}
            entry.update({k: scale.get(k) for k in ("depth_mult", "width_mult", "resolution_mult", "base_candidate_id")},
                         resolution=None, reward=_num(score_of(spec, member)) if member is not None else None)
            if member is not None:
                entry["architecture"] = entry["architecture"] or member.architecture
                entry["resolution"] = entry["architecture"]["resolution"]
            hub["family"].append(entry)
    write_json_atomic(out / HUB_FILE, hub)
    files["hub_json"] = str(out / HUB_FILE)
    markdown = hub_markdown(hub, spec).encode()
    write_atomic(out / "hub.md", lambda f: f.write(markdown))
    files["hub_md"] = str(out / "hub.md")
    try:
        files["pareto"] = str(pareto_plot(candidates, spec, out / "pareto.png", hub))
    except Exception as exc:  # noqa: BLE001
        log.warning("pareto plot failed: %s", exc)
    return {**hub, "files": files}


def _stats(net: Any, name: str) -> dict[str, Any]:
    """``params_m`` and ``gflops`` of a network (our architecture or a baseline), or nothing when that fails."""
    try:
        from ..model import model_stats

        stats = model_stats(net)
        return {"params_m": round(stats.params_m, 4), "gflops": round(stats.gflops, 6)}
    except Exception as exc:  # noqa: BLE001
        log.warning("model stats of %s failed: %s", name, exc)
        return {}


def baseline_entry(c: Candidate, job: NetworkJob | None, measure: bool) -> dict[str, Any]:
    """``hub.json``'s entry of a baseline: ``{"model", "index", "candidate_id", "state", "resolution", "in_chans",
    "top1" (validation), "top1_test", "epochs", "latency_ms_measured", "latency_measured_on",
    "latency_measurement_error", "params_m", "gflops", "error"}``."""
    from ..baselines import network_from_dict

    net = network_from_dict(c.architecture)
    entry: dict[str, Any] = {
        "model": c.final["model"], "index": c.final.get("index", 0), "candidate_id": c.id, "state": c.state,
        "resolution": net.resolution, "in_chans": net.in_chans, "top1": _num(c.top1) if c.state in FINISHED else None,
        "top1_test": _num(c.top1_test), "epochs": c.epoch, "latency_ms_measured": None, "latency_measured_on": None,
        "latency_measurement_error": None, "params_m": None, "gflops": None, "error": c.error or None}
    entry.update(_stats(net, c.id))
    entry.update(_measured_latency(job, c.id, measure))
    return entry


def _objective(spec: SearchSpec) -> dict[str, Any]:
    a = spec.algorithm
    if a.objective != "mnas":
        return {"name": a.objective}
    return {"name": "mnas", "target_ms": a.target_ms, "w": a.w, "hard": a.hard}


def pareto_entries(candidates: list[Candidate], spec: SearchSpec) -> list[dict[str, Any]]:
    """The searched candidates (not the Scaling family) on the Pareto front of top-1 against estimated latency,
    by latency: ``{"candidate_id", "vector", "top1", "latency_ms_estimated", "reward"}`` each."""
    done = [c for c in candidates if c.tier < len(spec.tier_targets) and c.state in FINISHED and c.top1 is not None
            and math.isfinite(c.latency_ms)]
    front = pareto_front([(c.latency_ms, c.top1 or 0.0) for c in done])
    return [{"candidate_id": done[i].id, "vector": done[i].vector, "top1": _num(done[i].top1),
             "latency_ms_estimated": _num(done[i].latency_ms), "reward": _num(score_of(spec, done[i]))} for i in front]


def _measured_latency(job: NetworkJob | None, candidate_id: str, measure: bool) -> dict[str, Any]:
    """The ``latency_ms_measured``, ``latency_measured_on`` and ``latency_measurement_error`` of a tier winner."""
    if not measure:
        return {"latency_measurement_error": "not recorded (measure=False)"}
    if job is None or job.candidate_id != candidate_id:
        return {"latency_measurement_error": "not measured end to end: no measurement of this network in "
                                             f"{FINALIZING_FILE} (the search did not pass through phase Finalizing)"}
    if job.result is None:
        return {"latency_measurement_error": job.error or "not measured end to end"}
    r = job.result
    on = {k: r.get(k) for k in ("backend", "backend_version", "device", "precision", "batch_size", "runs", "worker_id")}
    return {"latency_ms_measured": _num(r.get("latency_ms")), "latency_measured_on": on}


def _write_winner(best: Candidate, name: str, out: Path, entry: dict[str, Any], export: bool) -> None:
    """The weights file (and, with ``export``, the ONNX file ``onnx/<name>-<candidate>.onnx``) of a tier winner or
    family member; fills ``entry``'s fields."""
    try:
        model, arch, info = _load_trained(best)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint leaves the tier without weights
        log.warning("the checkpoint of %s cannot be read: %s", best.id, exc)
        return
    entry.update(architecture=arch.to_dict(), **info)
    try:
        path = save_weights(model, arch, out / WEIGHTS_DIR / f"{best.id}.safetensors", best.id)
        entry["weights"] = path.relative_to(out).as_posix()
    except Exception as exc:  # noqa: BLE001
        log.warning("writing the weights of %s failed: %s", best.id, exc)
    if export:
        try:
            path = out / "onnx" / f"{name}-{best.id}.onnx"
            _export_onnx(model, arch, path)
            entry["onnx"] = path.relative_to(out).as_posix()
        except Exception as exc:  # noqa: BLE001
            log.warning("ONNX export of %s failed: %s", best.id, exc)


def _preprocessing(spec: SearchSpec) -> dict[str, Any] | None:
    """The input normalisation of the training data (what a user of the weights must apply)."""
    try:
        from ..data import normalization

        mean, std = normalization(spec.training.dataset.kind, spec.space().in_chans)
        return {"mean": list(mean), "std": list(std)}
    except Exception as exc:  # noqa: BLE001 - e.g. no timm for ImageNet's constants
        log.warning("no preprocessing recorded: %s", exc)
        return None
