"""The search's status (``pb.SearchStatus``, for the operator and the CLI) and the Prometheus gauges.

The status is bounded: at most ``max_candidates`` per-candidate records, most recent first, so that
``NASSearch.status`` stays far below etcd's 1.5 MiB object limit whatever the number of candidates.
"""

from __future__ import annotations

import math
from collections import Counter as Tally

from ..rpc import pb, phase_value
from .leases import Roster
from .metrics import ControllerMetrics
from .profiling import ProfilingStage
from .searching import SearchStage
from .state import (CANDIDATE_STATES, COMPLETED, FAILED, FINISHED, QUEUED, RUNNING, STOPPED, Candidate, ControllerState,
                    score_of)

#: Per-candidate records of a status when the request does not say (``StatusRequest.max_candidates = 0``).
DEFAULT_MAX_CANDIDATES = 200


def search_status(state: ControllerState, profiling: ProfilingStage, searching: SearchStage, roster: Roster, now: float,
                  limit: int = DEFAULT_MAX_CANDIDATES, degraded: pb.Degraded | None = None) -> pb.SearchStatus:
    """The status of the search (call with the controller's lock held); ``degraded`` while a transient error is
    being retried (:mod:`.faults`)."""
    cands = list(state.candidates.values())
    counts = Tally(c.state for c in cands)
    final = Tally(c.state for c in cands if c.final)
    status = pb.SearchStatus(
        phase=phase_value(state.phase), message=state.message, search_name=state.name,
        latency_table=profiling.progress(),
        candidates=pb.CandidateCounts(queued=counts[QUEUED], running=counts[RUNNING], completed=counts[COMPLETED],
                                      stopped=counts[STOPPED], failed=counts[FAILED], total=len(cands),
                                      budget=searching.budget()),
        final_training=pb.CandidateCounts(queued=final[QUEUED], running=final[RUNNING], completed=final[COMPLETED],
                                          stopped=final[STOPPED], failed=final[FAILED], total=sum(final.values())),
        preemptions=state.preemptions, lease_expiries=state.lease_expiries, active_workers=roster.active(now),
        started_unix_s=state.started, updated_unix_s=state.updated,
    )
    for t, target_ms in enumerate(searching.spec.tier_targets):
        tier = pb.TierStatus(index=t, target_ms=target_ms, pool_size=len(searching.pools[t]["pool"]) if searching.pools else 0)
        done = [c for c in cands if c.tier == t and c.state in FINISHED and not c.final]
        tier.evaluated = len(done)
        if done:
            best = max(done, key=lambda c: (score_of(searching.spec, c), c.id))
            tier.best_candidate_id, tier.best_top1 = best.id, best.top1 or 0.0
            tier.best_latency_ms = _finite(best.latency_ms)
            tier.best_vector.extend(best.vector)
        status.tiers.append(tier)
    if degraded is not None:
        status.degraded.CopyFrom(degraded)
    recent = sorted(cands, key=lambda c: (c.created, c.id), reverse=True)
    status.records_truncated = len(recent) > limit
    status.records.extend(_record(c) for c in recent[:limit])
    return status


def _finite(ms: float) -> float:
    return ms if math.isfinite(ms) else 0.0


def _record(c: Candidate) -> pb.CandidateRecord:
    return pb.CandidateRecord(id=c.id, tier_index=c.tier, state=c.state, top1=c.best_top1, epochs=c.epoch,
                              latency_ms=_finite(c.latency_ms), attempts=c.attempts, preemptions=c.preemptions,
                              worker_id=c.worker_id, lease_id=c.lease_id if c.state == RUNNING else "")


def refresh_metrics(metrics: ControllerMetrics, state: ControllerState, profiling: ProfilingStage, tiers: int) -> None:
    """Set the gauges from the state (call with the controller's lock held)."""
    counts = Tally(c.state for c in state.candidates.values())
    for s in CANDIDATE_STATES:
        metrics.candidates.labels(s).set(counts[s])
    for t in range(tiers):
        done = [c.top1 or 0.0 for c in state.candidates.values() if c.tier == t and c.state in FINISHED and not c.final]
        metrics.best_top1.labels(str(t)).set(max(done, default=0.0))
    metrics.layers_needed.set(profiling.layers_needed)
    metrics.layers_measured.set(max(0, profiling.layers_measured))
