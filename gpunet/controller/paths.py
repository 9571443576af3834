"""Checkpoint paths: the controller derives them, checks every path a worker sends, and deletes only its own.

A trainer writes the epoch checkpoints of candidate ``c`` under lease ``L`` to ``<root>/checkpoints/<c>/<L>.pt``,
the path its assignment names (:meth:`CheckpointPaths.assigned`). Reports name the checkpoint they wrote; such a
path is trusted only when it resolves (symlinks followed, ``..`` collapsed) into that candidate's own folder
``<root>/checkpoints/<c>/``. Anything else is refused with :class:`~.errors.InvalidRequestError` (gRPC
``INVALID_ARGUMENT``), so that no worker can make the controller hand another trainer, or its own export, a file
elsewhere, nor make it delete one: deletion resolves the path again, right before the unlink, and never follows a
symlink in the last component (``unlink`` removes the link, not its target).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import require

log = logging.getLogger(__name__)

#: The folder of the state root that holds every candidate's checkpoints.
CHECKPOINTS = "checkpoints"


class CheckpointPaths:
    """The checkpoint paths of one state root.

    Args:
        root: the controller's state directory (resolved here, so a symlinked root is fine).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.base = self.root / CHECKPOINTS

    def folder(self, candidate_id: str) -> Path:
        """``<root>/checkpoints/<candidate_id>`` (candidate ids are the controller's own, e.g. ``t0-c0007``)."""
        return self.base / candidate_id

    def assigned(self, candidate_id: str, lease_id: str) -> str:
        """The path a trainer under ``lease_id`` writes its epoch checkpoints to."""
        return str(self.folder(candidate_id) / f"{lease_id}.pt")

    def inside(self, path: str | Path, candidate_id: str) -> Path | None:
        """``path`` resolved, when it lies in the candidate's folder; None otherwise (also for a relative path)."""
        p = Path(path)
        if not p.is_absolute():
            return None
        try:
            resolved = p.resolve()
            folder = self.folder(candidate_id).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return None
        if folder.parent != self.base or folder not in resolved.parents:
            return None  # the candidate's folder (or checkpoints/ itself) was made a symlink out of the root
        return resolved

    def check(self, field: str, path: str, candidate_id: str) -> str:
        """A checkpoint path of a worker's report, resolved; ``""`` stays ``""``.

        Raises:
            InvalidRequestError: ``path`` resolves outside ``<root>/checkpoints/<candidate_id>/``.
        """
        if not path:
            return ""
        require(len(path) <= 4096, field, path[:80] + "...", "at most 4096 characters")
        resolved = self.inside(path, candidate_id)
        require(resolved is not None, field, path, f"a file in {self.folder(candidate_id)}/",
                reason="checkpoints live in the candidate's folder of the controller's state directory")
        return str(resolved)

    def delete(self, path: str, candidate_id: str) -> bool:
        """Delete an old checkpoint of a candidate, if it (still) lies in the candidate's folder; True if deleted."""
        resolved = self.inside(path, candidate_id)
        if resolved is None:
            log.warning("not deleting checkpoint %s: outside %s", path, self.folder(candidate_id))
            return False
        try:
            os.unlink(resolved)
        except FileNotFoundError:
            return False
        return True
