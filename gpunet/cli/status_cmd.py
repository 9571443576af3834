"""``gpunet status RUN_DIR``: where a search stands, read from its state directory.

Phase, latency-table fill, candidates per state and the best candidate per latency tier. Everything is opened
read-only (the controller's SQLite state and the latency table, both in WAL mode), so it works while the run is
live, from another shell or pod, and after it ended.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from . import Output, UsageError, add_output_option

#: Copy of the search file that ``gpunet run`` leaves in the run directory (tiers and the latency-table plan).
SPEC_COPY = "search.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="where a search stands: phase, latency-table fill, candidates, best per tier",
                       description="Read RUN_DIR (a `gpunet run --out` folder or a controller's state directory) "
                                   "read-only; works while the search runs and after it ended.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--spec", type=Path, default=None,
                   help=f"the search's NASSearch YAML, for the tiers and the table fill while profiling "
                        f"(default: RUN_DIR/{SPEC_COPY}, which `gpunet run` writes)")
    add_output_option(p)
    p.set_defaults(func=status)


def status(args: argparse.Namespace) -> Output:
    return Output(run_status(args.run_dir, args.spec), status_view)


def _load_state(run_dir: Path) -> Any:
    from ..controller.state import STATE_FILE, ControllerState

    if not (run_dir / STATE_FILE).is_file():
        raise UsageError("RUN_DIR", str(run_dir), f"a search's state directory (with {STATE_FILE})",
                         reason="no search state here")
    try:
        return ControllerState.load(run_dir)
    except (FileNotFoundError, sqlite3.Error, ValueError, KeyError, TypeError) as exc:
        raise UsageError("RUN_DIR", str(run_dir), reason=f"unreadable search state ({type(exc).__name__}: {exc})") from None


def _table_fill(run_dir: Path, state: Any, spec: Any, profiling: bool) -> dict[str, Any]:
    """Entries of the run's target; while profiling (and with the spec), layers needed and measured so far."""
    from ..latency import LatencyTable, LatencyTarget

    fill: dict[str, Any] = {"entries": 0, "layers_needed": None, "layers_measured": None,
                            "unmeasurable": len(state.unmeasurable), "complete": not profiling}
    path = run_dir / "latency.sqlite"
    if not path.exists():
        return fill
    target = LatencyTarget.from_dict(state.target) if state.target else None
    table = LatencyTable(path, readonly=True)
    try:
        fill["entries"] = len(table.medians(target)) if target else len(table)
        if profiling and target is not None and spec is not None:
            from ..latency import required_keys
            space = spec.space()  # the controller's own plan: the layers of its Sobol samples (paper 3.2)
            keys = required_keys(target, vectors=space.sobol(spec.latency.samples, seed=spec.algorithm.seed),
                                 space=space)
            fill["layers_needed"] = len(keys)
            fill["layers_measured"] = len(keys) - len(table.missing(keys))
    finally:
        table.close()
    return fill


def _tier_targets(run_dir: Path, spec: Any) -> tuple[list[float], list[int | None]]:
    """Tier targets (ms) and pool sizes: from the spec and ``stratification.json``, whichever exist."""
    pools: list[int | None] = []
    targets: list[float] = list(spec.tier_targets) if spec is not None else []
    strat = run_dir / "stratification.json"
    if strat.is_file():
        try:
            tiers = json.loads(strat.read_text())["tiers"]
            targets = targets or [float(t["target_ms"]) for t in tiers]
            pools = [len(t.get("pool", [])) for t in tiers]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(str(strat), reason=f"unreadable stratification ({type(exc).__name__}: {exc})") from None
    return targets, pools + [None] * (len(targets) - len(pools))


def run_status(run_dir: Path, spec_file: Path | None = None) -> dict[str, Any]:
    """The status of the search in ``run_dir`` as JSON-ready data (see ``gpunet status -o json``).

    Raises:
        UsageError: ``run_dir`` holds no readable search state.
        SpecError: the spec file is invalid.
    """
    from ..controller.outputs import best_per_tier
    from ..controller.state import CANDIDATE_STATES, FINISHED, RUNNING
    from ..rpc import ACTIVE_PHASES, TERMINAL_PHASES, pb, phase_value
    from ..spec import load_spec

    run_dir = Path(run_dir)
    state = _load_state(run_dir)
    spec_file = spec_file or (run_dir / SPEC_COPY if (run_dir / SPEC_COPY).is_file() else None)
    spec = load_spec(spec_file) if spec_file else None
    profiling = phase_value(state.phase) in (pb.SEARCH_PHASE_PENDING, pb.SEARCH_PHASE_PROFILING)
    targets, pools = _tier_targets(run_dir, spec)
    candidates = list(state.candidates.values())
    counts = {s: sum(c.state == s for c in candidates) for s in CANDIDATE_STATES}
    tiers = []
    for t, best in enumerate(best_per_tier(candidates, len(targets), spec)):
        searched = [c for c in candidates if c.tier == t and not c.final]  # stage 2's runs are counted apart
        done = [c for c in searched if c.state in FINISHED]
        tiers.append({
            "index": t, "target_ms": targets[t], "pool_size": pools[t], "evaluated": len(done),
            "running": sum(c.state == RUNNING for c in searched),
            "best": None if best is None else {
                "candidate_id": best.id, "top1": best.top1, "vector": best.vector,
                "latency_ms_estimated": best.latency_ms if math.isfinite(best.latency_ms) else None},
        })
    return {
        "run_dir": str(run_dir), "search": state.name, "phase": state.phase, "message": state.message,
        "active": state.phase in ACTIVE_PHASES, "ended": state.phase in TERMINAL_PHASES,
        "started_unix_s": state.started, "updated_unix_s": state.updated,
        "seconds_since_update": round(max(0.0, time.time() - state.updated), 1),
        "latency_table": _table_fill(run_dir, state, spec, profiling),
        "candidates": {**counts, "total": len(candidates)},
        "faults": {"preemptions": state.preemptions, "lease_expiries": state.lease_expiries, "failures": state.failures},
        "tiers": tiers, "spec": str(spec_file) if spec_file else None,
    }


def status_view(s: dict[str, Any]) -> Any:
    """Key/value table of the status, one row per latency tier."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"search {s['search']!r} in {s['run_dir']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    since = f"updated {s['seconds_since_update']:.0f} s ago"
    table.add_row("phase", Text(f"{s['phase']} {s['message']}".strip() + f"  ({since})"))
    lt = s["latency_table"]
    if lt["layers_needed"]:
        fill = f"{lt['layers_measured']}/{lt['layers_needed']} layers measured"
    else:
        fill = f"{lt['entries']} layers" + (", complete" if lt["complete"] else " so far (give --spec for the plan)")
    table.add_row("latency table", fill + (f", {lt['unmeasurable']} unmeasurable" if lt["unmeasurable"] else ""))
    c = s["candidates"]
    table.add_row("candidates", " · ".join(f"{c[k]} {k}" for k in c if k != "total") + f"  ({c['total']} in all)")
    f = s["faults"]
    table.add_row("faults", f"{f['preemptions']} preemptions · {f['lease_expiries']} lease expiries · {f['failures']} failures")
    for tier in s["tiers"]:
        best = tier["best"]
        shown = "–" if best is None else (
            f"{best['candidate_id']}: top-1 {100 * (best['top1'] or 0):.2f}%"
            + (f" at {best['latency_ms_estimated']:.4f} ms" if best["latency_ms_estimated"] is not None else ""))
        pool = f"pool {tier['pool_size']} · " if tier["pool_size"] is not None else ""
        table.add_row(f"tier {tier['target_ms']:g} ms",
                      Text(f"{pool}{tier['evaluated']} evaluated · {tier['running']} running · best {shown}"))
    if not s["tiers"]:
        table.add_row("tiers", "not stratified yet (give --spec for the targets)")
    return table
