"""``gpunet spec validate FILE...``: check NASSearch files as ``gpunet run`` and the controller would read them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import Output, add_output_option


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("spec", help="NASSearch files: validate").add_subparsers(dest="cmd", required=True)
    p = group.add_parser("validate", help="check NASSearch YAML files, search space included",
                         description="Exit 0 when every file is valid; otherwise print `FILE: <field>: got <value>; "
                                     "expected <...>` on stderr for each bad file and exit 2.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    add_output_option(p)
    p.set_defaults(func=validate)


def check(path: Path) -> dict[str, Any]:
    """``{"file", "valid", "error", "search", "tiers"}`` of one file (``error``: the first bad field, or None)."""
    from ..errors import GpunetError
    from ..spec import load_spec

    try:
        spec = load_spec(path)
    except GpunetError as exc:
        # an unreadable file is named by load_spec itself: say only why, not the path twice
        message = exc.reason if exc.field == str(path) and exc.reason else str(exc)
        return {"file": str(path), "valid": False, "error": message, "search": None, "tiers": None}
    return {"file": str(path), "valid": True, "error": None, "search": spec.name, "tiers": list(spec.latency.tiers)}


def validate(args: argparse.Namespace) -> Output:
    results = [check(path) for path in args.files]
    for r in results:
        if not r["valid"]:
            print(f"{r['file']}: {r['error']}", file=sys.stderr)
    return Output({"files": results, "valid": all(r["valid"] for r in results)}, validate_view,
                  code=0 if all(r["valid"] for r in results) else 2)


def validate_view(data: dict[str, Any]) -> list[str]:
    """One line per valid file (the bad ones are on stderr already)."""
    return [f"{r['file']}: valid (search {r['search']!r}, tiers {r['tiers']} ms)" for r in data["files"] if r["valid"]]
