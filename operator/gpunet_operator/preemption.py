"""Trainer pods lost to their node (spot preemption, eviction, node deletion) or failed by themselves.

A preempted pod's candidate is not at fault: its lease is released at once with reason ``preempted`` and the
candidate resumes from its last epoch checkpoint on another pod, without using up a retry. A failed container
(a crash, out of memory) releases the lease it held when it failed with reason ``failed``, which counts against
``spec.training.maxRetries``; a lease its restarted container took afterwards is healthy and never revoked
(``granted_before_unix_s``).

Signals of preemption, per the Kubernetes docs ("Pod disruption conditions", "Node shutdowns"):
    - the pod condition ``DisruptionTarget=True`` (reasons PreemptionByScheduler, DeletionByTaintManager,
      EvictionByEvictionAPI, DeletionByPodGC, TerminationByKubelet);
    - ``status.reason`` ``Preempted``, ``Evicted``, ``Shutdown``, ``NodeShutdown``, ``Terminated``,
      ``NodeLost`` or ``UnexpectedAdmissionError``;
    - its node carries a preemption taint (cloud spot notices, node-termination handlers, out-of-service) or is
      deleted (cluster-wide installs only: namespaced ones cannot watch nodes);
    - the pod was deleted while its trainer still held a lease.

Every loss is handled once, also across operator restarts (kopf re-delivers every pod at startup): the handled
ones are recorded in ``status.trainerPods`` (pod uid, container restarts already counted, preempted) together
with ``status.counters.podFailures``, both owned by this module's status writer.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import kopf

from gpunet.rpc.client import ControllerUnavailable

from . import API_VERSION, KIND, builders
from .context import OperatorContext, meta_of
from .status_writer import PODS

PREEMPTION_REASONS = frozenset({"Preempted", "Evicted", "Shutdown", "NodeShutdown", "Terminated", "NodeLost",
                                "UnexpectedAdmissionError", "DeletionByTaintManager"})
#: Attempts (and seconds between them, growing linearly) to release a lost pod's lease; after that the lease
#: expires by itself on the controller.
RELEASE_ATTEMPTS, RELEASE_BACKOFF_S = 4, 0.5
#: Most pods remembered per search in ``status.trainerPods`` (entries of deleted pods are dropped).
MAX_LEDGER = 2000
#: Seconds a change of the ledger waits before it is written, so that a burst of losses is one status write.
FLUSH_DELAY_S = 0.25
#: The longest wait between two attempts of a failed ledger write.
FLUSH_RETRY_MAX_S = 10.0


class PodEnd(enum.Enum):
    """How a trainer pod's work ended, if it did."""

    PREEMPTED = "preempted"
    FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    """A pod's loss: ``failures`` is the number of container failures seen so far (for FAILED); ``failed_at`` the
    time of the last one (seconds since the epoch, 0 when unknown)."""

    end: PodEnd
    reason: str
    failures: int = 0
    failed_at: float = 0.0


def _timestamp(value: Any) -> float:
    if not value:
        return 0.0
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def disruption(pod: Mapping[str, Any]) -> str | None:
    """The reason the pod is being disrupted by its node or the cluster, or None."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return f"DisruptionTarget: {cond.get('reason') or 'unknown'}"
    reason = (pod.get("status") or {}).get("reason")
    return f"pod {reason}" if reason in PREEMPTION_REASONS else None


def node_preemption(node: Mapping[str, Any], taint_keys: Iterable[str]) -> str | None:
    """Why ``node`` is going away (a preemption taint), or None."""
    keys = set(taint_keys)
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("key") in keys:
            return f"node taint {taint['key']}"
    return None


def classify_pod(pod: Mapping[str, Any], *, deleted: bool = False) -> Verdict | None:
    """Whether this state of a trainer pod ends the work it held, and how.

    Returns:
        PREEMPTED when the pod is disrupted by its node or the cluster, or was ``deleted``; FAILED with the
        number of container failures so far (a terminated state with a non-zero exit code now, or as the last
        state before ``restartCount`` restarts); None for a healthy, pending or cleanly finished pod.
    """
    why = disruption(pod)
    if why is not None:
        return Verdict(PodEnd.PREEMPTED, why)
    failures, failed_at, reason = 0, 0.0, ""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        restarts = int(cs.get("restartCount") or 0)
        for where, count in (("state", restarts + 1), ("lastState", restarts)):
            term = (cs.get(where) or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0 and count > failures:
                failures, failed_at = count, _timestamp(term.get("finishedAt"))
                reason = f"container {cs.get('name')}: {term.get('reason') or 'exit code ' + str(term.get('exitCode'))}"
    if failures:
        return Verdict(PodEnd.FAILED, reason, failures, failed_at)
    return Verdict(PodEnd.PREEMPTED, "pod deleted") if deleted else None


# --- the ledger in the status -------------------------------------------------------------------------------


@dataclass
class Ledger:
    """The handled losses of one search: a cache of ``status.trainerPods`` and ``counters.podFailures``, seeded
    from the server once per process, written back (coalesced) by :func:`_flush`."""

    meta: dict[str, str]
    pods: dict[str, dict[str, Any]]
    pod_failures: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flushing: asyncio.Task | None = None

    @classmethod
    def from_status(cls, meta: dict[str, str], status: Mapping[str, Any]) -> "Ledger":
        pods = {p["uid"]: dict(p) for p in status.get("trainerPods") or [] if isinstance(p, Mapping) and p.get("uid")}
        return cls(meta, pods, int((status.get("counters") or {}).get("podFailures") or 0))

    def part(self) -> dict[str, Any]:
        """This writer's whole part of the status."""
        return {"trainerPods": list(self.pods.values())[-MAX_LEDGER:], "counters": {"podFailures": self.pod_failures}}


async def _ledger(ctx: OperatorContext, namespace: str, search: str) -> Ledger | None:
    """The ledger of a search (None when the search is gone); one GET per search and process."""
    key = (namespace, search)
    ledger = ctx.ledgers.get(key)
    if ledger is None:
        owner = await ctx.api.get(API_VERSION, KIND, namespace, search)
        if owner is None:
            return None
        ledger = ctx.ledgers.setdefault(key, Ledger.from_status(meta_of(owner), owner.get("status") or {}))
    return ledger


async def _flush(ctx: OperatorContext, ledger: Ledger, logger: logging.Logger) -> None:
    """Write the ledger a moment after a change, so that a mass reclaim costs a few status writes, not one per pod;
    retried with a growing delay while the API server refuses. Until the write lands a restarted operator handles
    those losses again: the releases are then no-ops (the lease is gone, or newer than the failure) and the counts
    are made once, by the write that lands."""
    delay = FLUSH_DELAY_S
    while True:
        await asyncio.sleep(delay)
        ledger.flushing = None  # a change from now on schedules another write
        try:
            await ctx.status.apply(ledger.meta, PODS, ledger.part())
            return
        except Exception as exc:  # noqa: BLE001 - retried below
            logger.warning("writing status.trainerPods failed (retrying in %.1fs): %s", 2 * delay, exc)
        if ledger.flushing is not None:
            return  # a newer flush is scheduled and will write everything
        ledger.flushing = asyncio.current_task()
        delay = min(2 * delay, FLUSH_RETRY_MAX_S)


async def _release(ctx: OperatorContext, namespace: str, search: str, pod: str, verdict: Verdict, logger: logging.Logger) -> Any:
    client = await ctx.controller(namespace, search)
    if client is None:
        return None
    granted_before = verdict.failed_at if verdict.end is PodEnd.FAILED else 0.0
    for attempt in range(RELEASE_ATTEMPTS):
        try:
            return await client.release(pod, verdict.end.value, verdict.reason, granted_before_unix_s=granted_before)
        except ControllerUnavailable as exc:
            logger.warning("release of %s (%s) failed, attempt %d: %s", pod, verdict.end.value, attempt + 1, exc)
            await asyncio.sleep(RELEASE_BACKOFF_S * (attempt + 1))
    return None


async def handle_loss(ctx: OperatorContext, namespace: str, search: str, pod: Mapping[str, Any], verdict: Verdict,
                      logger: logging.Logger, *, deleted: bool = False) -> bool:
    """Release the lease of a lost trainer pod once, count it, record it and post an Event on the NASSearch.

    Returns True when this call handled the loss (False: already handled, or the search is gone).
    """
    ledger = await _ledger(ctx, namespace, search)
    if ledger is None:
        return False
    pod_meta = pod.get("metadata") or {}
    name, uid = pod_meta.get("name", ""), pod_meta.get("uid") or pod_meta.get("name", "")
    async with ledger.lock:  # decide and mark at once: concurrent events about the same loss see it handled
        entry = ledger.pods.setdefault(uid, {"uid": uid, "pod": name, "restarts": 0, "preempted": False})
        handled = entry["preempted"] if verdict.end is PodEnd.PREEMPTED else verdict.failures <= entry["restarts"]
        if not handled:
            if verdict.end is PodEnd.PREEMPTED:
                entry["preempted"] = True
            else:
                ledger.pod_failures += verdict.failures - entry["restarts"]
                entry["restarts"] = verdict.failures
        if deleted:
            ledger.pods.pop(uid, None)
        if ledger.flushing is None and ledger.part() != ctx.status.last(ledger.meta["uid"], PODS):
            ledger.flushing = asyncio.create_task(_flush(ctx, ledger, logger))
    if handled:
        return False
    reply = await _release(ctx, namespace, search, name, verdict, logger)
    work = reply.work_id if reply is not None and reply.released else ""
    owner = {"apiVersion": API_VERSION, "kind": KIND, "metadata": ledger.meta}
    if verdict.end is PodEnd.PREEMPTED and work:
        message = f"trainer pod {name} lost ({verdict.reason}); lease {reply.lease_id} of candidate {work} released, " \
                  "it resumes from its last checkpoint on another pod"
        kopf.event(owner, type="Warning", reason="TrainerPreempted", message=message)
        logger.info(message)
    elif verdict.end is PodEnd.FAILED:
        message = f"trainer pod {name} failed ({verdict.reason})" + \
                  (f"; lease {reply.lease_id} of candidate {work} counts one failed attempt" if work else "")
        kopf.event(owner, type="Warning", reason="TrainerFailed", message=message)
        logger.info(message)
    return True


async def on_pod_event(ctx: OperatorContext, event_type: str | None, pod: Mapping[str, Any], logger: logging.Logger) -> None:
    """A trainer pod changed (or was deleted): note where it runs, and handle its loss if it is one."""
    deleted = event_type == "DELETED"
    meta = pod.get("metadata") or {}
    search = (meta.get("labels") or {}).get(builders.SEARCH_LABEL)
    ctx.trainer_nodes.note(pod, search, deleted=deleted)
    verdict = classify_pod(pod, deleted=deleted)
    if verdict is not None and search:
        await handle_loss(ctx, meta["namespace"], search, pod, verdict, logger, deleted=deleted)


async def on_node_event(ctx: OperatorContext, event_type: str | None, node: Mapping[str, Any], logger: logging.Logger) -> None:
    """A node is being reclaimed (preemption taint) or was deleted: its trainer pods lose their work now. Where
    they run is known from the pod events already seen (no API request on this path, which must stay fast when a
    mass reclaim floods the API server); a node not seen yet (right after a restart) is listed."""
    name = (node.get("metadata") or {}).get("name")
    why = "node deleted" if event_type == "DELETED" else node_preemption(node, ctx.settings.preemption_taints)
    if why is None or not name:
        return
    pods = ctx.trainer_nodes.on(name)
    if pods is None:
        pods = await ctx.api.list("v1", "Pod", labels={builders.COMPONENT_LABEL: "trainer", builders.SEARCH_LABEL: None},
                                  fields={"spec.nodeName": name})
    await asyncio.gather(*(
        handle_loss(ctx, p["metadata"]["namespace"], p["metadata"]["labels"][builders.SEARCH_LABEL], p,
                    Verdict(PodEnd.PREEMPTED, f"{why} ({name})"), logger)
        for p in pods))


class TrainerNodes:
    """Which trainer pods run on which node, from the pod events (kopf lists every pod at startup): an index, so
    that a node's reclaim needs no API request. Holds each pod's metadata only."""

    def __init__(self) -> None:
        self._by_node: dict[str, dict[str, dict[str, Any]]] = {}
        self._node_of: dict[str, str] = {}

    def note(self, pod: Mapping[str, Any], search: str | None, *, deleted: bool) -> None:
        meta = pod.get("metadata") or {}
        uid, node = meta.get("uid") or meta.get("name", ""), (pod.get("spec") or {}).get("nodeName")
        old = self._node_of.pop(uid, None)
        if old is not None:
            self._by_node.get(old, {}).pop(uid, None)
        if deleted or not node or not search:
            return
        self._node_of[uid] = node
        self._by_node.setdefault(node, {})[uid] = {"metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": uid, "labels": {builders.SEARCH_LABEL: search}}}

    def on(self, node: str) -> list[dict[str, Any]] | None:
        """The trainer pods last seen on ``node``; None when no pod was ever seen there."""
        pods = self._by_node.get(node)
        return None if pods is None else list(pods.values())
