"""Which candidate each latency tier reports: the best searched candidate per tier (:func:`best_per_tier`), the
Scaling phase's family (:func:`family_members`) and the stage-2 run a tier reports (:func:`stage2_winners`).
Phase Finalizing, phase Scaling, ``gpunet status`` and the result files (:mod:`.outputs`) all choose through these.
"""

from __future__ import annotations

from ..spec import SearchSpec
from .state import FINISHED, Candidate, score_of


def best_per_tier(candidates: list[Candidate], num_tiers: int, spec: SearchSpec | None = None,
                  first: int = 0) -> list[Candidate | None]:
    """The best searched candidate (stage 2's are left out) of each tier ``first .. first + num_tiers - 1`` (ties:
    the lower id), or None: the
    highest :func:`~.state.score_of` under ``spec`` (top-1 of a tiered search, the MnasNet reward with objective
    ``mnas`` and for a Scaling family), or the highest top-1 without ``spec``."""
    def score(c: Candidate) -> float:
        return score_of(spec, c) if spec is not None else (c.top1 or 0.0)

    out: list[Candidate | None] = []
    for t in range(first, first + num_tiers):
        done = [c for c in candidates if c.tier == t and c.state in FINISHED and c.top1 is not None and not c.final]
        out.append(min(done, key=lambda c: (-score(c), c.id)) if done else None)
    return out


def family_members(candidates: list[Candidate], spec: SearchSpec) -> list[Candidate | None]:
    """Phase Scaling's family: per ``spec.scaling.targetsMs`` target, the trained scaled network with the best
    MnasNet reward against it (tier index ``len(spec.tier_targets) + j``), or None."""
    return best_per_tier(candidates, len(spec.scaling.targets_ms), spec, first=len(spec.tier_targets))


def stage2_winners(candidates: list[Candidate], num_tiers: int) -> list[Candidate | None]:
    """Per tier, the stage-2 run (:mod:`.stage2`) that ``hub.json`` reports: of the tier's trained ``final.topK``
    runs, the highest validation top-1 (ties: the better search rank), or None (no stage 2, or every run failed)."""
    out: list[Candidate | None] = []
    for t in range(num_tiers):
        done = [c for c in candidates if c.final and c.final.get("kind") == "winner" and c.tier == t
                and c.state in FINISHED and c.top1 is not None]
        out.append(min(done, key=lambda c: (-(c.top1 or 0.0), c.final.get("rank", 0), c.id)) if done else None)
    return out
