"""How many profiler, trainer and controller pods a search wants in each phase (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: Phases after which nothing runs any more (the controller's results stay on the shared volume).
TERMINAL_PHASES = ("Succeeded", "Failed")
#: Phases in which the latency table may still be filling (stage 1 of the search).
PROFILING_PHASES = ("Pending", "Profiling")


@dataclass(frozen=True)
class Scale:
    """Desired replicas of the three Deployments of a search."""

    controller: int
    profilers: int
    trainers: int


def desired_scale(phase: str, spec: Mapping[str, Any], *, queued: int, running: int, table_complete: bool) -> Scale:
    """Profilers run while the latency table fills, then 0; trainers run at min(maxReplicas, queued + running);
    everything is 0 once the search has ended.

    Args:
        phase: the search's phase (``SearchStatus.phase``).
        spec: the NASSearch spec with defaults.
        queued, running: candidates waiting for a trainer and candidates being trained.
        table_complete: True once every layer latency the tiers need is measured.
    """
    if phase in TERMINAL_PHASES:
        return Scale(controller=0, profilers=0, trainers=0)
    profilers = int(spec.get("profilers", {}).get("replicas", 1)) if phase in PROFILING_PHASES and not table_complete else 0
    trainers = min(int(spec.get("trainers", {}).get("maxReplicas", 1)), max(0, queued) + max(0, running))
    return Scale(controller=1, profilers=profilers, trainers=trainers)
