"""Controller under load: many simulated workers (gRPC clients on loopback) while the searcher runs.

    .venv/bin/python benchmarks/controller_load.py --workers 1000 --procs 4 --seconds 60

The controller runs in this process (real gRPC server, token auth, state saved to a temporary directory,
the LA-MCTS-BO searcher proposing in its driver thread) over the `gpunet-tiny` space with a latency table filled
by a fake profiler. ``--procs`` client processes each run ``workers / procs`` simulated trainers with grpc.aio.
A simulated trainer asks for work (once a second while told to wait); with a candidate it sends one heartbeat
per second, an epoch report every ``--epoch-seconds`` and a result after ``--epochs`` epochs.

Prints p50 / p99 / max latency (ms, client side: call start to answer) per RPC and the achieved call rate.
Target (issue 5): p99 < 100 ms for work requests and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def client_process(address: str, token: str, first: int, count: int, seconds: float, epochs: int, epoch_s: float,
                   out: str) -> None:
    import grpc

    from gpunet.rpc import AUTH_METADATA_KEY, pb, pb_grpc

    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}

    async def main() -> None:
        channel = grpc.aio.insecure_channel(address)
        stub = pb_grpc.SearchControllerServiceStub(channel)
        metadata = ((AUTH_METADATA_KEY, f"Bearer {token}"),)
        end = time.monotonic() + seconds

        async def timed(name: str, fn, request):
            t0 = time.perf_counter()
            try:
                reply = await fn(request, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                errors[f"{name}:{exc.code().name}"] = errors.get(f"{name}:{exc.code().name}", 0) + 1
                return None
            latencies.setdefault(name, []).append(time.perf_counter() - t0)
            return reply

        async def trainer(i: int) -> None:
            wid = f"sim-{first + i}"
            await asyncio.sleep(random.random())
            while time.monotonic() < end:
                reply = await timed("RequestWork", stub.RequestWork, pb.WorkRequest(worker_id=wid, kind=pb.WORKER_KIND_TRAINER))
                if reply is None or reply.WhichOneof("work") == "wait":
                    await asyncio.sleep(1.0)
                    continue
                if reply.WhichOneof("work") == "done":
                    return
                task = reply.candidate
                beats_per_epoch = max(1, round(epoch_s))
                best, stop = 0.0, False
                for epoch in range(task.start_epoch + 1, epochs + 1):
                    for _ in range(beats_per_epoch - 1):
                        await asyncio.sleep(1.0)
                        await timed("Heartbeat", stub.ReportProgress, pb.ProgressReport(
                            worker_id=wid, candidate_id=task.candidate_id, lease_id=task.lease_id, heartbeat=True))
                    await asyncio.sleep(1.0)
                    top1 = min(1.0, random.random() * 0.5 + 0.1 * epoch)
                    best = max(best, top1)
                    answer = await timed("ReportProgress", stub.ReportProgress, pb.ProgressReport(
                        worker_id=wid, candidate_id=task.candidate_id, lease_id=task.lease_id, epoch=epoch, top1=top1,
                        checkpoint_path=f"/tmp/sim/{task.candidate_id}-{epoch}.pt"))
                    if answer is None or answer.action != pb.PROGRESS_ACTION_CONTINUE:
                        stop = answer is not None and answer.action == pb.PROGRESS_ACTION_STOP
                        if not stop:
                            break
                        break
                else:
                    stop = True
                if stop:
                    await timed("ReportResult", stub.ReportResult, pb.ResultReport(
                        worker_id=wid, candidate_id=task.candidate_id, lease_id=task.lease_id, top1=best, epochs=epoch,
                        stopped_early=epoch < epochs))

        await asyncio.gather(*(trainer(i) for i in range(count)))
        await channel.close()

    asyncio.run(main())
    Path(out).write_text(json.dumps({"latencies": latencies, "errors": errors}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--epoch-seconds", type=float, default=5.0)
    parser.add_argument("--algorithm", default="lamcts-bo")
    parser.add_argument("--server-threads", type=int, default=8, help="gRPC handler threads of the controller")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from controller_helpers import fake_profile

    from gpunet.controller import ControllerServer, SearchController
    from gpunet.spec import API_VERSION, KIND, load_spec

    spec = load_spec({
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "load"},
        "spec": {"searchSpace": {"preset": "gpunet-tiny"},
                 "latency": {"tiers": [0.11, 0.13], "tolerance": 0.1, "samples": 4096},
                 "algorithm": {"name": args.algorithm, "budget": 100_000, "initialSamples": 8},
                 "training": {"epochs": args.epochs, "earlyStopping": {"minEpochs": 2}}},
    })
    tmp = tempfile.mkdtemp(prefix="gpunet-load-")
    ctl = SearchController(spec, tmp, lease_s=30.0, searcher_processes=True)
    fake_profile(ctl)
    server = ControllerServer(ctl, "load-token", "127.0.0.1:0", max_workers=args.server_threads).start()
    print(f"controller on {server.address}; pools {[p['pool_size'] for p in ctl.pools]}; {args.workers} simulated workers "
          f"in {args.procs} processes for {args.seconds:.0f} s", file=sys.stderr)
    per = args.workers // args.procs
    outs = [os.path.join(tmp, f"client-{i}.json") for i in range(args.procs)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=client_process, args=(server.address, "load-token", i * per, per, args.seconds, args.epochs,
                                                      args.epoch_seconds, outs[i])) for i in range(args.procs)]
    start = time.time()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.time() - start
    status = ctl.status()
    server.stop()

    merged: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    for out in outs:
        data = json.loads(Path(out).read_text())
        for k, v in data["latencies"].items():
            merged.setdefault(k, []).extend(v)
        for k, v in data["errors"].items():
            errors[k] = errors.get(k, 0) + v
    rows = []
    for name in ("RequestWork", "Heartbeat", "ReportProgress", "ReportResult"):
        lat = np.asarray(merged.get(name, [])) * 1000
        if lat.size:
            rows.append({"rpc": name, "calls": int(lat.size), "per_s": round(lat.size / wall, 1),
                         "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                         "max_ms": round(float(lat.max()), 1)})
    everything = np.concatenate([np.asarray(v) for v in merged.values()]) * 1000 if merged else np.zeros(1)
    summary = {"workers": args.workers, "procs": args.procs, "seconds": round(wall, 1), "rpcs": rows,
               "all_p50_ms": round(float(np.percentile(everything, 50)), 2),
               "all_p99_ms": round(float(np.percentile(everything, 99)), 2), "errors": errors,
               "candidates": {"total": status.candidates.total, "completed": status.candidates.completed,
                              "stopped": status.candidates.stopped, "running": status.candidates.running}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{'rpc':<16}{'calls':>8}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for r in rows:
            print(f"{r['rpc']:<16}{r['calls']:>8}{r['per_s']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}")
        print(f"all calls: p50 {summary['all_p50_ms']} ms, p99 {summary['all_p99_ms']} ms; errors {errors or 'none'}; "
              f"candidates {summary['candidates']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
