"""``python -m gpunet.controller``: run one search controller as a process (the controller pod).

    GPUNET_TOKEN=... python -m gpunet.controller --spec search.yaml --state-dir /data/state --port 50051 \\
        --metrics-port 9090

The spec file is the ``NASSearch`` (or just its ``spec`` wrapped by the operator into a full document). The
process serves until the search reaches a terminal phase, writes the result files into the state directory,
and then keeps serving status (``--exit-when-done`` exits instead). SIGTERM stops it cleanly; a restart resumes.
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

from ..rpc import TERMINAL_PHASES, TOKEN_ENV


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpunet.controller", description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, required=True, help="the NASSearch YAML")
    p.add_argument("--state-dir", type=Path, required=True, help="state, latency table, checkpoints (shared volume)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default: none)")
    p.add_argument("--lease-seconds", type=float, default=float(os.environ.get("GPUNET_LEASE_SECONDS", "300")))
    p.add_argument("--token-file", type=Path, help=f"file holding the token (default: ${TOKEN_ENV})")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit 0 once the search has finished (after --linger-seconds, so polling workers hear 'done')")
    p.add_argument("--linger-seconds", type=float, default=10.0)
    p.add_argument("--no-outputs", action="store_true", help="do not write hub/candidates/ONNX files at the end")
    p.add_argument("--log-level", default=os.environ.get("GPUNET_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s controller %(levelname)s %(message)s")
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"gpunet.controller: error: no token: set ${TOKEN_ENV} or --token-file", file=sys.stderr)
        return 2

    from ..spec import load_spec
    from .core import SearchController
    from .service import ControllerServer
    from .state import PHASE_SUCCEEDED

    spec = load_spec(args.spec)
    controller = SearchController(spec, args.state_dir, lease_s=args.lease_seconds, searcher_processes=True)
    server = ControllerServer(controller, token, f"{args.host}:{args.port}", metrics_port=args.metrics_port).start()
    logging.info("serving search %s on %s:%d (phase %s)", spec.name, args.host, server.port, controller.state.phase)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    wrote = False
    done_at = None
    while not stop.wait(0.5):
        if done_at is not None and time.monotonic() - done_at >= args.linger_seconds:
            break
        if controller.state.phase in TERMINAL_PHASES and not wrote:
            wrote = True
            if controller.state.phase == PHASE_SUCCEEDED and not args.no_outputs:
                from .outputs import write_outputs

                try:
                    write_outputs(spec, args.state_dir)
                except Exception:  # noqa: BLE001 - the search itself is done and saved
                    logging.exception("writing the result files failed")
            if args.exit_when_done:
                done_at = time.monotonic()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
