"""The ``gpunet`` command line: one entry point, one module per command group (nouns before verbs).

Conventions, the same for every command:

- A data-printing command returns an :class:`Output` (JSON-ready data plus an optional human view) and
  :func:`print_output` prints it as ``-o table`` (the default, for humans), ``-o json`` (exactly one JSON object
  on one line of stdout; ``--json`` is an alias) or ``-o yaml``. Progress bars and notes go to stderr.
- Every :class:`gpunet.errors.GpunetError` (bad input, an unusable file or environment) is printed as one line,
  ``gpunet: error: <field>: got <value>; expected <...>``, and exits with status 2. No command catches them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import NO_VALUE, GpunetError

if TYPE_CHECKING:
    from rich.console import Console

#: Values of ``-o/--output``; the first is the default.
OUTPUT_FORMATS = ("table", "json", "yaml")


def groups() -> list[str]:
    """Command groups: every ``*_cmd`` module of this package, each with ``register(subparsers)``."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_cmd"))


class UsageError(GpunetError, ValueError):
    """A bad command-line value that no library call checks (a negative count, an unparsable list)."""

    def __init__(self, option: str, value: Any = NO_VALUE, expected: Any = None, *, reason: str | None = None) -> None:
        super().__init__(option, value, expected, reason=reason)


@dataclass
class Output:
    """What a data-printing command returns.

    Attributes:
        data: JSON-ready data (dicts, lists, str, int, float, bool, None); printed as is by ``-o json|yaml``.
        view: the ``-o table`` view, ``view(data)`` -> a str (printed as is), a rich renderable or a list of
            them; None for :func:`default_view`.
        code: the exit status.
    """

    data: Any
    view: Callable[[Any], Any] | None = None
    code: int = 0


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """``-o/--output table|json|yaml`` and its alias ``--json``."""
    parser.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default=OUTPUT_FORMATS[0],
                        help="output format: table (for humans, the default), json (one JSON object) or yaml")
    parser.add_argument("--json", dest="output", action="store_const", const="json", help="same as -o json")


def console(stderr: bool = False) -> "Console":
    """A rich console; 120 columns when the stream is not a terminal (rich would assume 80)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(width=None if stream.isatty() else 120, stderr=stderr)


def default_view(data: Any) -> Any:
    """A generic table of ``data``: rows of a list of dicts, else key/value rows of a dict."""
    from rich.table import Table
    from rich.text import Text

    def cell(value: Any) -> Text:
        return Text(value if isinstance(value, str) else json.dumps(value))

    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        columns = list(dict.fromkeys(k for row in data for k in row))
        table = Table(*columns)
        for row in data:
            table.add_row(*(cell(row.get(k)) for k in columns))
        return table
    if isinstance(data, dict):
        table = Table(show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in data.items():
            table.add_row(str(key), cell(value))
        return table
    return json.dumps(data, indent=2)


def print_output(output: Output, fmt: str) -> None:
    """Print ``output`` on stdout in format ``fmt`` (one of :data:`OUTPUT_FORMATS`)."""
    if fmt == "json":
        print(json.dumps(output.data))
        return
    if fmt == "yaml":
        import yaml

        print(yaml.safe_dump(output.data, sort_keys=False, allow_unicode=True), end="")
        return
    view = (output.view or default_view)(output.data)
    out = None
    for part in view if isinstance(view, list) else [view]:
        if isinstance(part, str):
            print(part)
        else:
            out = out or console()
            out.print(part)


def warn(message: str) -> None:
    """One line on stderr, ``gpunet: warning: <message>``."""
    print(f"gpunet: warning: {message}", file=sys.stderr)


def version() -> str:
    """The installed distribution's version (``importlib.metadata``)."""
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpunet", description="GPU-latency-tiered neural architecture search (GPUNet).")
    parser.add_argument("--version", action="version", version=f"gpunet {version()}")
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for name in groups():
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
        if isinstance(result, Output):
            print_output(result, getattr(args, "output", "table"))
            return result.code
        return int(result or 0)
    except KeyboardInterrupt:
        print("gpunet: interrupted", file=sys.stderr)
        return 130
    except GpunetError as exc:
        print(f"gpunet: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
