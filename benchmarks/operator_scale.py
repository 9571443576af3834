"""The operator at scale on a real control plane: many searches, many trainer pods, a mass spot reclaim.

    KUBEBUILDER_ASSETS=DIR .venv/bin/python benchmarks/operator_scale.py [--searches 20] [--trainers 50] \\
        [--nodes 100] [--reclaim 0.3] [--taint KEY:EFFECT] [--steady-seconds 60] [--poll 10] [--out result.json]

The control plane is the cluster tests' (tests/cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler from ``KUBEBUILDER_ASSETS``), with ``--nodes`` simulated nodes (four on-demand CPU nodes for the
search controllers, the rest GPU nodes with 12 GPUs each, 70% of them GKE/AKS/EKS spot). The operator is the
real one (``python -m gpunet_operator``, the chart's arguments, RBAC and default poll interval); each search's
controller is a scripted gRPC server in this process that leases one candidate to every trainer pod and records
when each lease is released (the measured object is the operator, not the controller).

Steps: create ``--searches`` NASSearches of ``--trainers`` trainers each, wait for every trainer pod to run and
hold a lease (and the operator to mark it busy), run ``--steady-seconds`` in steady state, then taint
``--reclaim`` of the nodes at once (spot GPU nodes). The default taint is GKE's spot notice, which the operator
watches for; a NoExecute key it does not know leaves the marking to the taint-eviction controller, whose pace is
kube-controller-manager's client rate limit (20 requests/s by default), not the operator's.

Prints one JSON object: the operator's CPU seconds and peak RSS (``/proc``), its API requests (the API server's
audit log of its ServiceAccount) in all and per minute in steady state, the status-patch bytes per search (the
bodies of its ``nassearches/status`` requests, from the audit log) and the largest status, and the time from the
taints to the last lease released. Targets (issue 10): every lease released within 10 s at 30% reclaim; each
search's status below 256 KiB; the operator below 200 MiB RSS.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster.actors import socket_address  # noqa: E402
from cluster.controlplane import ControlPlane, missing_assets  # noqa: E402
from cluster.install import apply, bound_claim, ensure_namespace, install_chart, operator_process, wait_for  # noqa: E402
from cluster.nodes import NodeSimulator  # noqa: E402
from gpunet.rpc import pb, pb_grpc, tls  # noqa: E402

NS, CLAIM = "scale", "scale-data"
RELEASE, OPERATOR_NAMESPACE = "nas", "gpunet-system"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}-gpunet-nas"
GPUS_PER_NODE, CPU_NODES = 12, 4
#: GKE's notice that a spot VM is about to be reclaimed (on the operator's list of preemption taints).
DEFAULT_TAINT = "cloud.google.com/impending-node-termination:NoSchedule"


class ScaleController(pb_grpc.SearchControllerServiceServicer):
    """One search's controller, scripted: a pool of candidates leased to trainer pods; releases are timed."""

    def __init__(self, name: str, candidates: int) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.queued = [f"t0-c{i:04d}" for i in range(candidates)]
        self.leases: dict[str, tuple[str, str]] = {}  # worker -> (candidate, lease)
        self.released: dict[str, float] = {}  # worker -> when its lease was released (time.time())
        self.preemptions = 0
        self._next = 0

    def lease_to(self, worker: str) -> bool:
        with self.lock:
            if worker in self.leases or not self.queued:
                return worker in self.leases
            self._next += 1
            self.leases[worker] = (self.queued.pop(0), f"L{self._next}")
            return True

    def GetStatus(self, request: Any, context: Any) -> Any:
        with self.lock:
            records = [pb.CandidateRecord(id=c, state="running", worker_id=w, lease_id=lease, epochs=1, top1=0.5)
                       for w, (c, lease) in self.leases.items()]
            records += [pb.CandidateRecord(id=c, state="queued") for c in self.queued]
            return pb.SearchStatus(phase=pb.SEARCH_PHASE_SEARCHING, search_name=self.name,
                                   latency_table=pb.LatencyTableProgress(layers_needed=100, layers_measured=100),
                                   candidates=pb.CandidateCounts(queued=len(self.queued), running=len(self.leases),
                                                                 total=len(records), budget=len(records)),
                                   preemptions=self.preemptions, records=records)

    def ReleaseLease(self, request: Any, context: Any) -> Any:
        with self.lock:
            held = self.leases.pop(request.worker_id, None)
            if held is None:
                return pb.ReleaseResponse(released=False)
            self.queued.insert(0, held[0])
            self.released[request.worker_id] = time.time()
            if request.reason == pb.RELEASE_REASON_PREEMPTED:
                self.preemptions += 1
            return pb.ReleaseResponse(released=True, work_id=held[0], requeued=True, lease_id=held[1])


def search(name: str, trainers: int) -> dict[str, Any]:
    return {"apiVersion": "nas.gpunet.dev/v1alpha1", "kind": "NASSearch", "metadata": {"name": name, "namespace": NS},
            "spec": {"searchSpace": {"preset": "gpunet-tiny"}, "latency": {"tiers": [0.1]},
                     "algorithm": {"name": "random", "budget": 100},
                     "trainers": {"maxReplicas": trainers, "resources": {"requests": {"cpu": "1", "nvidia.com/gpu": 1},
                                                                         "limits": {"nvidia.com/gpu": 1}},
                                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
                     "profilers": {"replicas": 0}, "controller": {"resources": {"requests": {"cpu": "1"}}},
                     "storage": {"existingClaim": CLAIM}}}


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and peak RSS in bytes of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return cpu, int(hwm.split()[1]) * 1024


def audit(cp: ControlPlane) -> list[dict[str, Any]]:
    """The operator's requests (one audit event each; watches count once)."""
    seen: dict[str, dict[str, Any]] = {}
    for e in cp.audit_events():
        if e["user"]["username"] == OPERATOR_USER:
            seen[e["auditID"]] = e
    return list(seen.values())


def _t(stamp: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with ControlPlane.start(workdir, os.environ["KUBEBUILDER_ASSETS"], audited_users=(OPERATOR_USER,),
                            audited_bodies=(("nas.gpunet.dev", "nassearches/status"),)) as cp, contextlib.ExitStack() as cleanup:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(cp.admin_kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 16
        api = client.ApiClient(cfg)
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        chart = ROOT / "charts" / "gpunet-nas"
        for path in sorted((chart / "crds").glob("*.yaml")):
            for crd in (d for d in yaml.safe_load_all(path.read_text()) if d):
                apply(api, crd)
        ensure_namespace(api, "default")
        sim = NodeSimulator(api, renew_every_s=10.0)
        gpu_nodes = args.nodes - CPU_NODES
        spot_pools = ("gke", "aks", "eks")
        spot_count = round(0.7 * gpu_nodes)
        for i in range(CPU_NODES):
            sim.add_node(f"cpu-{i}", gpus=0, cpu="64")
        for i in range(gpu_nodes):
            spot = spot_pools[i % 3] if i < spot_count else None
            sim.add_node(f"gpu-{'spot-' + spot if spot else 'ondemand'}-{i}", gpus=GPUS_PER_NODE, cpu="192", memory="2Ti", spot=spot)
        sim.start()
        cleanup.callback(sim.stop)
        ensure_namespace(api, NS)
        bound_claim(api, NS, CLAIM, "1Ti")
        sockets = Path(tempfile.mkdtemp(prefix="gn-"))
        pod = install_chart(api, RELEASE, OPERATOR_NAMESPACE, {})
        operator = operator_process(cp, api, pod, OPERATOR_NAMESPACE, sockets, workdir / "operator.log",
                                    poll_s=args.poll, backoff_max_s=300.0)
        operator.start()
        cleanup.callback(operator.stop)
        started = time.time()
        names = [f"scale-{i:02d}" for i in range(args.searches)]
        controllers = {n: ScaleController(n, args.trainers + 10) for n in names}
        for n in names:
            custom.create_namespaced_custom_object("nas.gpunet.dev", "v1alpha1", NS, "nassearches", search(n, args.trainers))
        for n in names:
            wait_for(f"{n}'s token and TLS Secrets", lambda: exists_secret(core, f"{n}-token") and exists_secret(core, f"{n}-tls"),
                     timeout=120)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            pb_grpc.add_SearchControllerServiceServicer_to_server(controllers[n], server)
            # TLS with the certificate the operator made for the search, as its controller pod would serve it
            pem = {k: base64.b64decode(v) for k, v in core.read_namespaced_secret(f"{n}-tls", NS).data.items()}
            server.add_secure_port(socket_address(sockets, NS, n), tls.server_credentials(pem["tls.crt"], pem["tls.key"]))
            server.start()
            cleanup.callback(server.stop, 0)

        def lease_running_trainers() -> int:
            leased = 0
            for p in core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/component=trainer").items:
                if p.status.phase == "Running" and p.metadata.deletion_timestamp is None:
                    leased += controllers[p.metadata.labels["nas.gpunet.dev/search"]].lease_to(p.metadata.name)
            return leased

        total = args.searches * args.trainers
        wait_for(f"{total} trainer pods running with a lease", lambda: lease_running_trainers() >= total, timeout=900, every=2.0)
        leased_at = time.time()

        def busy_pods_protected() -> bool:  # the operator gave every leased pod its deletion cost: steady state
            pods = core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/component=trainer").items
            return sum((p.metadata.annotations or {}).get("controller.kubernetes.io/pod-deletion-cost") == "1000" for p in pods) >= total

        wait_for("the operator to protect every busy trainer", busy_pods_protected, timeout=300, every=1.0)
        ready_at = time.time()
        cpu_ready, _ = proc_usage(operator.proc.pid)
        time.sleep(args.steady_seconds)
        steady_end = time.time()
        cpu_steady, _ = proc_usage(operator.proc.pid)

        spot_nodes = sorted(n for n, node in sim.nodes.items() if node.spot and node.gpus)
        doomed = spot_nodes[:round(args.reclaim * args.nodes)]
        pods = core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/component=trainer").items
        lost = {p.metadata.name: p.metadata.labels["nas.gpunet.dev/search"] for p in pods if p.spec.node_name in doomed
                and p.metadata.name in controllers[p.metadata.labels["nas.gpunet.dev/search"]].leases}
        node_of = {p.metadata.name: p.spec.node_name for p in pods}
        key, effect = args.taint.rsplit(":", 1)
        taint = {"key": key, "value": "true", "effect": effect}
        marked: dict[str, float] = {}
        watcher = threading.Thread(target=watch_marks, args=(api, set(lost), marked), daemon=True)
        watcher.start()
        time.sleep(1.0)  # the watch is open
        tainted: dict[str, float] = {}  # node -> when its taint was written (the API server answered)

        def put_taint(node: str) -> None:
            sim.taint(node, taint)
            tainted[node] = time.time()

        tainted_at = time.time()
        with futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put_taint, doomed))
        taints_done = time.time()

        def all_released() -> bool:
            return all(pod_name in controllers[s].released for pod_name, s in lost.items())

        wait_for("every lost pod's lease to be released", all_released, timeout=300, every=0.1)
        last_release = max(controllers[s].released[p] for p, s in lost.items())
        after_taint = sorted(controllers[s].released[p] - tainted[node_of[p]] for p, s in lost.items())
        after_mark = sorted(controllers[s].released[p] - marked[p] for p, s in lost.items() if p in marked)
        marks = sorted(marked[p] - tainted_at for p in lost if p in marked)

        def counted() -> int:
            return sum(int(((custom.get_namespaced_custom_object("nas.gpunet.dev", "v1alpha1", NS, "nassearches", n).get("status")
                             or {}).get("counters") or {}).get("preempted") or 0) for n in names)

        wait_for("status.counters.preempted to count every loss", lambda: counted() >= len(lost), timeout=10 * args.poll + 60, every=1.0)
        counted_at = time.time()
        ended = time.time()
        cpu_end, peak_rss = proc_usage(operator.proc.pid)
        statuses = {n: (custom.get_namespaced_custom_object("nas.gpunet.dev", "v1alpha1", NS, "nassearches", n).get("status") or {})
                    for n in names}
        time.sleep(1)  # the audit batch
        events = audit(cp)

    steady = [e for e in events if ready_at <= _t(e["requestReceivedTimestamp"]) < steady_end]
    status_bytes = {n: 0 for n in names}
    status_patches = {n: 0 for n in names}
    for e in events:
        ref = e.get("objectRef") or {}
        if ref.get("resource") == "nassearches" and ref.get("subresource") == "status" and e["verb"] == "patch":
            status_patches[ref["name"]] += 1
            status_bytes[ref["name"]] += len(json.dumps(e.get("requestObject") or {}, separators=(",", ":")))
    sizes = {n: len(json.dumps(st, separators=(",", ":"))) for n, st in statuses.items()}
    release_s = last_release - tainted_at
    return {
        "searches": args.searches, "trainers_per_search": args.trainers, "nodes": args.nodes, "reclaim_fraction": args.reclaim,
        "taint": args.taint,
        "poll_interval_s": args.poll,
        "trainer_pods_running_with_a_lease": total, "seconds_to_all_running": round(leased_at - started, 1),
        "seconds_to_busy_pods_protected": round(ready_at - leased_at, 1),
        "operator": {"cpu_seconds_total": round(cpu_end, 2), "cpu_seconds_steady": round(cpu_steady - cpu_ready, 2),
                     "steady_seconds": round(steady_end - ready_at, 1), "peak_rss_mib": round(peak_rss / 2**20, 1)},
        "api_requests": {"total": len(events), "per_minute_overall": round(len(events) / (ended - started) * 60, 1),
                         "per_minute_steady": round(len(steady) / (steady_end - ready_at) * 60, 1),
                         "by_verb": _count(e["verb"] for e in events)},
        "status": {"patch_bytes_per_search_mean": round(sum(status_bytes.values()) / len(names)),
                   "patch_bytes_per_search_max": max(status_bytes.values()),
                   "patches_per_search_mean": round(sum(status_patches.values()) / len(names), 1),
                   "largest_status_bytes": max(sizes.values())},
        "reclaim": {"nodes_tainted": len(doomed), "leased_pods_lost": len(lost), "taint_calls_s": round(taints_done - tainted_at, 2),
                    "seconds_from_first_taint_to_last_release": round(release_s, 2),
                    "seconds_from_its_node_taint_to_release_p50_max": _p50_max(after_taint),
                    "seconds_from_taint_to_counted_in_status": round(counted_at - tainted_at, 1),
                    "pods_marked_by_the_control_plane": len(marked),
                    "seconds_from_taint_to_pod_marked_p50_max": _p50_max(marks),
                    "seconds_from_pod_marked_to_release_p50_max": _p50_max(after_mark),
                    "preempted_counted": sum(int((st.get("counters") or {}).get("preempted") or 0) for st in statuses.values())},
        "targets": {"all_released_within_10s_of_their_taint": after_taint[-1] <= 10.0, "status_below_256KiB": max(sizes.values()) < 256 * 1024,
                    "operator_below_200MiB": peak_rss < 200 * 2**20},
    }


def watch_marks(api: client.ApiClient, pods: set[str], marked: dict[str, float]) -> None:
    """Record when each of ``pods`` is first seen marked by the control plane (DisruptionTarget or deletion)."""
    from kubernetes import watch
    from urllib3.exceptions import ProtocolError

    deadline = time.monotonic() + 600
    while len(marked) < len(pods) and time.monotonic() < deadline:
        try:
            for event in watch.Watch().stream(client.CoreV1Api(api).list_namespaced_pod, NS, timeout_seconds=60):
                pod = event["object"]
                name = pod.metadata.name
                if name in pods and name not in marked and (event["type"] == "DELETED" or pod.metadata.deletion_timestamp or any(
                        c.type == "DisruptionTarget" and c.status == "True" for c in pod.status.conditions or [])):
                    marked[name] = time.time()
                if len(marked) == len(pods):
                    return
        # A 504 "too large resource version" from a lagging watch cache, or a stream the API server cut (it ends
        # watches at will, and at teardown): watch again.
        except (client.exceptions.ApiException, ProtocolError):
            time.sleep(0.2)


def exists_secret(core: client.CoreV1Api, name: str) -> bool:
    try:
        return bool(core.read_namespaced_secret(name, NS).data)
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _p50_max(values: list[float]) -> list[float] | None:
    return [round(values[len(values) // 2], 2), round(values[-1], 2)] if values else None


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--searches", type=int, default=20)
    p.add_argument("--trainers", type=int, default=50, help="trainer pods per search")
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--reclaim", type=float, default=0.3, help="fraction of the nodes reclaimed at once")
    p.add_argument("--steady-seconds", type=float, default=60.0)
    p.add_argument("--taint", default=DEFAULT_TAINT, help="KEY:EFFECT put on the reclaimed nodes; a key that is not on the "
                   "operator's list (e.g. cloud.google.com/gke-spot-termination:NoExecute) leaves the work to the "
                   "taint-eviction controller")
    p.add_argument("--poll", type=float, default=10.0, help="the operator's poll interval (the chart's default)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--workdir", type=Path, help="keep the control plane's logs here")
    args = p.parse_args()
    why = missing_assets(os.environ.get("KUBEBUILDER_ASSETS"))
    if why:
        print(f"operator_scale: {why}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpunet-scale-"))
    result = run(args, workdir)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
