"""Domain errors of the search controller and their gRPC status codes: the one place where the mapping lives.

The controller's core raises these (and library errors of the engine); :func:`grpc_status` turns any of them
into a status code and a message for the servicer, which aborts the call with it.
"""

from __future__ import annotations

import grpc

from ..errors import SpaceError


class ControllerError(Exception):
    """Base class of the controller's domain errors."""


class InvalidRequestError(ControllerError, ValueError):
    """A malformed request: a missing field, a value out of range, an unparsable layer key."""


class UnknownWorkError(ControllerError, KeyError):
    """A report about a candidate or profiling batch the search has never handed out."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else ""


class UnauthenticatedError(ControllerError):
    """A missing or wrong token."""


class NotReadyError(ControllerError):
    """The controller cannot answer yet (still loading its state)."""


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message of an exception raised while serving a call.

    ``InvalidRequestError``, :class:`~gpunet.errors.SpaceError` (incl. spec errors) and the latency package's
    ``KeyFormatError`` -> INVALID_ARGUMENT; ``UnknownWorkError`` -> NOT_FOUND; ``UnauthenticatedError`` ->
    UNAUTHENTICATED; ``NotReadyError`` -> UNAVAILABLE; anything else -> INTERNAL.
    """
    from ..latency.errors import KeyFormatError

    if isinstance(exc, UnauthenticatedError):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc) or "missing or wrong token"
    if isinstance(exc, (InvalidRequestError, SpaceError, KeyFormatError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UnknownWorkError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, NotReadyError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
