"""The controller's persistent state: candidates, counters, phase.

Files in the state directory (the shared volume on Kubernetes, ``--out`` under ``gpunet run``):

- ``state.sqlite``: this module's :class:`ControllerState` in SQLite (WAL, through :mod:`gpunet.sqlite`): one row
  per candidate and one for the rest. Every change that matters is one transaction touching only the changed rows,
  so a save costs the same with 10 or 10,000 candidates. Saves are group-committed (:class:`~gpunet.sqlite.GroupCommit`):
  the saves of concurrent RPCs share one transaction, and an RPC is answered only once its save is committed.
  Commits survive a killed process (``synchronous=NORMAL`` in WAL mode: no fsync per commit, so a power cut may
  roll back the last commits, never corrupt the file). A file that is not ours, or is corrupt, is refused and left
  untouched.
- ``state.json``: a readable export of the same, written when the controller stops.
- ``stratification.json``: the latency-tier pools (written once, after stratification).
- ``searchers/tier-<t>-v<k>.json``: snapshots of each tier's searcher; the state names the current one, so a
  crash between the two writes leaves a consistent pair.
- ``latency.sqlite``: the latency table (:class:`gpunet.latency.LatencyTable`, written only by the controller).
- ``checkpoints/<candidate>/<lease>.pt``: trainers' epoch checkpoints (paths checked by :mod:`.paths`).
- ``owner.lock``: held by the one process that owns the directory (:mod:`.lock`).

JSON files are written atomically (:mod:`gpunet.fileio`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..rpc import PHASES, pb, phase_name
from ..sqlite import CHECKPOINT_PERIOD_S, Checkpointer, CommitFailed, FileFormat, GroupCommit, open_database
from .errors import StateFileError

STATE_FORMAT = "gpunet-controller-state/v1"
#: Candidate states (SearchStatus / CandidateRecord.state).
QUEUED, RUNNING, COMPLETED, STOPPED, FAILED = "queued", "running", "completed", "stopped", "failed"
CANDIDATE_STATES = (QUEUED, RUNNING, COMPLETED, STOPPED, FAILED)
#: States with a result (top-1) that the searcher has seen.
FINISHED = (COMPLETED, STOPPED)
#: Search phases as the state stores them: the names of ``pb.SearchPhase`` (:func:`gpunet.rpc.phase_name`), so that
#: state files stay readable across proto changes.
PHASE_PENDING, PHASE_PROFILING, PHASE_STRATIFYING, PHASE_SEARCHING, PHASE_SCALING, PHASE_SUCCEEDED, PHASE_FAILED = (
    phase_name(v) for v in (pb.SEARCH_PHASE_PENDING, pb.SEARCH_PHASE_PROFILING, pb.SEARCH_PHASE_STRATIFYING,
                            pb.SEARCH_PHASE_SEARCHING, pb.SEARCH_PHASE_SCALING, pb.SEARCH_PHASE_SUCCEEDED,
                            pb.SEARCH_PHASE_FAILED))
#: Events kept per candidate.
MAX_EVENTS = 20


@dataclass
class Candidate:
    """One proposed network of a latency tier and its training history.

    ``history[e - 1]`` is the validation top-1 (a fraction) after epoch ``e`` of the current training run;
    ``checkpoint`` is the last complete epoch checkpoint (``epoch`` epochs done), the resume point of the next
    lease. ``lease_id`` and ``worker_id`` name the current (running) or last lease; its deadline lives in the
    controller's :class:`~gpunet.controller.leases.LeaseBook`.
    """

    id: str
    tier: int
    trial_id: int
    vector: list[int]
    latency_ms: float
    state: str = QUEUED
    created: float = 0.0
    finished: float = 0.0
    attempts: int = 0
    failures: int = 0
    preemptions: int = 0
    lease_expiries: int = 0
    restarts_from_scratch: int = 0
    lease_id: str = ""
    worker_id: str = ""
    #: When the current lease was granted (seconds since the Unix epoch); a release naming an earlier failure
    #: (``ReleaseRequest.granted_before_unix_s``) leaves a lease granted after it alone.
    lease_granted: float = 0.0
    checkpoint: str = ""
    epoch: int = 0
    history: list[float] = field(default_factory=list)
    top1: float | None = None
    stop_requested: bool = False
    told: bool = False
    requeued_at: float = 0.0
    #: The error of the last failed attempt (a failed release's message, or the lease expiry); a ``failed``
    #: candidate failed with it.
    error: str = ""
    events: list[str] = field(default_factory=list)
    #: Phase Scaling only: the scaled network (our architecture JSON); ``vector`` is empty, as a scaled network
    #: lies outside the search space.
    architecture: dict[str, Any] | None = None
    #: Phase Scaling only: ``{"target_ms", "depth_mult", "width_mult", "resolution_mult"}`` of the family member.
    scaling: dict[str, Any] | None = None
    #: Stage 2 only (phase Finalizing, :mod:`.stage2`): ``{"kind": "winner", "source_id", "rank", "init"}`` for a
    #: tier winner trained again (``tier`` is its tier), ``{"kind": "baseline", "model", "index"}`` for a baseline
    #: (``tier`` -1, ``architecture`` a :class:`gpunet.baselines.TimmNetwork`).
    final: dict[str, Any] | None = None
    #: The training of this candidate (``TrainingSpec.to_dict()``) when it is not the search's (stage 2).
    training: dict[str, Any] | None = None
    #: Stage 2 only: top-1 (a fraction) of the trained network on the test split, as its trainer reported it.
    top1_test: float | None = None

    def note(self, event: str) -> None:
        self.events = (self.events + [event])[-MAX_EVENTS:]

    @property
    def best_top1(self) -> float:
        if self.top1 is not None:
            return self.top1
        return max(self.history, default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (what ``dataclasses.asdict`` gives, at a fraction of its cost: every changed candidate
        is serialised on each save, and ``asdict``'s recursive deep copy was the controller's largest cost under
        load)."""
        data = {name: getattr(self, name) for name in _CANDIDATE_FIELDS}
        for name in ("vector", "history", "events"):
            data[name] = list(data[name])
        for name in ("architecture", "scaling", "final", "training"):
            if data[name] is not None:
                data[name] = copy.deepcopy(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_CANDIDATE_FIELDS = tuple(f.name for f in dataclasses.fields(Candidate))


def is_baseline(cand: Candidate) -> bool:
    """A baseline of stage 2 (a timm model, outside every tier)."""
    return bool(cand.final) and cand.final.get("kind") == "baseline"


def target_ms_of(spec: Any, cand: Candidate) -> float:
    """The latency target in ms of a candidate: its tier's (``spec.tier_targets``) or its family target's; NaN
    for a baseline (it has none)."""
    if is_baseline(cand):
        return math.nan
    return float(cand.scaling["target_ms"]) if cand.scaling else float(spec.tier_targets[cand.tier])


def architecture_of(space: Any, cand: Candidate) -> Any:
    """The network of a candidate: its vector decoded in ``space`` (an :class:`~gpunet.arch.Architecture`), its
    scaled network, or a baseline's :class:`~gpunet.baselines.TimmNetwork`."""
    from ..baselines import network_from_dict

    return network_from_dict(cand.architecture) if cand.architecture else space.decode(cand.vector)


def score_of(spec: Any, cand: Candidate, top1: float | None = None) -> float:
    """What the search maximises for a candidate with top-1 ``top1`` (default: its best,
    :func:`gpunet.objectives.search_score`): top-1 in a tiered search, the MnasNet reward against its target with
    objective ``mnas`` and in the Scaling phase."""
    from ..objectives import search_score

    algorithm = spec.algorithm
    if cand.scaling:  # the family is selected by the mnas reward against each member's target
        algorithm = dataclasses.replace(algorithm, objective="mnas")
    return search_score(algorithm, cand.best_top1 if top1 is None else top1, cand.latency_ms, target_ms_of(spec, cand))


@dataclass
class ControllerState:
    """Everything the controller must not lose (see the module docstring for the other files)."""

    name: str
    #: A name of :data:`gpunet.rpc.PHASES`.
    phase: str = PHASE_PENDING
    message: str = ""
    started: float = 0.0
    updated: float = 0.0
    #: The latency target (``LatencyTarget.to_dict()``), known once a profiler has told its device.
    target: dict[str, Any] | None = None
    #: Layer keys (digests) that profilers could not measure; networks containing them are left out.
    unmeasurable: list[str] = field(default_factory=list)
    candidates: dict[str, Candidate] = field(default_factory=dict)
    #: Next candidate number per tier.
    next_number: list[int] = field(default_factory=list)
    #: Current searcher snapshot version per tier (file ``searchers/tier-<t>-v<k>.json``); 0 = none yet.
    searcher_versions: list[int] = field(default_factory=list)
    preemptions: int = 0
    lease_expiries: int = 0
    failures: int = 0
    duplicate_reports: int = 0
    next_lease: int = 0
    spec_digest: str = ""
    #: The phase the search was in when it failed (what a resume goes back to); empty while it has not failed.
    failed_phase: str = ""
    #: The id of the last resume of a failed search (``ResumeRequest.resume_id``): a resume asked twice is done once.
    resume_id: str = ""

    def header(self) -> dict[str, Any]:
        """Everything but the candidates, as JSON-ready data."""
        return {"format": STATE_FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "candidates"}}

    def to_dict(self) -> dict[str, Any]:
        return {**self.header(), "candidates": [c.to_dict() for c in self.candidates.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ControllerState":
        if data.get("format") != STATE_FORMAT:
            raise StateFileError("controller state format", data.get("format"), repr(STATE_FORMAT))
        names = {f.name for f in dataclasses.fields(cls)} - {"candidates"}
        state = cls(**{k: v for k, v in data.items() if k in names})
        if state.phase not in PHASES:  # say so now, not mid-search
            raise StateFileError("controller state phase", state.phase, PHASES)
        state.candidates = {c["id"]: Candidate.from_dict(c) for c in data.get("candidates", [])}
        return state

    @classmethod
    def load(cls, state_dir: str | Path) -> "ControllerState":
        """Read the state of ``state_dir`` (its ``state.sqlite``; safe while a controller is writing it)."""
        store = StateStore(Path(state_dir) / STATE_FILE, readonly=True)
        try:
            return store.load()
        finally:
            store.close()


STATE_FILE = "state.sqlite"
#: ``state.sqlite``'s format. Files of the first version carry no ``format`` row; their ``state`` row says it.
FILE_FORMAT = FileFormat(
    STATE_FORMAT, 1, tables=("candidates",), schema="CREATE TABLE candidates (id TEXT PRIMARY KEY, data TEXT NOT NULL)",
    meta_key="key", legacy=lambda conn: _header_format(conn) == STATE_FORMAT)


def _header_format(conn: sqlite3.Connection) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    try:
        return json.loads(row[0]).get("format") if row else None
    except (ValueError, AttributeError):
        return None


class StateStore:
    """The SQLite file behind :class:`ControllerState`; thread-safe.

    Writes go through a :class:`~gpunet.sqlite.GroupCommit`: :meth:`save` stages the header and the changed
    candidates and returns a ticket; :meth:`wait` commits it (unless a flush already did), and :meth:`save` with
    ``wait=True`` does both. Many RPCs' saves share one transaction.

    Raises:
        StateFileError: the file is not a controller state (another application's, corrupt, a newer format).
        FileNotFoundError: ``readonly`` and no state has been written yet.
    """

    def __init__(self, path: str | Path, readonly: bool = False,
                 checkpoint_period_s: float | None = CHECKPOINT_PERIOD_S) -> None:
        self.path = Path(path)
        conn = open_database(
            self.path, FILE_FORMAT, readonly=readonly,
            error=lambda p, reason: StateFileError(str(p), reason=reason),
            missing=lambda p, reason: FileNotFoundError(f"{p}: no controller state here ({reason})"))
        self._conn = conn
        self.commits: GroupCommit | None = None if readonly else GroupCommit(conn)
        self._lock = self.commits.lock if self.commits is not None else threading.Lock()
        #: Runs the WAL checkpoints off the committing thread (the controller's event loop); None when read-only.
        self.checkpointer = None if readonly else Checkpointer(self.path, conn, self._lock, checkpoint_period_s)

    def exists(self) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM meta WHERE key = 'state'").fetchone()
        return row is not None

    def save(self, state: ControllerState, candidates: Iterable[Candidate] = (), wait: bool = True) -> int:
        """Stage the header and the given (changed) candidates for one transaction; returns the ticket.

        Args:
            wait: block until the ticket is committed (else call :meth:`wait` before relying on it).

        Raises:
            gpunet.sqlite.CommitFailed: ``wait`` and the commit failed (the writes are retried in the next batch).
        """
        writes: dict[Any, Any] = {("candidate", c.id): (_PUT_CANDIDATE, (c.id, json.dumps(c.to_dict(), separators=(",", ":"))))
                                  for c in candidates}
        writes["header"] = (_PUT_HEADER, (json.dumps(state.header(), separators=(",", ":")),))
        assert self.commits is not None, "a read-only state store cannot save"
        ticket = self.commits.stage(writes)
        if wait:
            self.commits.flush(ticket)
        return ticket

    def wait(self, ticket: int) -> None:
        """Make ``ticket`` (of :meth:`save`) durable: commit it, unless a flush already did.

        Raises:
            gpunet.sqlite.CommitFailed: its batch failed.
        """
        assert self.commits is not None
        self.commits.flush(ticket)

    def load(self) -> ControllerState:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
            if row is None:
                raise FileNotFoundError(f"{self.path}: no controller state saved yet")
            cands = [json.loads(r[0]) for r in self._conn.execute("SELECT data FROM candidates ORDER BY rowid")]
        return ControllerState.from_dict({**json.loads(row[0]), "candidates": cands})

    def close(self) -> None:
        """Commit what is staged and close the file. A commit that fails here (a full disk) is logged: the file
        keeps its last commit, from which a restart resumes."""
        try:
            if self.checkpointer is not None:
                self.checkpointer.close()
            if self.commits is not None:
                self.commits.close()
        except CommitFailed as exc:
            logging.getLogger(__name__).warning("%s: the last writes were not committed on close (%s)", self.path, exc)
        finally:
            with self._lock:
                self._conn.close()


_PUT_HEADER = "INSERT OR REPLACE INTO meta VALUES ('state', ?)"
_PUT_CANDIDATE = "INSERT OR REPLACE INTO candidates VALUES (?, ?)"
