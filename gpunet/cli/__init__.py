"""The ``gpunet`` command line: one entry point, one module per command group.

Every command that prints data also takes ``--json`` and then prints exactly one JSON object on stdout.
Errors of the user's input (a bad vector, a malformed file) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import SpaceError

if TYPE_CHECKING:
    from rich.console import Console


def groups() -> list[str]:
    """Command groups: every ``*_cmd`` module of this package, each with ``register(subparsers)``."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_cmd"))


class UsageError(Exception):
    """A user error that is not a :class:`SpaceError` (missing file, bad option value)."""


def console() -> "Console":
    """A rich console; 120 columns when stdout is not a terminal (rich would assume 80)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print ``data`` as one JSON object, or ``text`` (default: pretty JSON) for humans."""
    if as_json:
        print(json.dumps(data))
    else:
        print(text if text is not None else json.dumps(data, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpunet", description="GPU-latency-tiered neural architecture search (GPUNet).")
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for name in groups():
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SpaceError, UsageError) as exc:
        print(f"gpunet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpunet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
