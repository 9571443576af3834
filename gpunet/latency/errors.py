"""Errors of the latency table, its backends and the sampler. Each names the field, the value and what was expected."""

from __future__ import annotations

from typing import Any, Sequence


class LatencyError(Exception):
    """Base class of every error of :mod:`gpunet.latency` (the CLI turns it into a one-line message, exit 2)."""


class TableError(LatencyError):
    """A latency-table file that cannot be used: not SQLite, not ours, corrupt, or of a newer schema.

    The file is never modified when this is raised.

    Attributes:
        path: the file.
        reason: what is wrong, in words.
    """

    def __init__(self, path: Any, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"latency table {self.path}: {reason}")


class KeyFormatError(LatencyError, ValueError):
    """A layer key (dict/JSON from the wire) with a missing or bad field."""

    def __init__(self, field: str, value: Any, expected: Sequence[Any] | str) -> None:
        self.field, self.value, self.expected = field, value, expected
        shown = list(expected) if isinstance(expected, (list, tuple)) else expected
        super().__init__(f"layer key field {field!r}: got {value!r}; expected {shown}")


class MissingLayersError(LatencyError, KeyError):
    """Layers needed for an estimate are not in the table.

    Attributes:
        keys: the missing :class:`~gpunet.latency.keys.LayerKey` s (unique, in first-seen order).
    """

    def __init__(self, keys: Sequence[Any], what: str = "the estimate") -> None:
        self.keys = list(keys)
        first = self.keys[0].text if self.keys else "?"
        super().__init__(
            f"{len(self.keys)} layer(s) needed for {what} are missing from the latency table "
            f"(first: {first}); measure them with `gpunet latency build` or a profiler worker"
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class BackendUnavailableError(LatencyError):
    """A latency backend cannot run here; the message names what is missing (package, GPU, binary)."""

    def __init__(self, backend: str, missing: str, hint: str = "") -> None:
        self.backend, self.missing = backend, missing
        super().__init__(f"latency backend {backend!r} cannot run: {missing} is missing" + (f"; {hint}" if hint else ""))


class TargetMismatchError(LatencyError):
    """A layer key asks for another backend, device, precision or batch size than the local backend measures."""

    def __init__(self, field: str, value: Any, expected: Any) -> None:
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"layer key {field}: got {value!r}; this profiler measures {expected!r}")


class TierError(LatencyError, ValueError):
    """Bad latency-tier targets, tolerance or bin edges."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}: got {value!r}; expected {expected}")
