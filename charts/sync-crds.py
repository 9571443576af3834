#!/usr/bin/env python
"""Copy the CRDs of ``crds/`` (the one source of truth) into the chart's ``crds/``.

    python charts/sync-crds.py          # write charts/gpunet-nas/crds/*.yaml
    python charts/sync-crds.py --check  # exit 1 when the chart's copies differ (tests/test_chart.py does this)

Each copy is the source file, byte for byte, after a two-line header that says where it comes from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "crds"
TARGET = ROOT / "charts" / "gpunet-nas" / "crds"
HEADER = "# GENERATED from crds/{name} by charts/sync-crds.py; do not edit.\n# Helm installs it before the chart and never upgrades or deletes it (helm.sh/docs/chart_best_practices/custom_resource_definitions).\n"


def expected() -> dict[str, str]:
    """File name -> the content the chart's copy must have."""
    return {p.name: HEADER.format(name=p.name) + p.read_text() for p in sorted(SOURCE.glob("*.yaml"))}


def drift() -> list[str]:
    """Names of the chart's CRD files that are missing, stale or extra."""
    want = expected()
    have = {p.name: p.read_text() for p in TARGET.glob("*.yaml")} if TARGET.is_dir() else {}
    return sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1 when there is some)")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift()
        for name in stale:
            print(f"charts/gpunet-nas/crds/{name} differs from crds/{name}; run python charts/sync-crds.py", file=sys.stderr)
        return 1 if stale else 0
    TARGET.mkdir(parents=True, exist_ok=True)
    want = expected()
    for p in TARGET.glob("*.yaml"):
        if p.name not in want:
            p.unlink()
    for name, text in want.items():
        (TARGET / name).write_text(text)
        print(TARGET / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
