"""Shared pieces of the ``gpunet latency`` and ``gpunet tiers`` commands: backend options, target resolution
from a table's build record, stopping on SIGTERM, and rich progress bars on stderr (stdout stays the output)."""

from __future__ import annotations

import argparse
import contextlib
import signal
from typing import Any, Callable, Iterator

from ..latency.keys import BACKEND_NAMES, LatencyTarget
from ..latency.table import LatencyTable

#: Meta entry where ``gpunet latency build`` records what it built: preset, target, backend options.
BUILD_META = "build"


def add_backend_options(p: argparse.ArgumentParser, *, measuring: bool = True) -> None:
    """Options that pick the target (backend, device, precision, threads) and, when ``measuring``, how to time."""
    p.add_argument("--backend", choices=BACKEND_NAMES, default=None,
                   help="latency backend (default: the one the table was built with, else onnxruntime)")
    p.add_argument("--device", default=None, help="torch: cpu or cuda[:i] (default cpu)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default=None, help="torch/tensorrt precision")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of onnxruntime/torch (default 1)")
    if not measuring:
        return
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs (default 10)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleave the timed runs of groups of layers/networks in this many rounds "
                        "(default: 10 on CPU, 1 for tensorrt)")
    p.add_argument("--mode", choices=("api", "trtexec"), default=None, help="tensorrt: Python API or trtexec")
    p.add_argument("--trtexec", default=None, help="tensorrt: path of the trtexec binary")


def backend_options(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(backend name, options) from the command line, falling back to what the table was built with."""
    recorded = dict(recorded or {})
    name = args.backend or recorded.pop("backend", "onnxruntime")
    if args.backend and args.backend != recorded.get("backend", args.backend):
        recorded = {}
    opts = {k: v for k, v in recorded.items() if k != "backend"}
    for field in ("device", "precision", "threads", "runs", "warmup", "rounds", "mode", "trtexec"):
        value = getattr(args, field, None)
        if value is not None:
            opts[field] = value
    if name == "onnxruntime":
        opts.pop("device", None), opts.pop("precision", None), opts.pop("mode", None), opts.pop("trtexec", None)
    elif name == "torch":
        opts.pop("mode", None), opts.pop("trtexec", None)
    else:
        opts.pop("threads", None)
    if name in ("onnxruntime", "torch"):
        opts.setdefault("threads", 1)
    return name, opts


def recorded_build(table: LatencyTable) -> dict[str, Any]:
    return table.get_meta(BUILD_META) or {}


def resolve_target(args: argparse.Namespace, table: LatencyTable) -> LatencyTarget:
    """The target to read: the table's recorded build target when the options agree with it (no backend is
    started), else the target of a backend made from the options (which may need torch/onnxruntime)."""
    build = recorded_build(table)
    if build.get("target") and (args.backend is None or args.backend == build["target"]["backend"]):
        explicit = [f for f in ("device", "precision", "threads") if getattr(args, f, None) is not None]
        if not explicit:
            return LatencyTarget.from_dict(build["target"])
    targets = table.targets()
    if args.backend is None and len(targets) == 1 and not build:
        return targets[0]
    from ..latency.backends import get_backend

    name, opts = backend_options(args, build.get("backend_options"))
    backend = get_backend(name, **opts)
    try:
        return backend.target()
    finally:
        backend.close()


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[Callable[[], bool]]:
    """A ``should_stop`` flag set by SIGTERM (a preempted node's notice), restored afterwards."""
    stopped = {"flag": False}

    def handler(signum: int, frame: Any) -> None:
        stopped["flag"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: stopped["flag"]
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(completed)`` that sets the completed count."""
    if not enabled:
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.update(task, completed=done)

