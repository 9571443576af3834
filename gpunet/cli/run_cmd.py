"""``gpunet run SEARCH.yaml``: run a whole NASSearch on this machine (controller in-process, local workers)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from . import Output, UsageError, add_output_option
from .status_cmd import SPEC_COPY


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="run a NASSearch locally: controller in-process, workers as subprocesses on 127.0.0.1",
        description="Run the NASSearch of SEARCH.yaml (the same file `kubectl apply` takes; Kubernetes-only fields are "
                    "ignored) on this machine. Rerunning with the same --out resumes the search.")
    p.add_argument("search", type=Path, metavar="SEARCH.yaml")
    p.add_argument("--workers", type=int, default=2, help="trainer processes (default 2)")
    p.add_argument("--profilers", type=int, default=2, help="profiler processes while the latency table fills (default 2)")
    p.add_argument("--out", type=Path, help="output and state directory (default: runs/<metadata.name>)")
    p.add_argument("--lease-seconds", type=float, default=30.0, help="lease duration of the controller (default 30)")
    p.add_argument("--threads", type=int, help="CPU threads per trainer (default: cores / workers)")
    p.add_argument("--profiler-runs", type=int, help="timed runs per layer measurement (default: the backend's)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (0: any free port)")
    p.add_argument("--timeout", type=float, help="stop (resumably) after this many seconds")
    p.add_argument("--no-display", action="store_true", help="plain status lines instead of the live display")
    p.add_argument("--resume-failed", action="store_true",
                   help="resume a Failed search in --out in the phase it failed in (after fixing the cause)")
    add_output_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Output | int:
    from ..controller.local import LocalRun, render_status, status_line
    from ..controller.outputs import HubError, read_hub, write_outputs
    from ..fileio import write_atomic
    from ..rpc import TERMINAL_PHASES, pb, phase_name
    from ..spec import load_spec
    from .results_cmd import hub_view

    for option, value in (("--workers", args.workers), ("--profilers", args.profilers)):
        if value < 1:
            raise UsageError(option, value, "an integer >= 1")
    spec = load_spec(args.search)
    out = args.out or Path("runs") / spec.name
    text = args.search.read_bytes()  # for `gpunet status` (tiers, table plan); load_spec has read it already
    # LocalRun takes the state directory's lock first: a second run on it (StateDirLockedError, exit 2) writes nothing.
    run_ = LocalRun(spec, out, workers=args.workers, profilers=args.profilers, lease_s=args.lease_seconds,
                    threads=args.threads, profiler_runs=args.profiler_runs, metrics_port=args.metrics_port,
                    resume_failed=args.resume_failed)
    write_atomic(Path(out) / SPEC_COPY, lambda f: f.write(text))
    machine_readable = args.output != "table"
    say = (lambda *a: print(*a, file=sys.stderr)) if machine_readable else print
    say(f"gpunet run: search {spec.name!r}, state in {run_.out}, controller on {run_.server.address} "
        "(plaintext gRPC on loopback; a fresh token per run)"
        + (f", metrics on :{run_.server.metrics_port}/metrics" if run_.server.metrics_port else ""))
    if run_.resumed is not None:
        say(f"gpunet run: --resume-failed: {'resumed in phase ' + phase_name(run_.resumed.phase) if run_.resumed.resumed else 'nothing to resume'}"
            f" ({run_.resumed.message})")
    interrupted = False
    status = None
    try:
        run_.start()
        from rich.console import Console

        console = Console(stderr=machine_readable)
        if console.is_terminal and not args.no_display:
            from rich.live import Live

            with Live(render_status(run_.controller.status(), run_.started), console=console, refresh_per_second=2) as live:
                status = run_.wait(lambda s: live.update(render_status(s, run_.started)), timeout_s=args.timeout)
        else:
            last = [0.0]

            def tick(s: Any) -> None:
                if time.time() - last[0] >= 10:
                    last[0] = time.time()
                    say(status_line(s, run_.started))

            status = run_.wait(tick, timeout_s=args.timeout)
    except KeyboardInterrupt:
        interrupted = True
        say("gpunet run: interrupted; stopping workers (their leases are released as preempted) and saving state")
    except RuntimeError as exc:  # every trainer crashed repeatedly: the run failed, the input was fine
        print(f"gpunet: error: {exc}", file=sys.stderr)
        return 1
    finally:
        run_.close()
    status = run_.controller.status()
    say(status_line(status, run_.started))
    if interrupted or phase_name(status.phase) not in TERMINAL_PHASES:
        say(f"gpunet run: stopped in phase {phase_name(status.phase)}; rerun with --out {run_.out} to resume")
        return 130 if interrupted else 1
    if status.phase == pb.SEARCH_PHASE_FAILED:
        print(f"gpunet: error: search failed: {status.message}", file=sys.stderr)
        return 1
    try:  # written by the controller in phase Finalizing, before it said Succeeded
        hub = read_hub(run_.out)
    except HubError:  # a search that ended before phase Finalizing existed, or a deleted hub
        hub = write_outputs(spec, run_.out)
        hub.pop("files", None)
    written = f"results (hub.json, hub.md, candidates.jsonl, weights/, onnx/, pareto.png) in {run_.out}"
    return Output(hub, lambda d: [*hub_view(d), written])
