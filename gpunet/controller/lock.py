"""One owner per state directory: an exclusive lock that a ``gpunet run`` or a controller process holds on its
state directory for as long as it runs.

Two owners of one directory would corrupt each other: candidate numbers restart, rows are overwritten, searcher
snapshots collide. So the second one exits at once, naming the first, and the first goes on untouched (the
second writes nothing before it holds the lock).

The lock is ``flock(2)`` on ``<state dir>/owner.lock`` (:data:`LOCK_FILE`), which the kernel drops when its holder
dies, however it dies (SIGKILL, the OOM killer): a stale lock never blocks a restart. The file also holds the
owner's pid, host and command line, for the message. On NFS, Linux emulates ``flock`` with POSIX record locks
(kernel >= 2.6.12), so the lock holds across the nodes of a shared volume.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import GpunetError

#: The lock file in the state directory.
LOCK_FILE = "owner.lock"


class StateDirLockedError(GpunetError, RuntimeError):
    """Another process owns the state directory (its pid, host and command are in the message)."""


class StateDirLock:
    """The exclusive lock on a state directory. Use :meth:`acquire` (or ``with``), then :meth:`release`.

    Args:
        state_dir: the directory (created if missing).
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "StateDirLock":
        """Take the lock without waiting.

        Raises:
            StateDirLockedError: another process (or another lock object of this one) holds it.
        """
        if self._fd is not None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirLockedError("state directory", str(self.dir.resolve()), "a directory no other gpunet run or "
                                      "controller uses (stop that one first, or choose another --out / --state-dir)",
                                      reason=f"in use by {owner}") from None
        os.ftruncate(fd, 0)
        cmd = " ".join(sys.argv)[:300]
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')} "
                      f"({cmd})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of the open file drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "StateDirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
