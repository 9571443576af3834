"""Atomic file writes: readers (and a restart after a crash) see the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Callable


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` atomically: a temporary file in the same folder (named with the
    process id, so concurrent writers never share one), fsync, then rename over ``path``. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as compact JSON to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(json.dumps(data, separators=(",", ":")).encode()))
