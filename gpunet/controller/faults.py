"""Transient faults of the controller: the driver's retry policy (tenacity) and the ``Degraded`` condition.

A transient error (:func:`~.errors.is_transient`: a locked or full SQLite database, an I/O error, a searcher's
numerical failure) does not end the search. The driver's round is retried with exponential backoff
(:data:`RETRY_WAIT_MIN_S` doubling up to :data:`RETRY_WAIT_MAX_S`, for as long as it takes), every retry is logged,
and the status says *degraded* (``SearchStatus.degraded``; the operator mirrors it as the ``Degraded`` condition of
the ``NASSearch``) until a round succeeds again with every change saved. A state write that fails in an RPC is
answered ``UNAVAILABLE`` (the worker retries) and marks the search degraded the same way. Any other error is
permanent: the search fails, with a message that says what to do.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import tenacity

from ..rpc import pb
from .errors import is_transient

log = logging.getLogger(__name__)

#: First wait of the driver after a transient error, in seconds; it doubles per retry up to :data:`RETRY_WAIT_MAX_S`.
RETRY_WAIT_MIN_S = 0.5
#: Longest wait between two retries of the driver, in seconds.
RETRY_WAIT_MAX_S = 60.0


@dataclass
class Degraded:
    """Why the search is degraded: the last transient error, where it happened, since when and how often."""

    reason: str
    message: str
    since: float
    errors: int = 1

    def to_pb(self) -> pb.Degraded:
        return pb.Degraded(reason=self.reason, message=self.message, since_unix_s=self.since, errors=self.errors)


class Faults:
    """The transient faults of one controller (thread-safe).

    Args:
        clock: seconds since the Unix epoch.
        wait_min_s: first backoff of the driver, in seconds.
        wait_max_s: longest backoff of the driver, in seconds.
    """

    def __init__(self, clock: Callable[[], float], wait_min_s: float = RETRY_WAIT_MIN_S,
                 wait_max_s: float = RETRY_WAIT_MAX_S) -> None:
        self.clock = clock
        self.wait_min_s, self.wait_max_s = float(wait_min_s), float(wait_max_s)
        self._lock = threading.Lock()
        self.degraded: Degraded | None = None

    def note(self, where: str, exc: BaseException) -> None:
        """Record a transient error ``exc`` of ``where`` (e.g. ``"driver"``, ``"state.sqlite"``): degraded."""
        message = f"{where}: {type(exc).__name__}: {exc}"
        with self._lock:
            if self.degraded is None:
                log.warning("search degraded: %s; retrying", message)
                self.degraded = Degraded(type(exc).__name__, message, self.clock())
            else:
                self.degraded.reason, self.degraded.message = type(exc).__name__, message
                self.degraded.errors += 1

    def clear(self) -> None:
        """The work that failed has now succeeded: no longer degraded."""
        with self._lock:
            if self.degraded is not None:
                log.info("search recovered after %d transient errors (since %.0f)", self.degraded.errors,
                         self.degraded.since)
            self.degraded = None

    def to_pb(self) -> pb.Degraded | None:
        with self._lock:
            return self.degraded.to_pb() if self.degraded is not None else None

    def retrying(self, stop: threading.Event) -> tenacity.Retrying:
        """The driver's retry policy: transient errors only, exponential backoff, until ``stop`` is set (then the
        last error is raised); the wait is cut short by ``stop``."""

        def before_sleep(retry_state: tenacity.RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
            if exc is not None:
                self.note("driver", exc)
                log.warning("controller driver: transient %s: %s; retry %d in %.1f s", type(exc).__name__, exc,
                            retry_state.attempt_number, retry_state.upcoming_sleep)

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=tenacity.wait_exponential(multiplier=self.wait_min_s, min=self.wait_min_s, max=self.wait_max_s),
            stop=tenacity.stop_when_event_set(stop),
            sleep=stop.wait, before_sleep=before_sleep, reraise=True)
