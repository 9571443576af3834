"""Atomic file writes: readers (and a restart after a crash) see the old file or the new one, never half of one.

Every file the project writes for others to read (controller state exports, searcher snapshots, the
stratification, training checkpoints, the model hub) goes through :func:`atomic_file`: the content is written to
a temporary file made by :mod:`tempfile` in the target's folder (a unique name, so concurrent writers, threads of
one process included, never share one), flushed and fsynced, renamed over the target, and the folder is fsynced so
that the rename itself survives a crash. A writer that fails leaves the target as it was and no temporary file.

    write_json_atomic("hub.json", hub)
    write_text_atomic("hub.md", text)
    write_atomic("model.pt", lambda f: torch.save(state, f))
    with atomic_file("candidates.jsonl", "w") as f:   # many writes, one atomic file
        for record in records:
            f.write(json.dumps(record) + "\\n")
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it, which races with
    other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


#: Permission bits of a new file: what ``open()`` would give (``0o666`` less the umask); ``mkstemp`` gives ``0o600``.
_FILE_MODE = 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """A file object whose content replaces ``path`` atomically when the block ends without an exception.

    Args:
        path: the target; its folder is created when missing.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding for ``mode="w"`` (default UTF-8).

    An exception in the block removes the temporary file and leaves ``path`` untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: got {mode!r}; expected 'wb' or 'w'")
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` through ``write(binary_file)`` atomically (see :func:`atomic_file`), e.g.
    ``write_atomic(p, lambda f: torch.save(state, f))``. Returns ``path``."""
    with atomic_file(path, "wb") as f:
        write(f)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically. Returns ``path``."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically. Returns ``path``."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = None) -> Path:
    """Write ``data`` as JSON to ``path`` atomically: compact by default, pretty with ``indent``. Returns ``path``."""
    separators = (",", ":") if indent is None else (",", ": ")
    return write_text_atomic(path, json.dumps(data, indent=indent, separators=separators))
