"""Errors of the latency table, its backends and the sampler.

All derive from :class:`gpunet.errors.GpunetError` and use its one message format
(``<field>: got <value>; <reason>; expected <expected>``), so the CLI prints any of them as one line (exit 2).
The ones caused by a bad value also derive from the matching built-in (``ValueError``, ``KeyError``), as they
always have, so callers that catch those keep working.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import GpunetError


class LatencyError(GpunetError):
    """Base class of every error of :mod:`gpunet.latency`.

    Takes :class:`~gpunet.errors.GpunetError`'s arguments: ``LatencyError("rounds", 0, "an integer >= 1")``.
    """


class TableError(LatencyError):
    """A latency-table file that cannot be used: not SQLite, not ours, corrupt, or of a newer schema.

    The file is never modified when this is raised.

    Attributes:
        path: the file.
        reason: what is wrong, in words.
    """

    def __init__(self, path: Any, reason: str) -> None:
        self.path = str(path)
        super().__init__(f"latency table {self.path}", reason=reason)


class KeyFormatError(LatencyError, ValueError):
    """A layer key (dict/JSON from the wire) with a missing or bad field.

    Attributes:
        field: the key's field, e.g. ``"input_shape"`` (the message says ``layer key input_shape``).
    """

    def __init__(self, field: str, value: Any, expected: Sequence[Any] | str) -> None:
        super().__init__(f"layer key {field}", value, expected)
        self.field = field


class MissingLayersError(LatencyError, KeyError):
    """Layers needed for an estimate are not in the table; the message says to measure them.

    Attributes:
        keys: the missing :class:`~gpunet.latency.keys.LayerKey` s (unique, in first-seen order).
        what: what needed them, e.g. ``"network GPUNet-1"``.
    """

    def __init__(self, keys: Sequence[Any], what: str = "the estimate") -> None:
        self.keys = list(keys)
        self.what = what
        first = self.keys[0].text if self.keys else "?"
        super().__init__(
            f"layers for {what}",
            expected="every layer in the table: measure the missing ones with `gpunet latency build` or a profiler worker",
            reason=f"{len(self.keys)} missing from the latency table (first: {first})",
        )


class BackendUnavailableError(LatencyError):
    """A latency backend cannot run here; the message names what is missing (package, GPU, binary) and what to do.

    Attributes:
        backend: the backend's name.
        missing: what is missing, e.g. ``"the Python package 'tensorrt'"``.
        hint: what to do instead, or ``""``.
    """

    def __init__(self, backend: str, missing: str, hint: str = "") -> None:
        self.backend, self.missing, self.hint = backend, missing, hint
        reason = f"cannot run here: {missing} is missing" + (f"; {hint}" if hint else "")
        super().__init__("latency backend", backend, reason=reason)


class TargetMismatchError(LatencyError):
    """A layer key asks for another backend, device, precision or batch size than the local backend measures.

    Attributes:
        field: ``"backend"``, ``"device"``, ``"precision"`` or ``"batch_size"``.
        value: the key's value; ``expected``: the local backend's.
    """

    def __init__(self, field: str, value: Any, expected: Any) -> None:
        super().__init__(f"layer key {field}", value, f"{expected!r}, what this profiler measures")
        self.field, self.expected = field, expected


class TierError(LatencyError, ValueError):
    """Bad latency-tier targets, tolerance or bin edges."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        super().__init__(field, value, expected)


__all__ = ["BackendUnavailableError", "KeyFormatError", "LatencyError", "MissingLayersError", "TableError",
           "TargetMismatchError", "TierError"]
