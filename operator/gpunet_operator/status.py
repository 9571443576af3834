"""The controller's ``SearchStatus`` (gRPC) as ``NASSearch.status``, with the per-candidate list kept under a
fixed byte budget.

Katib keeps every trial in its experiment's status and stalls near 14,500 trials when the object reaches
etcd's size limit (1.5 MiB; kubeflow/katib#1847). Here the status holds counters, the best candidate per
latency tier and a compact list of candidate records — running ones first, then the most recent — cut so
that its JSON stays within ``budget_bytes`` (256 KiB by default); the full records are on the shared volume.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Iterable, Sequence

from gpunet.rpc import phase_name

from . import FAILED, PENDING, SUCCEEDED

#: Top-1 is a fraction on the wire and a percentage (2 decimals) in the status, as `kubectl get` shows it.
TOP1_DECIMALS = 2
LATENCY_DECIMALS = 4


def now_iso() -> str:
    """The current time as an RFC 3339 timestamp (``2026-11-21T05:55:00Z``)."""
    return datetime.datetime.now(tz=datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _pct(top1: float) -> float:
    return round(100.0 * float(top1), TOP1_DECIMALS)


def _ms(latency: float) -> float:
    return round(float(latency), LATENCY_DECIMALS)


def candidate_record(rec: Any, tiers: Sequence[float]) -> dict[str, Any]:
    """One compact record (``CandidateRecord`` -> dict); zero fields are left out to save bytes."""
    tier_index = int(rec.tier_index)
    out: dict[str, Any] = {"id": rec.id, "state": rec.state}
    if 0 <= tier_index < len(tiers):
        out["tier"] = tiers[tier_index]
    if rec.epochs:
        out["epochs"] = int(rec.epochs)
    if rec.top1:
        out["top1"] = _pct(rec.top1)
    if rec.latency_ms:
        out["latencyMs"] = _ms(rec.latency_ms)
    if rec.attempts:
        out["attempts"] = int(rec.attempts)
    if rec.preemptions:
        out["preemptions"] = int(rec.preemptions)
    if rec.worker_id:
        out["worker"] = rec.worker_id
    return out


def _size(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":")).encode())


def compact_candidates(records: Iterable[dict[str, Any]], total: int, budget_bytes: int) -> dict[str, Any]:
    """The per-candidate list of the status: running records first, then the rest in the given order (most
    recent first), as many as fit in ``budget_bytes`` of JSON.

    Returns:
        ``{"total": total, "omitted": n, "list": [...]}`` where ``n`` counts the known candidates left out.
    """
    records = list(records)
    ordered = [r for r in records if r.get("state") == "running"] + [r for r in records if r.get("state") != "running"]
    shown: list[dict[str, Any]] = []
    used = 2  # the list's brackets
    for rec in ordered:
        size = _size(rec) + 1  # and a comma
        if used + size > budget_bytes:
            break
        shown.append(rec)
        used += size
    return {"total": int(total), "omitted": max(0, int(total) - len(shown)), "list": shown}


def _best(tier: Any) -> dict[str, Any] | None:
    if not tier.best_candidate_id:
        return None
    return {
        "tier": float(tier.target_ms),
        "candidate": tier.best_candidate_id,
        "top1": _pct(tier.best_top1),
        "latencyMs": _ms(tier.best_latency_ms),
        "vector": [int(v) for v in tier.best_vector],
    }


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None = None) -> list[dict[str, Any]]:
    """``conditions`` with the condition ``type_`` set; its ``lastTransitionTime`` changes only on a change of
    status. Returns a new list (conditions are replaced as a whole in a merge patch)."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    cond: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now_iso(),
    }
    if generation is not None:
        cond["observedGeneration"] = int(generation)
    out.append(cond)
    return sorted(out, key=lambda c: c["type"])


def ready_condition(phase: str, message: str) -> tuple[bool, str, str]:
    """``(status, reason, message)`` of the Ready condition for a controller phase."""
    if phase == FAILED:
        return False, "SearchFailed", message or "the search failed"
    if phase == SUCCEEDED:
        return True, "SearchSucceeded", message or "all tiers searched; results are on the shared volume"
    if phase in (PENDING, ""):
        return False, "Starting", message or "waiting for the search controller"
    return True, phase, message or f"search is {phase.lower()}"


def degraded_condition(search_status: Any) -> tuple[bool, str, str]:
    """``(status, reason, message)`` of the Degraded condition: True while the controller rides out a transient
    error (``SearchStatus.degraded``: retried with backoff, the search goes on)."""
    if not search_status.HasField("degraded"):
        return False, "Healthy", "no transient errors"
    d = search_status.degraded
    return True, d.reason or "TransientError", f"{d.message} ({d.errors} transient errors; retrying with backoff)"


def mirror(
    search_status: Any,
    tiers: Sequence[float],
    *,
    conditions: list[dict[str, Any]],
    budget_bytes: int,
    generation: int | None = None,
) -> dict[str, Any]:
    """The ``status`` patch for one ``SearchStatus`` reply of the controller.

    Args:
        search_status: a ``gpunet.rpc.pb.SearchStatus``.
        tiers: ``spec.latency.tiers`` (ms), to name each record's tier by its target.
        conditions: the conditions this writer owns (Ready, ControllerReachable, Degraded), as last written.
        budget_bytes: byte budget of the per-candidate list.
        generation: ``metadata.generation`` of the NASSearch.
    """
    s = search_status
    c = s.candidates
    best_per_tier = [b for b in (_best(t) for t in s.tiers) if b is not None]
    best = max(best_per_tier, key=lambda b: b["top1"], default=None)
    records = [candidate_record(r, tiers) for r in s.records]
    phase = phase_name(s.phase) or PENDING
    ready, reason, message = ready_condition(phase, s.message)
    status: dict[str, Any] = {
        "phase": phase,
        "message": s.message,
        "tiers": len(tiers),
        "latencyTable": {"measured": int(s.latency_table.layers_measured), "needed": int(s.latency_table.layers_needed)},
        "counters": {
            "queued": int(c.queued),
            "running": int(c.running),
            "evaluated": int(c.completed + c.stopped),
            "completed": int(c.completed),
            "stopped": int(c.stopped),
            "failed": int(c.failed),
            "total": int(c.total),
            "budget": int(c.budget),
            "preempted": int(s.preemptions),
            "leaseExpiries": int(s.lease_expiries),
            **({"finalQueued": int(f.queued), "finalRunning": int(f.running), "finalCompleted": int(f.completed),
                "finalFailed": int(f.failed), "finalTotal": int(f.total)} if (f := s.final_training).total else {}),
        },
        "bestPerTier": best_per_tier,
        **({"best": best} if best else {}),
        "candidates": compact_candidates(records, max(int(c.total), len(records)), budget_bytes),
        "conditions": set_condition(set_condition(conditions, "Ready", ready, reason, message, generation),
                                    "Degraded", *degraded_condition(s), generation),
    }
    if generation is not None:
        status["observedGeneration"] = int(generation)
    return status
