"""Controller under load: many simulated workers (gRPC clients on loopback) while the searcher runs.

    .venv/bin/python benchmarks/controller_load.py --workers 1000 --procs 4 --seconds 60 [--json]

The controller runs in this process (real gRPC server, token auth, state saved to a temporary directory,
the LA-MCTS-BO searcher proposing in its own processes) over the `gpunet-tiny` space with a latency table filled
by a fake profiler. ``--procs`` client processes each run ``workers / procs`` simulated trainers with grpc.aio.
A simulated trainer asks for work as a long poll (``WorkRequest.max_wait_s = --max-wait``; 0 polls as old
clients do: a Wait, then a sleep of its ``retry_after_s``); with a candidate it sends a heartbeat every
``--heartbeat-seconds`` (default: a third of ``--lease-seconds``), jittered as ``gpunet_worker.trainer`` jitters them
(``HEARTBEAT_JITTER``), an epoch report
every ``--epoch-seconds`` (times a factor of its own in ``1 +- --epoch-jitter``: candidates are different networks,
and with equal epochs the workers that got work in one driver round report in one burst) and a result after ``--epochs`` epochs (or when told to stop). Each simulated worker has
a channel (a TCP connection) of its own, as a worker pod has (``--workers-per-channel`` shares them: with 50 per
channel, the p50 of 1 Hz heartbeats at 1,000 workers went from 25 ms to about 500 ms on the shared HTTP/2 connections).

Prints p50 / p99 / max latency (ms, client side: call start to answer) per RPC, the call rate, the errors, and:

- ``RequestWork`` is a free trainer's first ask, with no hold (work, or Wait at once); told to wait, it long-polls,
  and those held calls that got work are the row ``RequestWork(held)``: their duration is the wait for work (the
  searcher's proposal rate), not latency, so they are not in ``all_p99_ms``; holds that ended without work are
  counted in ``held_polls_timed_out`` (``held_poll_s``: their median and shortest duration).

- ``lost_results``: results answered ``accepted`` that the state on disk does not hold after the controller stopped
  (its state reloaded from ``state.sqlite``; must be 0).
- ``server_side``: per RPC, the controller's own handler time (its Prometheus histogram, so to a bucket bound):
  the share of calls answered within 25 and 100 ms and the bound under which the p99 lies. The difference to the
  client-side figures is the transport and the clients' own scheduling on the shared cores.
- ``loop_lag``: how late a 10 ms sleep wakes on the controller's event loop and on the clients' (p50/p99/max ms):
  the wait of a ready callback for its loop.
- ``cpu_s``: CPU seconds of the controller process (gRPC server, driver, state writer), of its searcher processes
  and of the client processes, and ``load_avg``: the machine's 1-minute load average before and after.

Targets (issue 13): every RPC's p99 < 25 ms at 1,000 workers; p99 < 100 ms and no errors at 5,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def client_process(address: str, token: str, first: int, count: int, seconds: float, epochs: int, epoch_s: float,
                   epoch_jitter: float, heartbeat_s: float, max_wait_s: float, warmup_s: float, per_channel: int, out: str) -> None:
    import resource

    import grpc

    from gpunet.controller.service import tune_for_serving
    from gpunet.rpc import AUTH_METADATA_KEY, pb, pb_grpc
    from gpunet_worker.trainer import HEARTBEAT_JITTER

    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    accepted: list[str] = []
    held: list[float] = []
    details: dict[str, str] = {}
    lags: list[float] = []

    async def main() -> None:
        # A channel (a TCP connection of its own) per `per_channel` workers: on a cluster every worker pod has its own.
        channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(-(-count // per_channel))]
        stubs = [pb_grpc.SearchControllerServiceStub(channel) for channel in channels]
        metadata = ((AUTH_METADATA_KEY, f"Bearer {token}"),)
        # This process multiplexes hundreds of workers on one event loop, as the controller does, so it gets the
        # controller's tuning (GIL hand-off from gRPC's poller thread, GC pauses); a worker pod runs one call at a
        # time. Untuned, the clients' own loop stalls (up to 760 ms at 5,000 workers) were in the figures.
        tune_for_serving()
        record_from = time.monotonic() + warmup_s  # calls started before are not measured (connections, proposals ahead)
        end = record_from + seconds

        holding: set[asyncio.Task] = set()  # trainers in a held RequestWork

        async def timed(name: str, fn, request, hold_s: float = 0.0):
            t0 = time.perf_counter()
            measured = time.monotonic() >= record_from
            try:
                reply = await fn(request, metadata=metadata, timeout=30 + hold_s)
            except grpc.aio.AioRpcError as exc:
                errors[f"{name}:{exc.code().name}"] = errors.get(f"{name}:{exc.code().name}", 0) + 1
                details.setdefault(exc.code().name, exc.details())
                return None
            took = time.perf_counter() - t0
            if not measured:
                pass
            elif hold_s and reply.WhichOneof("work") == "wait":
                held.append(took)  # a held long poll that ended without work: not a latency
            else:
                latencies.setdefault(name, []).append(took)
            return reply

        async def trainer(i: int) -> None:
            wid = f"sim-{first + i}"
            stub = stubs[i // per_channel]
            await asyncio.sleep(random.random())
            immediate = True
            while time.monotonic() < end:
                # A free trainer asks first without a hold (its latency is the RPC's), then, told to wait, long-polls
                # (a held call's duration is the wait for work, reported apart as RequestWork(held)).
                # A hold is not cut short at the run's end: holds all timed to end there came back in a storm of
                # ever shorter re-polls (most of the old 5,000-worker RequestWork tail). Holds still open at the
                # end are cancelled instead.
                hold_s = 0.0 if immediate else max_wait_s
                if not immediate:
                    holding.add(asyncio.current_task())
                try:
                    reply = await timed("RequestWork" if immediate else "RequestWork(held)", stub.RequestWork,
                                        pb.WorkRequest(worker_id=wid, kind=pb.WORKER_KIND_TRAINER, max_wait_s=hold_s), hold_s)
                finally:
                    holding.discard(asyncio.current_task())
                if reply is None:
                    await asyncio.sleep(1.0)
                    continue
                if reply.WhichOneof("work") == "wait":
                    immediate = max_wait_s <= 0
                    await asyncio.sleep(reply.wait.retry_after_s if immediate else 0.0)
                    continue
                immediate = True
                if reply.WhichOneof("work") == "done":
                    return
                task = reply.candidate
                best, stop = 0.0, False
                last_beat = time.monotonic()
                own_epoch_s = epoch_s * random.uniform(1 - epoch_jitter, 1 + epoch_jitter)  # networks differ
                for epoch in range(task.start_epoch + 1, epochs + 1):
                    # As a trainer does: a heartbeat every heartbeat_s from the lease's start, an epoch report
                    # every epoch_s.
                    epoch_end = time.monotonic() + own_epoch_s
                    beat_s = heartbeat_s * random.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)
                    while last_beat + beat_s < epoch_end:
                        await asyncio.sleep(max(0.0, last_beat + beat_s - time.monotonic()))
                        last_beat = time.monotonic()
                        beat_s = heartbeat_s * random.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)
                        await timed("Heartbeat", stub.ReportProgress, pb.ProgressReport(
                            worker_id=wid, candidate_id=task.candidate_id, lease_id=task.lease_id, heartbeat=True))
                    await asyncio.sleep(max(0.0, epoch_end - time.monotonic()))
                    top1 = min(1.0, random.random() * 0.5 + 0.1 * epoch)
                    best = max(best, top1)
                    answer = await timed("ReportProgress", stub.ReportProgress, pb.ProgressReport(
                        worker_id=wid, candidate_id=task.candidate_id, lease_id=task.lease_id, epoch=epoch, top1=top1,
                        checkpoint_path=task.checkpoint_path))
                    if answer is None or answer.action != pb.PROGRESS_ACTION_CONTINUE:
                        stop = answer is not None and answer.action == pb.PROGRESS_ACTION_STOP
                        if not stop:
                            break
                        break
                else:
                    stop = True
                if stop:
                    result = await timed("ReportResult", stub.ReportResult, pb.ResultReport(
                        worker_id=wid, candidate_id=task.candidate_id, lease_id=task.lease_id, top1=best, epochs=epoch,
                        stopped_early=epoch < epochs))
                    if result is not None and result.accepted:
                        accepted.append(task.candidate_id)

        probe = asyncio.ensure_future(loop_lag(lags, record_from, end))
        tasks = [asyncio.ensure_future(trainer(i)) for i in range(count)]
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        for task in list(holding):  # idle at the end: nothing to finish (busy trainers finish their candidate)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        probe.cancel()
        for channel in channels:
            await channel.close()

    asyncio.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(out).write_text(json.dumps({"latencies": latencies, "errors": errors, "accepted": accepted, "held": held,
                                     "error_details": details, "cpu_s": usage.ru_utime + usage.ru_stime,
                                     "loop_lag_s": lags}))


async def loop_lag(out: list[float], start: float, end: float, period_s: float = 0.01) -> None:
    """Append how late each ``period_s`` sleep of this event loop wakes (s), between monotonic ``start`` and ``end``:
    the time a ready callback (an arriving answer, a call) waits for the loop."""
    while time.monotonic() < end:
        t0 = time.perf_counter()
        await asyncio.sleep(period_s)
        if time.monotonic() >= start:
            out.append(time.perf_counter() - t0 - period_s)


def lag_summary(lags: list[float]) -> dict[str, float]:
    lat = np.asarray(lags or [0.0]) * 1000
    return {"p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(lat.max()), 1)}


def pin_processes(client_pids: list[int]) -> None:
    """``--pin``: this process (the controller: its gRPC, event loop and driver threads) on CPU 0, the clients and
    the searcher processes (its children) on the others, so that neither side's CPU time queues behind the other's."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    others = set(cpus[1:])
    for child in mp.active_children():
        os.sched_setaffinity(child.pid, others)
    for pid in client_pids:
        os.sched_setaffinity(pid, others)
    for tid in os.listdir("/proc/self/task"):  # every thread of this process, gRPC core's included
        os.sched_setaffinity(int(tid), {cpus[0]})


def server_side(ctl) -> dict[str, dict[str, float]]:
    """Per RPC, from the controller's own histogram (``gpunet_rpc_duration_seconds``: handler start to answer, the
    commit wait included, the transport and the clients not): calls, the share answered within 25 and 100 ms, and
    the histogram bound the p99 lies under (ms). RequestWork's include the long polls' holds."""
    counts: dict[str, dict[float, float]] = {}
    for metric in ctl.metrics.rpc_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                counts.setdefault(sample.labels["method"], {})[float(sample.labels["le"])] = sample.value
    out = {}
    for method, buckets in counts.items():
        total = buckets[float("inf")]
        if not total:
            continue
        p99 = min(le for le, n in buckets.items() if n >= 0.99 * total)
        out[method] = {"calls": int(total), "within_25_ms": round(buckets[0.025] / total, 4),
                       "within_100_ms": round(buckets[0.1] / total, 4),
                       "p99_under_ms": p99 * 1000 if p99 != float("inf") else None}  # None: above the last bound, 5 s
    return out


def main() -> int:
    from gpunet.rpc.client import LONG_POLL_S

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--epoch-seconds", type=float, default=5.0)
    parser.add_argument("--algorithm", default="lamcts-bo")
    parser.add_argument("--max-wait", type=float, default=LONG_POLL_S,
                        help=f"seconds an idle worker's RequestWork may be held (long poll; default {LONG_POLL_S:g}, the "
                             "worker's); 0: poll as old clients do")
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--epoch-jitter", type=float, default=0.5,
                        help="each candidate's epoch lasts --epoch-seconds times a uniform factor in 1 +- this "
                             "(candidates are different networks; 0: every epoch equal, so reports come in bursts)")
    parser.add_argument("--heartbeat-seconds", type=float, default=None,
                        help="seconds between a trainer's heartbeats (default: a third of the lease, as the trainer)")
    parser.add_argument("--workers-per-channel", type=int, default=1,
                        help="simulated workers sharing one gRPC channel (one TCP connection); a worker pod has its own")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds before --seconds of measurement (calls then are run, not measured; errors count)")
    parser.add_argument("--pin", action="store_true",
                        help="the controller process on CPU 0; the clients and the searcher processes on the other CPUs")
    parser.add_argument("--searcher-priority", default="idle", choices=("idle", "nice"),
                        help="CPU priority of the searcher processes (default idle, as the controller's pod runs them)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from controller_helpers import fake_profile

    from gpunet.controller import ControllerServer, SearchController
    from gpunet.controller.service import tune_for_serving
    from gpunet.controller.state import FINISHED, ControllerState
    from gpunet.spec import API_VERSION, KIND, load_spec

    spec = load_spec({
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "load"},
        "spec": {"searchSpace": {"preset": "gpunet-tiny"},
                 "latency": {"tiers": [0.11, 0.13], "tolerance": 0.1, "samples": 4096},
                 "algorithm": {"name": args.algorithm, "budget": 100_000, "initialSamples": 8},
                 "training": {"epochs": args.epochs, "earlyStopping": {"minEpochs": 2}}},
    })
    tmp = tempfile.mkdtemp(prefix="gpunet-load-")
    ctl = SearchController(spec, tmp, lease_s=args.lease_seconds, searcher_processes=True,
                           searcher_priority=args.searcher_priority)
    fake_profile(ctl)
    tune_for_serving()  # as python -m gpunet.controller does
    server = ControllerServer(ctl, "load-token", "127.0.0.1:0").start()
    print(f"controller on {server.address}; pools {[p['pool_size'] for p in ctl.pools]}; {args.workers} simulated workers "
          f"in {args.procs} processes for {args.seconds:.0f} s", file=sys.stderr)
    per = args.workers // args.procs
    heartbeat_s = args.heartbeat_seconds if args.heartbeat_seconds is not None else args.lease_seconds / 3.0
    outs = [os.path.join(tmp, f"client-{i}.json") for i in range(args.procs)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=client_process, args=(server.address, "load-token", i * per, per, args.seconds, args.epochs,
                                                      args.epoch_seconds, args.epoch_jitter, heartbeat_s, args.max_wait, args.warmup,
                                                      args.workers_per_channel, outs[i]))
             for i in range(args.procs)]
    load_before = os.getloadavg()[0]
    server_lags: list[float] = []
    probe_from = time.monotonic() + args.warmup
    asyncio.run_coroutine_threadsafe(loop_lag(server_lags, probe_from, probe_from + args.seconds), server.loop)
    start = time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    for p in procs:
        p.start()
    if args.pin:
        pin_processes([p.pid for p in procs])
    for p in procs:
        p.join()
    wall = time.time() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    load_after = os.getloadavg()[0]
    status = ctl.status()
    commit_batches = ctl.store.commits.batches
    served = server_side(ctl)
    server.stop()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # clients and (reaped at stop) searcher processes
    saved = ControllerState.load(tmp)  # what a restarted controller would find

    merged: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    accepted: list[str] = []
    held: list[float] = []
    client_cpu = 0.0
    client_lags: list[float] = []
    error_details: dict[str, str] = {}
    for out in outs:
        data = json.loads(Path(out).read_text())
        for k, v in data["latencies"].items():
            merged.setdefault(k, []).extend(v)
        for k, v in data["errors"].items():
            errors[k] = errors.get(k, 0) + v
        accepted += data["accepted"]
        held += data["held"]
        error_details.update(data["error_details"])
        client_cpu += data["cpu_s"]
        client_lags += data["loop_lag_s"]
    lost = [c for c in accepted if c not in saved.candidates or saved.candidates[c].state not in FINISHED]
    server_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    searcher_cpu = max(0.0, children.ru_utime + children.ru_stime - client_cpu)
    rows = []
    for name in ("RequestWork", "Heartbeat", "ReportProgress", "ReportResult", "RequestWork(held)"):
        lat = np.asarray(merged.get(name, [])) * 1000
        if lat.size:
            rows.append({"rpc": name, "calls": int(lat.size), "per_s": round(lat.size / args.seconds, 1),
                         "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                         "max_ms": round(float(lat.max()), 1)})
    rpcs = [v for k, v in merged.items() if k != "RequestWork(held)"]  # a hold is a wait for work, not a latency
    everything = np.concatenate([np.asarray(v) for v in rpcs]) * 1000 if rpcs else np.zeros(1)
    summary = {"workers": args.workers, "procs": args.procs, "seconds": round(wall, 1), "measured_s": args.seconds,
               "heartbeat_s": heartbeat_s, "searcher_priority": args.searcher_priority, "epoch_s": args.epoch_seconds, "epoch_jitter": args.epoch_jitter, "workers_per_channel": args.workers_per_channel,
               "rpcs": rows,
               "all_p50_ms": round(float(np.percentile(everything, 50)), 2),
               "all_p99_ms": round(float(np.percentile(everything, 99)), 2), "errors": errors,
               "error_details": error_details, "results_accepted": len(accepted), "lost_results": len(lost), "held_polls_timed_out": len(held),
               "held_poll_s": {"p50": round(float(np.percentile(held, 50)), 1) if held else None,
                               "min": round(min(held), 1) if held else None},
               "commit_batches": commit_batches, "server_side": served,
               "loop_lag": {"controller": lag_summary(server_lags), "clients": lag_summary(client_lags)},
               "cpu_s": {"controller": round(server_cpu, 1), "searchers": round(searcher_cpu, 1),
                         "clients": round(client_cpu, 1), "wall_x_cpus": round(wall * (os.cpu_count() or 1), 1),
                         "cpus": os.cpu_count()},
               "load_avg": {"before": round(load_before, 2), "after": round(load_after, 2)},
               "candidates": {"total": status.candidates.total, "completed": status.candidates.completed,
                              "stopped": status.candidates.stopped, "running": status.candidates.running}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{'rpc':<16}{'calls':>8}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for r in rows:
            print(f"{r['rpc']:<16}{r['calls']:>8}{r['per_s']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}")
        print(f"all calls: p50 {summary['all_p50_ms']} ms, p99 {summary['all_p99_ms']} ms; errors {errors or 'none'}; "
              f"candidates {summary['candidates']}; results accepted {len(accepted)}, lost {len(lost)}; "
              f"CPU s {summary['cpu_s']}; load average {summary['load_avg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
