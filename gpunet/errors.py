"""Errors of the NAS engine: one base, :class:`GpunetError`, and one message format.

Every error caused by bad input (a spec, an architecture vector, a file, a request from the network) names the
field, the value and what was expected::

    <field>: got <value!r>[; <reason>][; expected <expected>]

e.g. ``digit 17 (stage 4 filters): got 256; expected one of [32, 64, ...]`` or
``spec.latency.tolerance: got 1.5; expected a relative tolerance in (0, 1)``. The CLI prints ``str(exc)`` of any
:class:`GpunetError` as one line and exits with 2; the controller turns them into ``INVALID_ARGUMENT``.
Subclasses also derive from the matching built-in (``ValueError``, ``KeyError``, ``FileNotFoundError``, ...) so
that callers who catch those keep working.
"""

from __future__ import annotations

from typing import Any, Sequence

#: Marks "no value to show" (a file that cannot be read, say), distinct from a value of None.
NO_VALUE: Any = type("NoValue", (), {"__repr__": lambda self: "<no value>"})()


def format_message(field: str, value: Any = NO_VALUE, expected: Any = None, reason: str | None = None) -> str:
    """The one message format of :class:`GpunetError` (see the module docstring)."""
    message = field if value is NO_VALUE else f"{field}: got {value!r}"
    if reason:
        message += f"; {reason}" if value is not NO_VALUE else f": {reason}"
    if expected is not None:
        if isinstance(expected, (list, tuple, range)):
            message += f"; expected one of {list(expected)}"
        else:
            message += f"; expected {expected}"
    return message


class GpunetError(Exception):
    """Base class of every error of gpunet-nas caused by bad input or an unusable environment.

    Attributes:
        field: what is wrong, e.g. ``"spec.latency.tolerance"``, ``"stage 4 expansion"``, a file path.
        value: the value that was given (:data:`NO_VALUE` when there is none to show).
        expected: the allowed values (a tuple) or a short description (a string), or None.
        reason: what is wrong, in words, when "got X; expected Y" does not say it all.
    """

    def __init__(self, field: str, value: Any = NO_VALUE, expected: Sequence[Any] | str | None = None, *,
                 reason: str | None = None) -> None:
        self.field = field
        self.value = value
        self.expected = tuple(expected) if isinstance(expected, (list, tuple, range)) else expected
        self.reason = reason
        super().__init__(format_message(field, value, self.expected, reason))

    def __str__(self) -> str:  # KeyError subclasses would repr() the message otherwise
        return str(self.args[0]) if self.args else ""

    @property
    def allowed(self) -> Any:
        """Alias of :attr:`expected` (the name the space errors have always used)."""
        return self.expected


class SpaceError(GpunetError, ValueError):
    """An invalid architecture vector, architecture, layer list or search-space override.

    Attributes (besides :class:`GpunetError`'s):
        index: the digit index in the 41-integer vector (Table 2 order), when a vector was checked; the field is
            then shown as ``digit <index> (<field>)``.
    """

    def __init__(self, field: str, value: Any, allowed: Sequence[Any] | str | None = None, *,
                 index: int | None = None, reason: str | None = None) -> None:
        self.index = index
        shown = f"digit {index} ({field})" if index is not None else field
        super().__init__(shown, value, allowed, reason=reason)
        self.field = field


class NotInSpaceError(SpaceError):
    """A valid network that the chosen search space cannot encode (e.g. GPUNet-0's filters)."""


#: Exit status of a worker process that cannot work on its machine (its device, latency backend or dataset is
#: missing): sysexits' ``EX_CONFIG``. ``gpunet run`` stops the run at once with the reason (the worker's last
#: line on stderr) instead of restarting it.
EXIT_CANNOT_START = 78
