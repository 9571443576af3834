"""``python -m gpunet_worker trainer|profiler``: run one worker process.

Configuration comes from flags or the environment (what the operator's pods set):

- ``--controller`` / ``GPUNET_CONTROLLER``: ``host:port`` of the search controller.
- ``GPUNET_TOKEN``: the search's token (``--token-file`` reads it from a file instead).
- ``--worker-id`` / ``GPUNET_WORKER_ID`` (else ``POD_NAME``, else ``<hostname>-<pid>``): stable worker id.
- TLS (:mod:`gpunet.rpc.tls`): ``--tls-ca`` / ``GPUNET_TLS_CA`` (the CA of the controller's certificate),
  ``--tls-cert`` / ``GPUNET_TLS_CERT`` and ``--tls-key`` / ``GPUNET_TLS_KEY`` (this worker's certificate, when the
  controller requires mutual TLS), ``--tls-server-name`` / ``GPUNET_TLS_SERVER_NAME`` (check the controller's
  certificate against this name instead of the address's host), ``--tls`` / ``GPUNET_TLS=1`` (TLS with the
  system's CA roots). Any of them makes the channel TLS; none is plaintext.
- ``--parent-pid``: die with that process (``gpunet run`` passes its own pid): on Linux the kernel SIGKILLs this
  worker when its parent dies (``prctl(PR_SET_PDEATHSIG)``), elsewhere a thread watches the parent pid. So a
  SIGKILLed or OOM-killed ``gpunet run`` leaves no worker behind to write into its state directory.

Exit codes: 0 done (or SIGTERM), 1 the controller unreachable, 2 a bad option or token, :data:`gpunet.errors.EXIT_CANNOT_START`
(78, ``EX_CONFIG``) this worker cannot work here: its device, latency backend or dataset is missing (the reason
is the last line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

from gpunet.errors import EXIT_CANNOT_START
from gpunet.rpc import ADDRESS_ENV, TOKEN_ENV
from gpunet.rpc import tls
from gpunet.rpc.client import ControllerClient

from .client import WorkerCannotStart

#: Linux ``prctl`` option: the signal the kernel sends this process when its parent exits.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process die when ``parent_pid`` (its parent) does: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux,
    else a daemon thread that polls the parent pid twice a second. Exits at once if the parent is already gone.

    SIGKILL, not SIGTERM: a worker whose controller died must not go on to write a checkpoint or release a lease
    (its lease is the restarted run's business now). Note that Linux sends the signal when the parent *thread*
    that spawned this process exits; ``gpunet run`` spawns workers from its main thread.
    """
    import ctypes
    import threading
    import time

    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="gpunet-parent-watch", daemon=True).start()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpunet_worker", description="Trainer or profiler worker of a gpunet search.")
    p.add_argument("role", choices=("trainer", "profiler"))
    p.add_argument("--controller", default=os.environ.get(ADDRESS_ENV, "127.0.0.1:50051"), help="controller host:port")
    p.add_argument("--token-file", type=Path, help=f"file holding the token (default: ${TOKEN_ENV})")
    p.add_argument("--worker-id", default=os.environ.get("GPUNET_WORKER_ID") or os.environ.get("POD_NAME")
                   or f"{socket.gethostname()}-{os.getpid()}")
    p.add_argument("--threads", type=int, default=int(os.environ.get("GPUNET_THREADS", "0")),
                   help="CPU threads for torch / ONNX Runtime (0: library default; profilers default to 1)")
    p.add_argument("--device", default=os.environ.get("GPUNET_DEVICE", "auto"), help="trainer device: auto, cpu, cuda or cuda:<index>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=None, help="profiler: timed runs per layer (backend default)")
    p.add_argument("--warmup", type=int, default=None, help="profiler: untimed runs per layer (backend default)")
    p.add_argument("--backend", default=os.environ.get("GPUNET_LATENCY_BACKEND", "onnxruntime"),
                   help="profiler: latency backend (spec.latency.backend)")
    p.add_argument("--precision", default=os.environ.get("GPUNET_LATENCY_PRECISION", "fp32"))
    p.add_argument("--latency-device", default=os.environ.get("GPUNET_LATENCY_DEVICE", "cpu"))
    p.add_argument("--batch-size", type=int, default=int(os.environ.get("GPUNET_LATENCY_BATCH_SIZE", "1")))
    p.add_argument("--give-up-after", type=float, default=None, help="seconds without the controller before exiting 1")
    p.add_argument("--parent-pid", type=int, default=None, help="die with this process, our parent (gpunet run)")
    env = os.environ.get
    p.add_argument("--tls", action="store_true", default=env(tls.TLS_ENV, "") in ("1", "true"),
                   help=f"TLS with the system's CA roots (${tls.TLS_ENV}=1; implied by the other --tls-* options)")
    p.add_argument("--tls-ca", type=Path, default=env(tls.TLS_CA_ENV) or None,
                   help=f"PEM CA certificates of the controller's certificate (${tls.TLS_CA_ENV})")
    p.add_argument("--tls-cert", type=Path, default=env(tls.TLS_CERT_ENV) or None,
                   help=f"this worker's PEM certificate, for mutual TLS (${tls.TLS_CERT_ENV})")
    p.add_argument("--tls-key", type=Path, default=env(tls.TLS_KEY_ENV) or None,
                   help=f"this worker's PEM private key, for mutual TLS (${tls.TLS_KEY_ENV})")
    p.add_argument("--tls-server-name", default=env(tls.TLS_SERVER_NAME_ENV) or None,
                   help=f"name the controller's certificate is checked against (${tls.TLS_SERVER_NAME_ENV})")
    p.add_argument("--log-level", default=os.environ.get("GPUNET_LOG_LEVEL", "INFO"))
    return p


def profiler_backend(args: argparse.Namespace) -> Any:
    """The latency backend of a profiler's flags (``--backend``, ``--latency-device``, ``--precision``, ...).

    Every backend is given the device and the precision (and refuses what it cannot measure), so the layer keys a
    profiler is sent, which name the spec's precision, always match the target it measures.
    """
    from gpunet.latency import get_backend

    options = {"runs": args.runs, "warmup": args.warmup, "batch_size": args.batch_size,
               "device": args.latency_device, "precision": args.precision}
    if args.backend in ("onnxruntime", "torch") and args.latency_device == "cpu":
        options["threads"] = args.threads or 1
    return get_backend(args.backend, **options)


def cannot_start(exc: BaseException) -> int:
    """Say why this worker cannot work here, as the last line on stderr, and return :data:`EXIT_CANNOT_START`."""
    print(f"gpunet_worker: cannot start: {exc}", file=sys.stderr, flush=True)
    return EXIT_CANNOT_START


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.role} {args.worker_id} %(levelname)s %(message)s")
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV)
    if not token:
        print(f"gpunet_worker: error: no token: set ${TOKEN_ENV} or --token-file", file=sys.stderr)
        return 2
    try:
        credentials = None
        if args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
            credentials = tls.channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except tls.TLSError as exc:
        print(f"gpunet_worker: error: {exc}", file=sys.stderr)
        return 2
    client = ControllerClient(args.controller, token, give_up_s=args.give_up_after, credentials=credentials,
                              options=tls.channel_options(args.tls_server_name) if credentials else None)
    if args.role == "trainer":
        import torch

        from gpunet.train import DeviceError, resolve_device

        from .trainer import TrainerWorker

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        try:
            device = resolve_device(args.device)
        except DeviceError as exc:
            return cannot_start(exc)
        worker = TrainerWorker(client, args.worker_id, device=device, seed=args.seed)
    else:
        from gpunet.errors import GpunetError

        from .profiler import ProfilerWorker

        try:
            backend = profiler_backend(args)
        except GpunetError as exc:  # the backend's library, GPU or binary is missing, or it refuses the target
            return cannot_start(exc)
        worker = ProfilerWorker(client, args.worker_id, backend)

    def on_sigterm(signum: int, frame: object) -> None:
        logging.getLogger("gpunet_worker").warning("SIGTERM: saving and releasing the lease (preempted)")
        worker.preempted.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return worker.run()
    except WorkerCannotStart as exc:
        return cannot_start(exc)
    except KeyboardInterrupt:
        worker.preempted.set()
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
