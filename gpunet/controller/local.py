"""``gpunet run``: the whole search on one machine, with the same controller and workers as on Kubernetes.

The controller runs in this process (gRPC on 127.0.0.1, a random port, a fresh token per run); profilers and
trainers run as ``python -m gpunet_worker`` subprocesses. Everything lives in the output directory, so rerunning
with the same directory resumes the search. Ctrl-C sends SIGTERM to the workers (they release their leases as
``preempted``), saves the controller's state and exits.

Faults (issue 13): the run holds the state directory's lock (:mod:`.lock`) from before it writes anything, so a
second run on it exits at once and the first goes on untouched. Workers die with the run, however it dies
(``--parent-pid``: the kernel's parent-death signal). A worker process that dies holding a lease has it released
as ``failed`` (a failed attempt of that candidate) before it is restarted, so its successor never gets it back;
one that exits with :data:`gpunet.errors.EXIT_CANNOT_START` (no device, latency backend or dataset here) stops
the run at once with its reason (:class:`~.errors.WorkerCannotStartError`). A ``Failed`` search in the directory is
resumed with ``resume_failed`` (``gpunet run --resume-failed``) in the phase it failed in.

The gRPC port is plaintext: it listens on 127.0.0.1 only, and the token is fresh per run and handed to the workers
in their environment. Profilers run while the latency table fills and again, one of them, in phase Finalizing to
measure each tier's best network end to end (one at a time, so that CPU measurements do not disturb each other).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from ..errors import EXIT_CANNOT_START, GpunetError
from ..rpc import TERMINAL_PHASES, TOKEN_ENV, pb, phase_name
from ..spec import SearchSpec
from .core import SearchController
from .errors import WorkerCannotStartError, WorkersCrashedError
from .finalizing import PHASE_FINALIZING
from .lock import StateDirLock
from .service import ControllerServer
from .state import PHASE_PROFILING, PHASE_SCALING

log = logging.getLogger(__name__)
#: Restarts of a crashed worker process before the run gives up on that slot.
MAX_WORKER_RESTARTS = 3


def worker_command() -> list[str]:
    """``python -m gpunet_worker`` with this interpreter: the worker package of the installed distribution.

    Raises:
        GpunetError: ``gpunet_worker`` is not importable here (the project is not installed).
    """
    if importlib.util.find_spec("gpunet_worker") is None:
        raise GpunetError("gpunet_worker", reason=f"not importable by {sys.executable}",
                          expected="the gpunet-nas distribution installed (`pip install .`, or `pip install -e .` "
                                   "in a checkout), which packages gpunet_worker")
    return [sys.executable, "-m", "gpunet_worker"]


@dataclass
class WorkerProcess:
    role: str
    worker_id: str
    proc: subprocess.Popen
    log: IO[str]
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)


class LocalRun:
    """A controller plus local worker processes for one search in ``out_dir``.

    Args:
        spec: the parsed ``NASSearch``.
        out_dir: state and results.
        workers: trainer processes.
        profilers: profiler processes (started only while the latency table is being filled).
        lease_s: lease duration of the controller, in seconds.
        threads: CPU threads per trainer (default: the machine's cores divided among the trainers).
        profiler_runs: timed runs per layer measurement (None: the backend's default).
        finalize_timeout_s: how long phase Finalizing waits for the tier winners' end-to-end measurements.
        resume_failed: resume the search if it is ``Failed`` (:meth:`~.core.SearchController.resume_failed`); the
            answer is :attr:`resumed`.
    """

    def __init__(self, spec: SearchSpec, out_dir: str | Path, *, workers: int = 2, profilers: int = 2,
                 lease_s: float = 30.0, threads: int | None = None, profiler_runs: int | None = None,
                 metrics_port: int | None = None, finalize_timeout_s: float = 600.0, resume_failed: bool = False) -> None:
        self.spec, self.out = spec, Path(out_dir).resolve()
        self.resumed: pb.ResumeResponse | None = None
        self.lock = StateDirLock(self.out).acquire()  # before anything is written: a second run exits untouched
        try:
            self._setup(spec, workers, profilers, lease_s, threads, profiler_runs, metrics_port, finalize_timeout_s)
            if resume_failed:
                self.resumed = self.controller.resume_failed(f"local-{time.time_ns()}")
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, spec: SearchSpec, workers: int, profilers: int, lease_s: float, threads: int | None,
               profiler_runs: int | None, metrics_port: int | None, finalize_timeout_s: float) -> None:
        from ..data import available_cpus

        self.n_workers, self.n_profilers = workers, profilers
        self.threads = threads or max(1, available_cpus() // max(1, workers))
        self.profiler_runs = profiler_runs
        self.token = secrets.token_urlsafe(24)
        worker_command()  # fail before the controller starts, not in every worker
        self.controller = SearchController(spec, self.out, lease_s=lease_s, searcher_processes=True, results=True,
                                           finalize_timeout_s=finalize_timeout_s)
        self._phase_profiler_spawns = 0
        self.server = ControllerServer(self.controller, self.token, "127.0.0.1:0", metrics_port=metrics_port)
        self.procs: list[WorkerProcess] = []
        self.started = time.time()

    # --- processes -----------------------------------------------------------------------------------------
    def _spawn(self, role: str, index: int) -> WorkerProcess:
        worker_id = f"local-{role}-{index}"
        cmd = [*worker_command(), role, "--controller", self.server.address, "--worker-id", worker_id,
               "--give-up-after", "60", "--parent-pid", str(os.getpid())]
        if role == "trainer":
            cmd += ["--threads", str(self.threads)]
        else:
            cmd += ["--threads", "1", "--backend", self.spec.latency.backend, "--latency-device", self.spec.latency.device,
                    "--precision", self.spec.latency.precision, "--batch-size", str(self.spec.latency.batch_size)]
            if self.profiler_runs:
                cmd += ["--runs", str(self.profiler_runs), "--warmup", str(max(1, self.profiler_runs // 5))]
        env = dict(os.environ, **{TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"})
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        handle = open(logs / f"{worker_id}.log", "a")
        proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        return WorkerProcess(role, worker_id, proc, handle)

    def start(self) -> "LocalRun":
        self.server.start()
        if self.controller.state.phase in TERMINAL_PHASES:
            return self
        if self.controller.state.phase == PHASE_PROFILING:
            self.procs += [self._spawn("profiler", i) for i in range(self.n_profilers)]
        # also in Finalizing: stage 2 trains there (a trainer with nothing to do hears "done" and exits 0)
        self.procs += [self._spawn("trainer", i) for i in range(self.n_workers)]
        self.supervise()
        return self

    def supervise(self) -> None:
        """Restart worker processes that crashed (a nonzero exit) while work remains, after releasing the lease each
        one held as ``failed``.

        Raises:
            WorkerCannotStartError: a worker exited with :data:`~gpunet.errors.EXIT_CANNOT_START` (the reason is
                its last log line).
        """
        phase = self.controller.state.phase
        for i, w in enumerate(self.procs):
            rc = w.proc.poll()
            if rc is None or rc == 0 or phase in TERMINAL_PHASES:
                continue
            self._release_dead(w, rc)
            if rc == EXIT_CANNOT_START:
                raise WorkerCannotStartError(f"{w.role} {w.worker_id}", reason=self._last_words(w))
            if w.role == "profiler" and phase != PHASE_PROFILING:
                continue
            w.exit_codes.append(rc)
            if w.restarts >= MAX_WORKER_RESTARTS:
                continue
            log.warning("worker %s exited with %s; restarting it", w.worker_id, rc)
            w.log.close()
            fresh = self._spawn(w.role, int(w.worker_id.rsplit("-", 1)[1]))
            fresh.restarts, fresh.exit_codes = w.restarts + 1, w.exit_codes
            self.procs[i] = fresh
        if phase in (PHASE_SCALING, PHASE_FINALIZING):
            self._phase_profiler(phase)

    def _last_words(self, w: WorkerProcess) -> str:
        """The last line a worker process wrote (its log), e.g. why it cannot start."""
        w.log.flush()
        try:
            lines = (self.out / "logs" / f"{w.worker_id}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        last = lines[-1].removeprefix("gpunet_worker: cannot start: ") if lines else "no output"
        return f"{last} (log: {self.out / 'logs' / (w.worker_id + '.log')})"

    def _release_dead(self, w: WorkerProcess, rc: int) -> None:
        """Give back, as ``failed``, the lease a worker process held when it died (out of memory, a crash), before
        anything is restarted: the work is a failed attempt (:mod:`.trainers`), and the restarted process, which has
        the same worker id, never gets that lease back."""
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() else f"exit code {rc}"
        answer = self.controller.release_lease(pb.ReleaseRequest(
            worker_id=w.worker_id, reason=pb.RELEASE_REASON_FAILED,
            message=f"worker process {w.worker_id} died ({how}); see {self.out / 'logs' / (w.worker_id + '.log')}"))
        if answer.released:
            log.warning("worker %s died (%s) holding %s; counted as a failed attempt (requeued: %s)", w.worker_id, how,
                        answer.work_id, answer.requeued)

    def _phase_profiler(self, phase: str) -> None:
        """Keep one profiler running while phase Scaling has layers of scaled networks to measure, or phase
        Finalizing has winners to measure; give that work up when it keeps crashing (Scaling then leaves the
        networks with those layers out; the search succeeds without the end-to-end measurements)."""
        with self.controller.lock:
            needed = self.controller.finalizing.needs_profiler() if phase == PHASE_FINALIZING \
                else bool(self.controller.profiling.batches)
        if not needed or any(w.role == "profiler" and w.proc.poll() is None for w in self.procs):
            return
        if self._phase_profiler_spawns > MAX_WORKER_RESTARTS:
            reason = f"the profiler of phase {phase} exited {self._phase_profiler_spawns} times; see {self.out / 'logs'}"
            with self.controller.lock:
                if phase == PHASE_FINALIZING:
                    self.controller.finalizing.measure.abandon(reason)
                else:
                    self.controller.profiling.abandon(reason)
            return
        self._phase_profiler_spawns += 1
        old = next((i for i, w in enumerate(self.procs) if w.role == "profiler"), None)
        fresh = self._spawn("profiler", 0)
        if old is None:
            self.procs.append(fresh)
        else:
            self.procs[old].log.close()
            self.procs[old] = fresh

    def alive(self) -> int:
        return sum(w.proc.poll() is None for w in self.procs)

    def stop_workers(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (they release their leases as preempted) and wait; SIGKILL what remains."""
        for w in self.procs:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout
        for w in self.procs:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.log.close()

    def close(self) -> None:
        """Stop the workers and the controller (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            self.stop_workers()
            self.server.stop()
        finally:
            self.lock.release()

    # --- the whole run ---------------------------------------------------------------------------------------
    def wait(self, on_tick: Callable[[pb.SearchStatus], None] | None = None, period_s: float = 0.5,
             timeout_s: float | None = None) -> pb.SearchStatus:
        """Block until the search reaches a terminal phase (or ``timeout_s``); returns the last status."""
        start = time.time()
        while True:
            status = self.controller.status(pb.StatusRequest(max_candidates=50))
            if on_tick is not None:
                on_tick(status)
            if phase_name(status.phase) in TERMINAL_PHASES:
                return status
            if timeout_s is not None and time.time() - start > timeout_s:
                return status
            self.supervise()
            if self.procs and not self.alive() and all(len(w.exit_codes) > MAX_WORKER_RESTARTS for w in self.procs if w.role == "trainer"):
                raise WorkersCrashedError("trainers", reason=f"every trainer crashed {MAX_WORKER_RESTARTS + 1} times; "
                                          f"see the logs in {self.out / 'logs'}")
            time.sleep(period_s)


def eta_seconds(status: pb.SearchStatus, started: float, now: float) -> float | None:
    """A rough ETA of the search (seconds), from the pace of finished candidates so far; None when unknown."""
    c = status.candidates
    finished = c.completed + c.stopped + c.failed
    if status.phase not in (pb.SEARCH_PHASE_SEARCHING, pb.SEARCH_PHASE_SCALING) or finished == 0:
        return None
    remaining = max(c.budget - finished, 0)
    return (now - started) / finished * remaining


def render_status(status: pb.SearchStatus, started: float) -> Any:
    """A rich renderable of the status: phase, table fill, candidates per state, best per tier, ETA."""
    from rich.table import Table

    now = time.time()
    t = Table(title=f"gpunet search [bold]{status.search_name}[/]", show_header=False, expand=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("phase", f"{phase_name(status.phase)} {status.message}".strip())
    lt = status.latency_table
    if lt.layers_needed:
        frac = lt.layers_measured / lt.layers_needed
        bar = "█" * int(30 * frac) + "░" * (30 - int(30 * frac))
        t.add_row("latency table", f"{bar} {lt.layers_measured}/{lt.layers_needed} layers")
    c = status.candidates
    t.add_row("candidates", f"{c.queued} queued · {c.running} running · {c.completed} completed · {c.stopped} stopped "
                            f"· {c.failed} failed  ({c.total}/{c.budget})")
    t.add_row("faults", f"{status.preemptions} preemptions · {status.lease_expiries} lease expiries · "
                        f"{status.active_workers} workers active")
    if status.HasField("degraded"):
        t.add_row("degraded", f"[yellow]{status.degraded.message}[/] ({status.degraded.errors} transient errors; retrying)")
    for tier in status.tiers:
        best = f"{tier.best_candidate_id}: top-1 {100 * tier.best_top1:.2f}% at {tier.best_latency_ms:.3f} ms" \
            if tier.best_candidate_id else "–"
        t.add_row(f"tier {tier.target_ms:g} ms", f"pool {tier.pool_size} · {tier.evaluated} evaluated · best {best}")
    eta = eta_seconds(status, started, now)
    t.add_row("elapsed / ETA", f"{now - started:.0f} s / {'%.0f s' % eta if eta is not None else '–'}")
    return t


def status_line(status: pb.SearchStatus, started: float) -> str:
    """One plain line of the status, for logs and non-terminal output."""
    c, lt = status.candidates, status.latency_table
    s2 = status.final_training  # stage 2's runs are counted apart from the search's candidates
    best = ", ".join(f"{t.target_ms:g}ms:{100 * t.best_top1:.1f}%" for t in status.tiers if t.best_candidate_id) or "-"
    stage2 = f", stage 2 {s2.completed + s2.stopped + s2.failed}/{s2.total} done" if s2.total else ""
    return (f"[{time.time() - started:5.0f}s] {phase_name(status.phase)}: table {lt.layers_measured}/{lt.layers_needed}, "
            f"candidates {c.completed + c.stopped - s2.completed - s2.stopped}/{c.budget} done "
            f"({c.running - s2.running} running, {c.queued - s2.queued} queued, {c.failed - s2.failed} failed){stage2}, preemptions {status.preemptions}, best {best}"
            + (f", DEGRADED: {status.degraded.message} (retrying)" if status.HasField("degraded") else ""))
