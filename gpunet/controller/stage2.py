"""Stage 2, a step of phase Finalizing: the tier winners trained again, and the baselines trained next to them.

The GPUNet paper ranks candidates with a short pre-training and then trains the top network for much longer (4.1);
Vertex AI NAS likewise follows its proxy-task search with a full training of the best trials. Here:

- **Winners** (``spec.training.final.epochs`` > 0): each tier's ``final.topK`` best candidates by the search's
  validation score (:func:`~.state.score_of`, as ``hub.json`` selects) become new candidates ``f<t>-<id>`` (tier
  ``t``, ``Candidate.final = {"kind": "winner", "source_id", "rank", "init"}``), trained with
  :meth:`gpunet.spec.TrainingSpec.stage2` (``final.epochs`` epochs, the recipe with ``final.recipe``'s overrides, no
  early stopping). With ``final.init: checkpoint`` the search's last checkpoint is copied into the new candidate's
  folder and training resumes from it for ``final.epochs`` more epochs (a recipe override that changes the
  network's dropout rates makes the trainer start from scratch, and the candidate records why).
- **Baselines** (``spec.baselines``): each timm model becomes a candidate ``b<j>-<model>`` (tier -1, ``final =
  {"kind": "baseline", "model", "index"}``, ``architecture`` its :class:`gpunet.baselines.TimmNetwork`), trained
  with the same stage-2 training, from scratch, for the winners' whole budget: ``final.epochs`` (plus the search's
  ``epochs`` with ``init: checkpoint``; the search's ``epochs`` when stage 2 is off).

They are queued on the :class:`~.trainers.TrainerDesk` and trained under leases like every candidate: an expired
lease or a preemption re-queues them from their last epoch checkpoint. Their trainers evaluate the trained network
on the test split once (``TrainingAssignment.evaluate_test``; :func:`gpunet.train.test_top1`). The step is done
when every one of them is finished or failed. The plan lives in the state (the candidates), so a restarted
controller neither plans twice nor loses a run.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from typing import Any, Callable

from ..baselines import baseline_network
from .state import FAILED, FINISHED, Candidate, is_baseline, score_of

log = logging.getLogger(__name__)

#: The file name of a search checkpoint copied into a stage-2 candidate's folder (``final.init: checkpoint``).
SEARCH_CHECKPOINT = "search.pt"


def top_candidates(candidates: list[Candidate], tier: int, k: int, spec: Any) -> list[Candidate]:
    """The ``k`` best searched candidates of ``tier`` with a result, best first (ties: the lower id)."""
    done = [c for c in candidates if c.tier == tier and not c.final and c.state in FINISHED and c.top1 is not None]
    return sorted(done, key=lambda c: (-score_of(spec, c), c.id))[:k]


def baseline_id(index: int, model: str) -> str:
    """The candidate id of baseline ``index`` (``spec.baselines[index]``), e.g. ``b0-mobilenetv3_small_050``."""
    return f"b{index}-{re.sub(r'[^A-Za-z0-9_]+', '_', model)}"


def stage2_candidates(candidates: list[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c.final]


class FinalTraining:
    """The stage-2 step of :class:`~.finalizing.FinalizingStage` (see the module docstring).

    Args:
        stage: the :class:`~.finalizing.FinalizingStage` (its spec, state and lock; not imported here, as
            finalizing imports this module).
        desk: the :class:`~.trainers.TrainerDesk` the candidates are queued on.
        save: persists the state header and the given candidates (with the lock held).
    """

    name = "final-training"

    def __init__(self, stage: Any, desk: Any, save: Callable[..., None]) -> None:
        self.stage, self.desk, self.save = stage, desk, save

    @property
    def wanted(self) -> bool:
        """Whether the spec asks for stage 2 or baselines."""
        return bool(self.stage.spec.training.final.epochs or self.stage.spec.baselines)

    def members(self) -> list[Candidate]:
        return stage2_candidates(list(self.stage.state.candidates.values()))

    def plan(self, now: float) -> list[Candidate]:
        """Queue the winners and the baselines once (call with the lock held); returns the new candidates."""
        if not self.wanted or self.members():
            return []
        spec, state = self.stage.spec, self.stage.state
        final = spec.training.final
        candidates = sorted((c for c in state.candidates.values() if not c.final), key=lambda c: c.id)
        new: list[Candidate] = []
        if final.epochs:
            for t in range(len(spec.tier_targets)):
                for rank, src in enumerate(top_candidates(candidates, t, final.top_k, spec)):
                    new.append(self._winner(src, rank, now))
        space = spec.space()
        # The baselines get the winners' whole budget: with init checkpoint, the search's epochs and stage 2's.
        resumed = spec.training.epochs if final.epochs and final.init == "checkpoint" else 0
        training = spec.training.stage2(resumed).to_dict()
        for j, baseline in enumerate(spec.baselines):
            net = baseline_network(baseline, space)
            new.append(Candidate(
                id=baseline_id(j, baseline.model), tier=-1, trial_id=j, vector=[],
                latency_ms=math.nan, created=now, architecture=net.to_dict(),
                final={"kind": "baseline", "model": baseline.model, "index": j}, training=training))
        for cand in new:
            self.desk.add(cand)
        if new:
            self.save(*new)
            log.info("stage 2: %d winners and %d baselines queued for the trainers",
                     sum(not is_baseline(c) for c in new), sum(is_baseline(c) for c in new))
        return new

    def _winner(self, src: Candidate, rank: int, now: float) -> Candidate:
        """The stage-2 candidate of a searched one (its search checkpoint copied with ``final.init: checkpoint``)."""
        training = self.stage.spec.training
        cand = Candidate(id=f"f{src.tier}-{src.id}", tier=src.tier, trial_id=src.trial_id, vector=list(src.vector),
                         latency_ms=src.latency_ms, created=now, architecture=src.architecture,
                         final={"kind": "winner", "source_id": src.id, "rank": rank, "init": training.final.init})
        resumed = 0
        if training.final.init == "checkpoint" and src.checkpoint:
            folder = self.desk.paths.folder(cand.id)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                copy = folder / SEARCH_CHECKPOINT
                shutil.copyfile(src.checkpoint, copy)
                cand.checkpoint, cand.epoch, cand.history = str(copy.resolve()), src.epoch, list(src.history)
                resumed = src.epoch
            except OSError as exc:  # the run starts from scratch, and says why
                cand.note(f"{now:.0f}: search checkpoint {src.checkpoint[:200]} not copied ({exc}); from scratch")
        cand.training = training.stage2(resumed).to_dict()
        return cand

    def run(self, now: float) -> bool:
        with self.stage.lock:
            members = self.members()
            return all(c.state in (*FINISHED, FAILED) for c in members)

    def progress(self) -> str:
        members = self.members()
        done = sum(c.state in (*FINISHED, FAILED) for c in members)
        return f"stage 2: {done}/{len(members)} networks trained"
