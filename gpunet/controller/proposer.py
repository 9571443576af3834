"""A tier's searcher behind one call, ``round(tells, want, snapshot)``: in this thread or in its own process.

A round tells the searcher the new results, asks it for ``want`` proposals and writes its state to ``snapshot``
(atomically). Model-based searchers (LA-MCTS-BO) spend up to seconds in a round, mostly holding Python's GIL;
in the controller process that would stall every RPC thread. :class:`ProcessSearcher` runs the searcher in a
child process (``spawn``), so the controller's driver thread only waits on a pipe. :class:`LocalSearcher` is the
same in-thread, for tests and tools.

A round that fails (a numerical failure of a model fit, a full disk under the snapshot) leaves the searcher as it
was after the last round that succeeded: it is rebuilt from that round's snapshot, so the driver's retry of the
round tells the same results once, not twice. A transient failure in the child process comes back as
:class:`~.errors.TransientError` (:func:`~.errors.is_transient`), any other as ``RuntimeError``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any, Sequence

from ..fileio import write_json_atomic

#: A result for the searcher: ``(trial_id, failed, top1)``.
Tell = tuple[int, bool, float]


def _create(algorithm: dict[str, Any], space: Any, pool: list[list[int]], tier: int, snapshot: str | None) -> Any:
    from .. import search
    from ..space import load_space

    if snapshot:
        return search.from_state_dict(json.loads(Path(snapshot).read_text()))
    sp = search.IntegerSpace.from_search_space(load_space(space), pool=pool)
    options = dict(algorithm.get("options") or {})
    if "n_init" in search.searcher_class(algorithm["name"]).OPTIONS and "n_init" not in options:
        options["n_init"] = algorithm["initial_samples"]
    if "budget" in search.searcher_class(algorithm["name"]).OPTIONS and "budget" not in options and algorithm.get("budget"):
        options["budget"] = algorithm["budget"]  # sizes LA-MCTS's default leaf size (gpunet.search.lamcts)
    return search.create(algorithm["name"], sp, seed=algorithm["seed"] + tier, **options)


def _round(searcher: Any, tells: Sequence[Tell], want: int, snapshot: str) -> list[tuple[int, list[int]]]:
    for trial_id, failed, top1 in tells:
        if failed:
            searcher.tell_failed(trial_id)
        else:
            searcher.tell(trial_id, float(top1))
    trials = searcher.ask(want) if want > 0 else []
    write_json_atomic(snapshot, searcher.state_dict())
    return [(int(t.id), [int(x) for x in t.params]) for t in trials]


class LocalSearcher:
    """The searcher of one tier, in the calling thread."""

    def __init__(self, algorithm: dict[str, Any], space: Any, pool: list[list[int]], tier: int, snapshot: str | None) -> None:
        self._args = (algorithm, space, pool, tier)
        self._snapshot = snapshot  # of the last round that succeeded: where a failed round rolls back to
        self.searcher = _create(algorithm, space, pool, tier, snapshot)

    def round(self, tells: Sequence[Tell], want: int, snapshot: str | Path) -> list[tuple[int, list[int]]]:
        """Tell ``tells``, ask ``want`` proposals ``(trial_id, vector)``, write the state to ``snapshot``; on any
        error, roll the searcher back to the last round's snapshot and raise."""
        try:
            proposals = _round(self.searcher, tells, want, str(snapshot))
        except BaseException:
            self.searcher = _create(*self._args, self._snapshot)
            raise
        self._snapshot = str(snapshot)
        return proposals

    def close(self) -> None:
        pass


#: Niceness added to a searcher process under priority ``"nice"``: its model fits yield most of a busy CPU to the
#: controller's RPCs, and keep a share of it.
SEARCHER_NICE = 10
#: How a searcher process yields the CPU (:func:`lower_priority`):
#:
#: - ``"nice"``: :data:`SEARCHER_NICE` added. It keeps a share of a busy CPU, which ``gpunet run`` needs: its
#:   trainers share the machine, and a searcher that only ran when they wait would hold them up.
#: - ``"idle"``: the ``SCHED_IDLE`` policy (``sched(7)``). It runs only on cycles nothing at normal priority wants,
#:   and a woken RPC thread preempts it at once, where a niced process finishes its time slice first. The
#:   controller's own pod wants this: RPC latency first, the searcher gets the rest. At 1,000 simulated workers on
#:   2 shared cores (``benchmarks/controller_load.py``, 60 s) the all-RPC p99 was 33.9 ms at nice 10 and
#:   12.0-12.8 ms under SCHED_IDLE, with as many proposals.
SEARCHER_PRIORITIES = ("nice", "idle")


def check_priority(priority: str) -> None:
    """Raises:
        ValueError: ``priority`` is not one of :data:`SEARCHER_PRIORITIES`.
    """
    if priority not in SEARCHER_PRIORITIES:
        raise ValueError(f"searcher priority: got {priority!r}, expected one of {', '.join(SEARCHER_PRIORITIES)}")


def lower_priority(priority: str) -> str:
    """Lower this process's CPU priority as :data:`SEARCHER_PRIORITIES` says; returns what was applied (``"nice"``,
    ``"idle"``, or ``"none"`` where the system refused).

    Raises:
        ValueError: ``priority`` is not one of :data:`SEARCHER_PRIORITIES`.
    """
    check_priority(priority)
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError:  # refused (a seccomp profile): fall back to niceness
            pass
    try:
        os.nice(SEARCHER_NICE)
        return "nice"
    except OSError:  # not permitted here: run at the parent's priority
        return "none"


def _serve(conn: Any, args: tuple[Any, ...], priority: str = "nice") -> None:
    """Child process: build the searcher, then answer rounds until told to stop or the parent goes away."""
    from .errors import is_transient

    lower_priority(priority)
    try:
        searcher = LocalSearcher(*args)
        conn.send(("ready", None))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("transient" if is_transient(exc) else "error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the controller is gone
        if message is None:
            return
        try:
            conn.send(("ok", searcher.round(*message)))
        except Exception as exc:  # noqa: BLE001 - reported to the parent; the searcher was rolled back
            conn.send(("transient" if is_transient(exc) else "error", f"{type(exc).__name__}: {exc}"))


class ProcessSearcher:
    """The searcher of one tier in a child process (same interface as :class:`LocalSearcher`), at a lower CPU
    priority (``priority``: one of :data:`SEARCHER_PRIORITIES`).

    Raises:
        ValueError: an unknown ``priority``.
    """

    def __init__(self, algorithm: dict[str, Any], space: Any, pool: list[list[int]], tier: int, snapshot: str | None,
                 priority: str = "nice") -> None:
        check_priority(priority)  # here, not only in the child, where the error would come at the first round
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, (algorithm, space, pool, tier, snapshot), priority),
                                 name=f"gpunet-searcher-{tier}", daemon=True)
        self._proc.start()
        #: The child's process id.
        self.pid: int = self._proc.pid
        child.close()
        self._ready = False

    def _receive(self) -> Any:
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"searcher process exited with code {self._proc.exitcode}") from None
        if kind == "error":
            raise RuntimeError(f"searcher process: {payload}")
        if kind == "transient":
            from .errors import TransientError

            raise TransientError("searcher process", reason=payload)
        return payload

    def round(self, tells: Sequence[Tell], want: int, snapshot: str | Path) -> list[tuple[int, list[int]]]:
        if not self._ready:
            self._receive()
            self._ready = True
        self._conn.send((list(tells), int(want), str(snapshot)))
        return self._receive()

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
