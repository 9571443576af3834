"""``python -m gpunet_operator [kopf run options]``: run the operator (``kopf run -m gpunet_operator.handlers``).

Without options it watches all namespaces (``--all-namespaces``); pass ``--namespace NS`` (repeatable) to
watch only some, as the Helm chart does in namespaced mode. Settings come from the environment, see
:mod:`gpunet_operator.settings`.

High availability: with ``--peering NAME`` several replicas run with kopf peering, and exactly one is active:
each replica that is given no ``--priority`` draws a random one, the highest live peer works and the others
pause until its keep-alive lapses (``GPUNET_PEERING_LIFETIME`` seconds). Without ``--peering`` the operator runs
``--standalone``: one replica only.
"""

from __future__ import annotations

import random
import sys

import kopf.cli

_NAMESPACE_FLAGS = ("-n", "--namespace", "-A", "--all-namespaces")


def _has(args: list[str], *flags: str) -> bool:
    return any(a in flags or any(a.startswith(f"{f}=") for f in flags if f.startswith("--")) for a in args)


def kopf_args(argv: list[str]) -> list[str]:
    """The ``kopf run`` command line for our arguments ``argv``."""
    args = list(argv)
    if not _has(args, *_NAMESPACE_FLAGS):
        args.append("--all-namespaces")
    if _has(args, "-P", "--peering"):
        if not _has(args, "-p", "--priority"):
            args.append(f"--priority={random.SystemRandom().randrange(1, 2**31)}")
    elif not _has(args, "--standalone"):
        args.append("--standalone")
    return ["run", "-m", "gpunet_operator.handlers", *args]


def main(argv: list[str] | None = None) -> int:
    kopf.cli.main(kopf_args(sys.argv[1:] if argv is None else argv), standalone_mode=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
