"""``python slow_results.py SECONDS MARKERS CONTROLLER-ARGS...``: the real search controller
(``python -m gpunet.controller``) whose write-results step of phase Finalizing first waits ``SECONDS``.

The end-of-search test uses it to make writing the results take longer than the controller pod's termination
grace period. The step then writes the real result files; ``MARKERS/results-started`` and
``MARKERS/results-written`` record when it began and when the files were all written (seconds since the epoch).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    seconds, markers, args = float(argv[0]), Path(argv[1]), argv[2:]
    markers.mkdir(parents=True, exist_ok=True)

    from gpunet.controller import finalizing
    from gpunet.controller.__main__ import main as controller_main

    write = finalizing.WriteResults.run

    def slow_write(self: Any, now: float) -> bool:
        (markers / "results-started").write_text(repr(time.time()))
        time.sleep(seconds)
        done = write(self, now)
        (markers / "results-written").write_text(repr(time.time()))
        return done

    finalizing.WriteResults.run = slow_write  # type: ignore[method-assign]
    return controller_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
