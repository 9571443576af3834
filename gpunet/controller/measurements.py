"""The end-to-end measurements of phase Finalizing as ``finalizing.json`` keeps them (read by the result files).

``<state>/finalizing.json`` (:data:`FINALIZING_FORMAT`): ``{"format", "steps_done": [step names], "networks":
[NetworkJob fields]}``, written atomically by :class:`gpunet.controller.finalizing.FinalizingStage`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FINALIZING_FILE = "finalizing.json"
FINALIZING_FORMAT = "gpunet-finalizing/v1"


@dataclass
class NetworkJob:
    """One end-to-end measurement: a network of tier ``tier`` (its best, one of stage 2's top-k, a family member at
    ``len(tiers) + j``) or baseline ``j`` (``tier`` = ``-1 - j``), ``candidate_id`` the candidate whose network it is.

    ``result`` (once measured): ``{"latency_ms", "spread_ms", "runs", "backend", "backend_version", "device",
    "precision", "batch_size", "worker_id", "measured_unix_s"}``; ``error`` the last error, and ``given_up`` set
    when no more tries are made.
    """

    id: str
    tier: int
    candidate_id: str
    architecture: dict[str, Any]
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: str = ""
    given_up: bool = False

    @property
    def done(self) -> bool:
        return self.result is not None or self.given_up

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetworkJob":
        """A job as ``finalizing.json`` holds it (unknown keys are ignored; TypeError/KeyError if one is missing)."""
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data})


def read_progress(state_dir: str | Path) -> dict[str, Any]:
    """``finalizing.json`` of a state directory; empty when there is none or it is not ours (logged)."""
    path = Path(state_dir) / FINALIZING_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); phase Finalizing starts over", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != FINALIZING_FORMAT:
        log.warning("%s is not a %s file; phase Finalizing starts over", path, FINALIZING_FORMAT)
        return {}
    return data


def read_network_measurements(state_dir: str | Path) -> dict[str, NetworkJob]:
    """The end-to-end measurements of a state directory's ``finalizing.json``, by candidate id; empty when there is
    none."""
    try:
        jobs = [NetworkJob.from_dict(j) for j in read_progress(state_dir).get("networks", [])]
    except (TypeError, KeyError, AttributeError) as exc:
        log.warning("%s holds a malformed measurement (%s); ignored", Path(state_dir) / FINALIZING_FILE, exc)
        return {}
    return {job.candidate_id: job for job in jobs}
