"""Errors of the NAS engine. Every error names the field, the value and what was expected."""

from __future__ import annotations

from typing import Any, Sequence


class SpaceError(ValueError):
    """An invalid architecture vector, architecture, layer list or search-space override.

    Attributes:
        field: the human name of the offending field, e.g. ``"stage 4 expansion"`` or
            ``"searchSpace.stages[4].filters"``.
        value: the value that was given.
        allowed: the allowed values (a tuple) or a short description (a string), or None.
        index: the digit index in the 41-integer vector (Table 2 order), when a vector was checked.
    """

    def __init__(
        self,
        field: str,
        value: Any,
        allowed: Sequence[Any] | str | None = None,
        *,
        index: int | None = None,
        reason: str | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.allowed = tuple(allowed) if isinstance(allowed, (list, tuple, range)) else allowed
        self.index = index
        where = f"digit {index} ({field})" if index is not None else field
        message = f"{where}: got {value!r}"
        if reason:
            message += f"; {reason}"
        if self.allowed is not None:
            shown = list(self.allowed) if isinstance(self.allowed, tuple) else self.allowed
            message += f"; expected {'one of ' if isinstance(self.allowed, tuple) else ''}{shown}"
        super().__init__(message)


class NotInSpaceError(SpaceError):
    """A valid network that the chosen search space cannot encode (e.g. GPUNet-0's filters)."""
