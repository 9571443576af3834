"""Domain errors of the search controller and their gRPC status codes: the one place where the mapping lives.

Every error here is a :class:`gpunet.errors.GpunetError` with its one message format
(``<field>: got <value>; <reason>; expected <expected>``). The controller's core raises these (and library errors
of the engine); :func:`grpc_status` turns any exception into a status code and a message for the servicer, which
aborts the call with it.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from typing import Any, Sequence

import grpc

from ..errors import NO_VALUE, GpunetError
from ..sqlite import CommitFailed


class ControllerError(GpunetError):
    """Base class of the controller's domain errors."""


class InvalidRequestError(ControllerError, ValueError):
    """A malformed request: a missing field, a value out of range, an unparsable layer key."""


class UnknownWorkError(ControllerError, KeyError):
    """A report about a candidate or profiling batch the search has never handed out."""


class UnauthenticatedError(ControllerError):
    """A missing or wrong token."""

    def __init__(self, field: str = "authorization", value: Any = NO_VALUE, expected: Sequence[Any] | str | None = None,
                 *, reason: str | None = "missing or wrong token") -> None:
        super().__init__(field, value, expected, reason=reason)


class NotReadyError(ControllerError):
    """The controller cannot answer yet (still loading its state)."""

    def __init__(self, field: str = "controller", value: Any = NO_VALUE, expected: Sequence[Any] | str | None = None,
                 *, reason: str | None = "not ready yet; retry") -> None:
        super().__init__(field, value, expected, reason=reason)


class ConfigError(ControllerError, ValueError):
    """A controller setting that cannot work (e.g. an empty token)."""


class WorkersCrashedError(ControllerError, RuntimeError):
    """Every local worker process of a ``gpunet run`` crashed more often than it is restarted."""


class WorkerCannotStartError(ControllerError, RuntimeError):
    """A local worker process cannot work on this machine (its device, latency backend or dataset is missing)."""


class StateFileError(ControllerError):
    """A controller state file that cannot be used (not ours, corrupt, a newer format); it is left untouched."""


class TransientError(ControllerError, RuntimeError):
    """An error that trying again later can cure (see :func:`is_transient`), e.g. a searcher process's failed fit."""


#: SQLite primary result codes of a transient failure: busy or locked by another connection, an I/O error, a full
#: disk, out of memory (https://www.sqlite.org/rescode.html).
TRANSIENT_SQLITE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
                                    sqlite3.SQLITE_NOMEM})
#: ``errno`` values of a transient I/O failure (a full disk or quota, an I/O error, a busy or stale NFS file).
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.EINTR,
                              errno.ETIMEDOUT, errno.ESTALE, errno.ENOMEM, errno.ENOBUFS})


def _numerical_errors() -> tuple[type, ...]:
    """Classes of a model fit's numerical failure, of the libraries already imported (torch is never imported here)."""
    from ..search.gp import GPFitError

    import numpy as np

    kinds: list[type] = [GPFitError, np.linalg.LinAlgError, FloatingPointError]
    if "torch" in sys.modules:
        kinds.append(sys.modules["torch"].linalg.LinAlgError)
    for module, name in (("linear_operator.utils.errors", "NotPSDError"), ("botorch.exceptions.errors", "ModelFittingError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return tuple(kinds)


def is_transient(exc: BaseException) -> bool:
    """True for an error that retrying can cure, the rest being permanent (a bug or bad input fails the search).

    Transient: :class:`TransientError`; a SQLite error of :data:`TRANSIENT_SQLITE_CODES` (a locked database, a
    disk I/O error, a full disk); an ``OSError`` of :data:`TRANSIENT_ERRNOS`; a searcher's numerical failure
    (:class:`~gpunet.search.gp.GPFitError`, a linear-algebra error of numpy or torch, BoTorch's ``NotPSDError``
    and ``ModelFittingError``). An exception raised ``from`` a transient one is transient too.
    """
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, TransientError):
            return True
        if isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in TRANSIENT_SQLITE_CODES:
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        if isinstance(exc, _numerical_errors()):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


#: Longest worker, candidate, batch or lease id accepted (a Kubernetes object name's limit).
MAX_ID_LENGTH = 253


def require(ok: bool, field: str, value: Any = NO_VALUE, expected: Sequence[Any] | str | None = None, *,
            reason: str | None = None) -> None:
    """Raise :class:`InvalidRequestError` for ``field`` unless ``ok``."""
    if not ok:
        raise InvalidRequestError(field, value, expected, reason=reason)


def check_id(value: str, field: str) -> None:
    """A request's id field: present and at most :data:`MAX_ID_LENGTH` characters, else InvalidRequestError."""
    require(bool(value), field, reason="required")
    require(len(value) <= MAX_ID_LENGTH, field, value[:40] + "...", f"at most {MAX_ID_LENGTH} characters")


def caused_by_input(exc: BaseException) -> bool:
    """True for an error of bad input: a :class:`GpunetError` that is also a ``ValueError`` (the engine's convention,
    e.g. :class:`InvalidRequestError`, :class:`~gpunet.errors.SpaceError` and spec errors), or a bad layer key."""
    from ..latency.errors import LatencyError

    return isinstance(exc, ValueError) and isinstance(exc, (GpunetError, LatencyError))


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message of an exception raised while serving a call.

    ``UnauthenticatedError`` -> UNAUTHENTICATED; ``UnknownWorkError`` -> NOT_FOUND; ``NotReadyError``, a transient
    error (:func:`is_transient`: a locked database, a full disk) and :class:`gpunet.sqlite.CommitFailed` ->
    UNAVAILABLE, which clients retry with backoff;
    any other error caused by input (:func:`caused_by_input`) -> INVALID_ARGUMENT; anything else -> INTERNAL.
    """
    if isinstance(exc, UnauthenticatedError):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    if isinstance(exc, UnknownWorkError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, NotReadyError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if is_transient(exc):
        return grpc.StatusCode.UNAVAILABLE, f"transient: {type(exc).__name__}: {exc}; retry later"
    if isinstance(exc, CommitFailed):  # the state could not be written now; the change is retried, so may the call
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if caused_by_input(exc):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
