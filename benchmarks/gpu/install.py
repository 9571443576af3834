"""Install the carried wheels (``prepare.py``'s ``.whl/``) that this interpreter needs, into a target folder.

    python3 benchmarks/gpu/install.py [--wheels .whl] [--target /tmp/gpunet-site] [--force]

Run on the lent GPU machine by ``run.sh``. For each wheel of ``WHEELS/manifest.json`` it reads the version this
interpreter has (``importlib.metadata``) and installs the wheel with ``pip install --no-index --no-deps --target``
only when the package is missing or fails the manifest's requirement (from ``pyproject.toml``); ``--force``
installs all. Put ``TARGET`` first on ``PYTHONPATH`` afterwards. (A venv with ``--system-site-packages`` would not
do: the image's python3 is itself a venv, and a nested venv sees the base interpreter's packages, not torch.)

Writes ``TARGET/gpunet-carried.json``: ``{"installed": [...], "kept": {name: version}}``, which the suite records.
Exits 1 when pip fails, 2 on a missing or malformed manifest. Needs only the standard library (and ``packaging``
when it is there).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:4])


def satisfies(installed: str, requirement: str) -> bool:
    """Whether version ``installed`` meets ``requirement`` (``name>=1.2``, ``name==1.2``, ``name``, or several
    comma-separated specifiers); with ``packaging`` when it is importable, else by release numbers."""
    try:
        from packaging.requirements import Requirement

        return Requirement(requirement).specifier.contains(installed, prereleases=True)
    except ImportError:  # pragma: no cover - packaging is on the image
        pass
    spec = re.sub(r"^[A-Za-z0-9_.\-\[\]]+", "", requirement).strip()
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, version = re.match(r"(>=|==|<=|>|<|!=|~=)?\s*(.+)", clause).groups()  # type: ignore[union-attr]
        a, b = _release(installed), _release(version)
        ok = {">=": a >= b, "==": a == b, "<=": a <= b, ">": a > b, "<": a < b, "!=": a != b, "~=": a >= b,
              None: a == b}[op]
        if not ok:
            return False
    return True


def plan(manifest: dict, force: bool = False) -> tuple[list[dict], dict[str, str]]:
    """``(wheels to install, {name: installed version} of the packages kept)``."""
    install, kept = [], {}
    for wheel in manifest["wheels"]:
        try:
            have = metadata.version(wheel["name"])
        except metadata.PackageNotFoundError:
            have = None
        if force or have is None or not satisfies(have, wheel["requirement"]):
            install.append({**wheel, "replaces": have})
        else:
            kept[wheel["name"]] = have
    return install, kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", type=Path, default=Path(".whl"))
    p.add_argument("--target", type=Path, default=Path("/tmp/gpunet-site"))
    p.add_argument("--force", action="store_true", help="install every carried wheel")
    args = p.parse_args(argv)
    try:
        manifest = json.loads((args.wheels / "manifest.json").read_text())
        install, kept = plan(manifest, args.force)
    except (OSError, ValueError, KeyError) as exc:
        print(f"install: error: {args.wheels / 'manifest.json'}: {exc}; expected the manifest of "
              "benchmarks/gpu/prepare.py (run it here, then carry .whl)", file=sys.stderr)
        return 2
    args.target.mkdir(parents=True, exist_ok=True)
    if install:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(args.target),
               *(str(args.wheels / w["file"]) for w in install)]
        if subprocess.run(cmd).returncode != 0:
            print(f"install: error: pip failed: {' '.join(cmd)}", file=sys.stderr)
            return 1
    summary = {"python": sys.version.split()[0], "installed": [{k: w[k] for k in ("name", "version", "replaces")}
                                                                for w in install], "kept": kept}
    (args.target / "gpunet-carried.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"install: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
