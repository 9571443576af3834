"""The sizes of a search's pools: what each phase wants (pure) and applying it (server-side apply of
``spec.replicas`` under the scaler's own field manager, and deletion costs for busy trainers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from . import FINALIZING, PENDING, PROFILING, SCALING, TERMINAL_PHASES, builders
from .api import DELETION_COST_MANAGER, SCALER, ApiError

#: Phases in which the latency table may still be filling: stage 1 of the search, and phase Scaling (the layers
#: of the scaled networks of latency-aware compound scaling).
PROFILING_PHASES = (PENDING, PROFILING, SCALING)
#: ``controller.kubernetes.io/pod-deletion-cost`` of a trainer holding a lease: when the pool shrinks, the
#: ReplicaSet removes idle trainers first instead of interrupting a candidate mid-epoch.
BUSY_DELETION_COST = "1000"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: Deletion-cost applies in flight at once per search.
DELETION_COST_CONCURRENCY = 8


@dataclass(frozen=True)
class Scale:
    """Desired replicas of the three Deployments of a search."""

    controller: int
    profilers: int
    trainers: int

    def by_component(self) -> dict[str, int]:
        return {"controller": self.controller, "profiler": self.profilers, "trainer": self.trainers}


def desired_scale(phase: str, spec: Mapping[str, Any], *, queued: int, running: int, table_complete: bool) -> Scale:
    """Profilers run while the latency table fills (also for the scaled networks of phase Scaling), then 0; trainers run at min(maxReplicas, queued + running);
    in Finalizing, profilers measure the tier winners end to end on the target device (at least one) and trainers
    run at min(maxReplicas, queued + running) for stage 2 (the winners trained again, the baselines; none without
    it); everything is 0 once the search has ended, by then the result files are on the volume.

    Args:
        phase: the search's phase name (``gpunet.rpc.phase_name``).
        spec: the NASSearch spec with defaults.
        queued, running: candidates waiting for a trainer and candidates being trained.
        table_complete: True once every layer latency the tiers need is measured.
    """
    if phase in TERMINAL_PHASES:
        return Scale(controller=0, profilers=0, trainers=0)
    profiler_replicas = int(spec.get("profilers", {}).get("replicas", 1))
    trainers = min(int(spec.get("trainers", {}).get("maxReplicas", 1)), max(0, queued) + max(0, running))
    if phase == FINALIZING:
        return Scale(controller=1, profilers=max(1, profiler_replicas), trainers=trainers)
    profilers = profiler_replicas if phase in PROFILING_PHASES and not table_complete else 0
    return Scale(controller=1, profilers=profilers, trainers=trainers)


async def apply_replicas(ctx: Any, namespace: str, deployment: str, replicas: int) -> bool:
    """Apply ``spec.replicas`` of one Deployment as the scaler. Returns False when the Deployment is gone."""
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": deployment, "namespace": namespace},
            "spec": {"replicas": int(replicas)}}
    try:
        await ctx.api.apply(body, SCALER)
    except ApiError as exc:
        if exc.status in (404, 422):  # deleted under us (a partial apply cannot create it)
            return False
        raise
    return True


async def apply_scale(ctx: Any, search: str, namespace: str, want: Scale, applied: dict[str, int]) -> None:
    """Bring the three Deployments to ``want``; ``applied`` (updated) is what this process last applied."""
    for component, replicas in want.by_component().items():
        if applied.get(component) == replicas:
            continue
        if await apply_replicas(ctx, namespace, builders.child_name(search, component), replicas):
            applied[component] = replicas


async def protect_busy_trainers(ctx: Any, namespace: str, busy: Iterable[str], protected: set[str]) -> None:
    """Give the pods in ``busy`` (trainers holding a lease) a high deletion cost and take it from the others in
    ``protected`` (updated to ``busy``). The applies run a few at a time: after a mass reclaim many pods change."""
    busy = set(busy)
    gate = asyncio.Semaphore(DELETION_COST_CONCURRENCY)

    async def apply(pod: str, annotations: dict[str, str]) -> None:
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": namespace, "annotations": annotations}}
        async with gate:
            try:
                await ctx.api.apply(body, DELETION_COST_MANAGER)
            except ApiError as exc:
                if exc.status not in (404, 422):  # a pod that is gone needs no protection
                    raise

    await asyncio.gather(*[apply(p, {DELETION_COST: BUSY_DELETION_COST}) for p in sorted(busy - protected)],
                         *[apply(p, {}) for p in sorted(protected - busy)])
    protected.clear()
    protected.update(busy)
