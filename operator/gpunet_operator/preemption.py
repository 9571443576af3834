"""How a trainer pod ended: lost to its node (spot preemption, eviction, node shutdown) or failed by itself.

A preempted pod's candidate is not at fault: its lease is released at once with reason ``preempted`` and the
candidate resumes from its last epoch checkpoint on another pod, without using up a retry. A failed pod (a
container that crashed or ran out of memory) releases with reason ``failed``, which counts against the
candidate's retry budget (``spec.training.maxRetries``).

Signals of preemption, per the Kubernetes docs ("Pod disruption conditions", "Node shutdowns"):
    - the pod condition ``DisruptionTarget=True`` (reasons PreemptionByScheduler, DeletionByTaintManager,
      EvictionByEvictionAPI, DeletionByPodGC, TerminationByKubelet);
    - ``status.reason`` ``Preempted``, ``Evicted``, ``Shutdown``, ``NodeShutdown``, ``Terminated``,
      ``NodeLost`` or ``UnexpectedAdmissionError``;
    - its node carries a preemption taint (cloud spot notices, node-termination handlers, out-of-service) or is
      deleted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

PREEMPTION_REASONS = frozenset({"Preempted", "Evicted", "Shutdown", "NodeShutdown", "Terminated", "NodeLost",
                                "UnexpectedAdmissionError", "DeletionByTaintManager"})


class PodEnd(enum.Enum):
    """How a trainer pod's work ended, if it did."""

    PREEMPTED = "preempted"
    FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    """A pod's end and why; ``key`` tells repeated events about the same end apart (for deduplication)."""

    end: PodEnd
    reason: str
    key: str


def _conditions(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("status") or {}).get("conditions") or [])


def disruption(pod: Mapping[str, Any]) -> str | None:
    """The reason the pod is being disrupted by its node or the cluster, or None."""
    for cond in _conditions(pod):
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return f"DisruptionTarget: {cond.get('reason') or 'unknown'}"
    reason = (pod.get("status") or {}).get("reason")
    if reason in PREEMPTION_REASONS:
        return f"pod {reason}"
    return None


def node_preemption(node: Mapping[str, Any], taint_keys: Iterable[str]) -> str | None:
    """Why ``node`` is going away (a preemption taint), or None."""
    keys = set(taint_keys)
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("key") in keys:
            return f"node taint {taint['key']}"
    return None


def classify_pod(pod: Mapping[str, Any]) -> Verdict | None:
    """Whether this state of a trainer pod ends the work it held, and how.

    Returns:
        A preemption verdict when the pod is disrupted by its node or the cluster; a failure verdict when its
        trainer container terminated with a non-zero exit code (now or in its last restart) without
        disruption; None for a healthy, pending or cleanly finished pod.
    """
    meta = pod.get("metadata") or {}
    uid = meta.get("uid") or meta.get("name", "")
    why = disruption(pod)
    if why is not None:
        return Verdict(PodEnd.PREEMPTED, why, f"{uid}/preempted")
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for where in ("state", "lastState"):
            term = (cs.get(where) or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                restarts = int(cs.get("restartCount") or 0)
                attempt = restarts if where == "lastState" else restarts + 1
                reason = term.get("reason") or f"exit code {term.get('exitCode')}"
                return Verdict(PodEnd.FAILED, f"container {cs.get('name')}: {reason}", f"{uid}/failed/{attempt}")
    return None
