"""Download the wheels that the lent GPU machine's image lacks into ``.whl/`` (run here, before a device run).

    python benchmarks/gpu/prepare.py [--dest .whl] [--python-version 3.12]

The device image (Python 3.12, torch 2.11 + CUDA 13, timm, grpcio, protobuf, ...) reaches no package registry, so
what our code needs beyond it travels with the working tree as wheels (``carry: [".whl"]``). What is carried, and
why:

- ``grpcio`` and ``protobuf`` at our pins: the committed gRPC stubs refuse older runtimes (``controller_pb2_grpc``
  needs grpcio >= the version that generated it; ``controller_pb2`` checks protobuf's major and minimum version),
  and the image's versions are not known ahead.
- ``timm`` at our pin (pure Python): used only if the image's timm is older than ``pyproject.toml`` allows.

torch and torchvision stay the image's own CUDA builds (our pins are for the CPU machines). ``install.py`` decides on
the device which of these wheels to install. Writes ``DEST/manifest.json`` (``{"python", "commit", "wheels":
[{"name", "version", "file", "requirement", "bytes"}]}``); fails when the wheels exceed ``--max-mib``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Packages carried to the device, by their names in constraints.txt.
CARRIED = ("grpcio", "protobuf", "timm")
#: manylinux tags pip may match (it matches each ``manylinux_2_N`` exactly; the device's glibc is recent).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path) -> dict[str, str]:
    """``{normalized name: version}`` of the ``name==version`` lines of a constraints file."""
    out = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[normalize(name)] = version.strip()
    return out


def requirements(pyproject: Path) -> dict[str, str]:
    """``{normalized name: requirement}`` of the core dependencies and the ``engine`` extra of ``pyproject.toml``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out = {}
    for req in [*project["dependencies"], *project["optional-dependencies"]["engine"]]:
        req = req.split(";", 1)[0].strip()
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)  # type: ignore[union-attr]
        out[normalize(name)] = req
    return out


def download(name: str, version: str, dest: Path, python_version: str) -> Path:
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for platform in (*PLATFORMS, "any"):
        cmd += ["--platform", platform]
    subprocess.run([*cmd, f"{name}=={version}"], check=True)
    found = [p for p in dest.glob("*.whl") if normalize(p.name.split("-")[0]) == normalize(name)
             and p.name.split("-")[1] == version]
    if not found:
        raise SystemExit(f"prepare: error: {name}=={version}: pip saved no wheel in {dest}")
    return found[0]


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=ROOT / ".whl")
    p.add_argument("--python-version", default="3.12", help="the device's Python (KINDS.md: 3.12)")
    p.add_argument("--max-mib", type=float, default=32.0, help="refuse more than this (the tree travels in 64 MiB)")
    p.add_argument("--packages", nargs="*", default=list(CARRIED))
    args = p.parse_args(argv)
    pinned, required = pins(ROOT / "constraints.txt"), requirements(ROOT / "pyproject.toml")
    args.dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name in args.packages:
        version = pinned.get(normalize(name))
        if version is None:
            raise SystemExit(f"prepare: error: {name}: got no pin in constraints.txt; expected name==version there")
        for stale in args.dest.glob("*.whl"):  # one version of each: two would stop the whole install
            if normalize(stale.name.split("-")[0]) == normalize(name) and stale.name.split("-")[1] != version:
                stale.unlink()
        wheel = download(name, version, args.dest, args.python_version)
        wheels.append({"name": normalize(name), "version": version, "file": wheel.name,
                       "requirement": required.get(normalize(name), f"{name}=={version}"), "bytes": wheel.stat().st_size})
    names = {w["file"] for w in wheels}
    for other in args.dest.glob("*.whl"):
        if other.name not in names:
            other.unlink()
    total = sum(w["bytes"] for w in wheels) / 2**20
    if total > args.max_mib:
        raise SystemExit(f"prepare: error: wheels: got {total:.1f} MiB; expected at most {args.max_mib} MiB")
    manifest = {"python": args.python_version, "commit": git_commit(), "wheels": wheels}
    (args.dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for w in wheels:
        print(f"{w['file']:70s} {w['bytes'] / 2**20:6.2f} MiB  (installed on the device if not {w['requirement']})")
    print(f"prepare: {len(wheels)} wheels, {total:.1f} MiB in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
