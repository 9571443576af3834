"""``python -m gpunet_operator [kopf run options]``: run the operator (``kopf run -m gpunet_operator.handlers``).

Without options it watches all namespaces (``--all-namespaces``); pass ``--namespace NS`` (repeatable) to
watch only some, as the Helm chart does in namespaced mode. Settings come from the environment, see
:mod:`gpunet_operator.settings`.
"""

from __future__ import annotations

import sys

import kopf.cli


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("-n", "--namespace", "-A", "--all-namespaces") or a.startswith("--namespace=") for a in args):
        args.append("--all-namespaces")
    kopf.cli.main(["run", "--standalone", "-m", "gpunet_operator.handlers", *args], standalone_mode=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
