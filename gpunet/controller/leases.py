"""Leases: which worker holds which piece of work, and until when (GPUNet paper 3.3.3: clients on preemptible nodes).

One :class:`LeaseBook` holds every lease of a search, for trainers' candidates and profilers' layer batches alike:
at most one lease per worker and one per piece of work. A lease is renewed by the worker's reports and repeated
work requests, expires at its deadline, and is released when the work is reported or given back. What then happens
to the work (re-queue, count a preemption or a failure) is the caller's business: the book knows leases, not
candidates or batches.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable

#: What a lease is for: a candidate to train, or a batch of layers to profile.
CANDIDATE, BATCH = "candidate", "batch"


@dataclass
class Lease:
    """One piece of work handed to one worker.

    Attributes:
        id: unique in the search (:func:`new_lease_id`); every report about the work must carry it.
        worker_id: the holder.
        kind: :data:`CANDIDATE` or :data:`BATCH`.
        work_id: the candidate id or the batch id.
        deadline: the lease expires at this time (seconds since the Unix epoch) unless renewed.
    """

    id: str
    worker_id: str
    kind: str
    work_id: str
    deadline: float


def new_lease_id(number: int) -> str:
    """A lease id: a running number of the search (kept in its state) and 8 random hex digits, e.g. ``"L12-3fa9c01b"``.

    The random part keeps ids unique even if the number repeats (state restored from an older copy)."""
    return f"L{number}-{uuid.uuid4().hex[:8]}"


class LeaseBook:
    """The leases of one search. Not thread-safe: the controller calls it with its lock held.

    In memory only. A candidate's lease lives on in its record (``lease_id``, ``worker_id``) and is granted again,
    with a fresh deadline, when the controller restarts; a batch's lease dies with the process (batches are planned
    again from the latency table).

    Args:
        duration_s: lease duration in seconds: a worker must renew its lease at least this often.
        next_number: gives the running number of the next new lease id (the controller keeps it in its state, so
            that ids stay unique across restarts).
    """

    def __init__(self, duration_s: float, next_number: Callable[[], int]) -> None:
        self.duration_s = float(duration_s)
        self._next_number = next_number
        self._by_worker: dict[str, Lease] = {}
        self._by_work: dict[tuple[str, str], Lease] = {}
        # A lower bound of every deadline in the book: :meth:`expired` skips its walk of every lease while ``now``
        # has not passed it. Grants and renewals lower it to their deadline; a release leaves it a lower bound.
        self._earliest = float("inf")

    def grant(self, kind: str, work_id: str, worker_id: str, now: float, lease_id: str | None = None) -> Lease:
        """Lease ``work_id`` to ``worker_id`` until ``now + duration_s``, under a new id unless ``lease_id`` is given
        (a lease that survived a restart); replaces any lease either of them had."""
        for old in (self._by_worker.get(worker_id), self._by_work.get((kind, work_id))):
            if old is not None:
                self.release(old)
        lease = Lease(lease_id or new_lease_id(self._next_number()), worker_id, kind, work_id, now + self.duration_s)
        self._by_worker[worker_id] = self._by_work[(kind, work_id)] = lease
        self._earliest = min(self._earliest, lease.deadline)
        return lease

    def held_by(self, worker_id: str) -> Lease | None:
        """The lease ``worker_id`` holds, if any."""
        return self._by_worker.get(worker_id)

    def of(self, kind: str, work_id: str) -> Lease | None:
        """The lease on a piece of work, if it is leased."""
        return self._by_work.get((kind, work_id))

    def renew(self, lease: Lease, now: float) -> float:
        """Move the deadline to ``now + duration_s``; returns it."""
        lease.deadline = now + self.duration_s
        self._earliest = min(self._earliest, lease.deadline)  # a clock that went back can lower a deadline
        return lease.deadline

    def release(self, lease: Lease) -> None:
        """Take a lease back (a no-op for one already gone)."""
        if self._by_worker.get(lease.worker_id) is lease:
            del self._by_worker[lease.worker_id]
        if self._by_work.get((lease.kind, lease.work_id)) is lease:
            del self._by_work[(lease.kind, lease.work_id)]

    def expired(self, now: float) -> list[Lease]:
        """The leases whose deadline is before ``now``, in the order they were granted (they stay in the book).

        O(1) while no deadline can have passed; else a walk of every lease (the driver asks every round: at 1,000
        running candidates the walk was a few percent of the controller's CPU, with its lock held)."""
        if now <= self._earliest:
            return []
        leases = list(self._by_work.values())
        self._earliest = min((lease.deadline for lease in leases), default=float("inf"))
        return [lease for lease in leases if lease.deadline < now]

    def count(self, kind: str) -> int:
        """Number of leases of one kind."""
        return sum(1 for k, _ in self._by_work if k == kind)

    def __len__(self) -> int:
        return len(self._by_work)


class Roster:
    """When each worker was last heard from, and whether it trains or profiles (``pb.WorkerKind``).

    Workers are kept in the order they were last heard from, so :meth:`active` only drops those that fell out of
    the window since the last count: O(1) per call amortised, where a walk over every worker cost milliseconds per
    driver round at thousands of workers. The clock is taken to move forwards (a step back only delays expiry).

    Args:
        window_s: a worker heard from less than this long ago is active (the controller uses two lease durations).
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = float(window_s)
        self._seen: dict[str, tuple[float, int]] = {}  # oldest sighting first; only workers not yet out of the window
        self._counts: Counter[int] = Counter()  # of ``_seen`` by kind

    def saw(self, worker_id: str, kind: int, now: float) -> None:
        old = self._seen.pop(worker_id, None)
        if old is not None:
            self._counts[old[1]] -= 1
        self._seen[worker_id] = (now, kind)
        self._counts[kind] += 1

    def active(self, now: float, kind: int | None = None) -> int:
        """Number of active workers (of one kind, when given)."""
        while self._seen:
            worker_id, (seen, k) = next(iter(self._seen.items()))
            if now - seen < self.window_s:
                break
            del self._seen[worker_id]
            self._counts[k] -= 1
        return len(self._seen) if kind is None else self._counts[kind]
