"""``python -m gpunet.controller``: run one search controller as a process (the controller pod).

    GPUNET_TOKEN=... python -m gpunet.controller --spec search.yaml --state-dir /data/state --port 50051 \\
        --metrics-port 9090 --health-port 50052 --tls-cert /etc/gpunet/tls/tls.crt --tls-key /etc/gpunet/tls/tls.key

The spec file is the ``NASSearch`` (or just its ``spec`` wrapped by the operator into a full document). The
process serves until the search reaches a terminal phase and then keeps serving status (``--exit-when-done``
exits instead). The result files are written into the state directory in phase Finalizing, before the search is
Succeeded; profilers measure the tier winners for them (see :mod:`gpunet.controller.finalizing`). SIGTERM stops
it cleanly; a restart resumes. It holds the state directory's lock (:mod:`gpunet.controller.lock`) while it runs:
a second controller on the same directory exits at once with status 3, naming the owner.

TLS (:mod:`gpunet.rpc.tls`): ``--tls-cert``/``--tls-key`` (``GPUNET_TLS_CERT``/``GPUNET_TLS_KEY``) serve the port with
TLS; ``--tls-client-ca`` (``GPUNET_TLS_CLIENT_CA``) also requires every client to present a certificate signed by
that CA (mutual TLS). The token is checked on every call either way. Without them the port is plaintext.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from ..rpc import TERMINAL_PHASES, TOKEN_ENV, tls


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpunet.controller", description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, required=True, help="the NASSearch YAML")
    p.add_argument("--state-dir", type=Path, required=True, help="state, latency table, checkpoints (shared volume)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default: none)")
    p.add_argument("--health-port", type=int, default=None,
                   help="plaintext port serving only grpc.health.v1, for the kubelet's grpc: probes (default: none; "
                        "health is always served on --port too)")
    p.add_argument("--lease-seconds", type=float, default=float(os.environ.get("GPUNET_LEASE_SECONDS", "300")))
    p.add_argument("--token-file", type=Path, help=f"file holding the token (default: ${TOKEN_ENV})")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit 0 once the search has finished (after --linger-seconds, so polling workers hear 'done')")
    p.add_argument("--linger-seconds", type=float, default=10.0)
    p.add_argument("--no-outputs", action="store_true",
                   help="do not measure the tier winners nor write hub/candidates/ONNX files in phase Finalizing")
    p.add_argument("--finalize-timeout-seconds", type=float,
                   default=float(os.environ.get("GPUNET_FINALIZE_TIMEOUT_SECONDS", "1800")),
                   help="how long phase Finalizing waits for profilers to measure the tier winners (default 1800)")
    p.add_argument("--tls-cert", type=Path, help=f"PEM certificate chain of the gRPC port (${tls.TLS_CERT_ENV})")
    p.add_argument("--tls-key", type=Path, help=f"PEM private key of that certificate (${tls.TLS_KEY_ENV})")
    p.add_argument("--tls-client-ca", type=Path,
                   help=f"PEM CA that client certificates must chain to: mutual TLS (${tls.TLS_CLIENT_CA_ENV})")
    p.add_argument("--log-level", default=os.environ.get("GPUNET_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s controller %(levelname)s %(message)s")
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"gpunet.controller: error: no token: set ${TOKEN_ENV} or --token-file", file=sys.stderr)
        return 2

    try:
        credentials = tls.server_credentials_from_env(args.tls_cert, args.tls_key, args.tls_client_ca)
    except tls.TLSError as exc:
        print(f"gpunet.controller: error: {exc}", file=sys.stderr)
        return 2

    from ..spec import load_spec
    from .core import SearchController
    from .lock import StateDirLock, StateDirLockedError
    from .service import ControllerServer, tune_for_serving

    spec = load_spec(args.spec)
    try:  # one owner per state directory: a second controller on it exits before it writes anything
        owner = StateDirLock(args.state_dir).acquire()
    except StateDirLockedError as exc:
        print(f"gpunet.controller: error: {exc}", file=sys.stderr)
        return 3
    controller = SearchController(spec, args.state_dir, lease_s=args.lease_seconds, searcher_processes=True,
                                  searcher_priority="idle",  # this pod serves RPCs; trainers run elsewhere
                                  results=not args.no_outputs, finalize_timeout_s=args.finalize_timeout_seconds)
    tune_for_serving()  # this process is the server: hand the GIL over quickly, keep GC pauses short
    server = ControllerServer(controller, token, f"{args.host}:{args.port}", metrics_port=args.metrics_port,
                              credentials=credentials, health_port=args.health_port).start()
    transport = ("TLS with client certificates (mutual TLS)" if args.tls_client_ca or os.environ.get(tls.TLS_CLIENT_CA_ENV)
                 else "TLS") if credentials else "plaintext"
    logging.info("serving search %s on %s:%d over %s (phase %s)", spec.name, args.host, server.port, transport,
                 controller.state.phase)
    if credentials is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.warning("the gRPC port is plaintext: the token and all messages cross the network in clear; "
                        "serve TLS with --tls-cert and --tls-key")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    done_at = None
    while not stop.wait(0.5):
        if done_at is not None and time.monotonic() - done_at >= args.linger_seconds:
            break
        if controller.state.phase in TERMINAL_PHASES and done_at is None and args.exit_when_done:
            done_at = time.monotonic()
    server.stop()
    owner.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
