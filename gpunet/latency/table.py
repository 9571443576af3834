"""The latency table: per-layer measurements in one SQLite file (GPUNet paper, 3.2).

Storage is a SQLite file opened through :mod:`gpunet.sqlite` (WAL mode), so one writer (the controller, or
``gpunet latency build``) and any number of readers (estimators, other processes) use the file at the
same time: readers see the last committed state and never block the writer.

Each row holds one :class:`LayerKey` (its digest is the primary key; its text and JSON are kept for
humans and for re-measuring) and one :class:`Measurement`: median and spread in ms, number of timed
runs, backend and backend version, and when it was measured (UTC, ISO 8601).

A file that is not a SQLite database, a SQLite database that is not a latency table of ours, a
corrupt file, or a table of a newer schema raises :class:`~gpunet.latency.errors.TableError` and is
never written to.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..sqlite import BUSY_TIMEOUT_S, FileFormat, open_database, transaction, utc_now  # noqa: F401 - BUSY_TIMEOUT_S re-exported
from .errors import TableError
from .keys import LatencyTarget, LayerKey

TABLE_FORMAT = "gpunet-latency-table"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE layers (
    digest TEXT PRIMARY KEY,
    key_text TEXT NOT NULL,
    key_json TEXT NOT NULL,
    backend TEXT NOT NULL,
    device TEXT NOT NULL,
    precision TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    spread_ms REAL NOT NULL,
    runs INTEGER NOT NULL,
    backend_version TEXT NOT NULL,
    measured_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX layers_by_target ON layers (backend, device, precision, batch_size);
"""
#: The table's file format (checked on every open by :func:`gpunet.sqlite.open_database`).
FILE_FORMAT = FileFormat(TABLE_FORMAT, SCHEMA_VERSION, tables=("layers",), schema=_SCHEMA)


@dataclass(frozen=True)
class Measurement:
    """One latency measurement of a layer or a network.

    Attributes:
        median_ms: median of the timed runs, in ms (the paper's TensorRT "GPU Compute Time" median).
        spread_ms: interquartile range of the timed runs, in ms (trtexec logs without per-run times:
            ``percentile(90%) - median``, see :mod:`gpunet.latency.backends.tensorrt`).
        runs: number of timed runs (warm-up runs excluded).
        backend: the backend's name.
        backend_version: e.g. ``"onnxruntime 1.17.1"``, ``"torch 2.4.0+cu121"``, ``"TensorRT 10.3.0"``.
        measured_at: UTC timestamp, ISO 8601.
    """

    median_ms: float
    spread_ms: float
    runs: int
    backend: str
    backend_version: str
    measured_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        if not (self.median_ms > 0.0) or self.median_ms != self.median_ms:
            raise ValueError(f"median_ms: got {self.median_ms!r}; expected a positive number of ms")
        if not (self.spread_ms >= 0.0):
            raise ValueError(f"spread_ms: got {self.spread_ms!r}; expected a number >= 0 (ms)")
        if not isinstance(self.runs, int) or self.runs < 1:
            raise ValueError(f"runs: got {self.runs!r}; expected an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measurement":
        known = {"median_ms", "spread_ms", "runs", "backend", "backend_version", "measured_at"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"measurement field {sorted(unknown)[0]!r}: unknown; expected {sorted(known)}")
        return cls(**{k: data[k] for k in known if k in data})


class LatencyTable:
    """A per-layer latency table in a SQLite file (WAL mode).

    Args:
        path: the ``.sqlite`` file; created (with its schema) when missing or empty, unless ``readonly``.
        readonly: open for reading only (never creates or changes anything).

    Raises:
        TableError: the file is not SQLite, not a latency table (another application's database), corrupt,
            of a newer schema, or missing while ``readonly``. Such a file is left untouched.

    Thread-safe (one connection, a lock). Use one instance per process; for one writer and many readers
    open the same path in several processes.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        return open_database(self.path, FILE_FORMAT, readonly=self.readonly, error=TableError)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "LatencyTable":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise TableError(self.path, f"read failed: {exc}") from None

    # --- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM layers")[0][0])

    def __contains__(self, key: LayerKey) -> bool:
        return bool(self._query("SELECT 1 FROM layers WHERE digest = ?", (key.digest,)))

    def get(self, key: LayerKey) -> Measurement | None:
        """The measurement of ``key``, or None when it is not in the table."""
        rows = self._query(
            "SELECT median_ms, spread_ms, runs, backend, backend_version, measured_at FROM layers WHERE digest = ?",
            (key.digest,),
        )
        return Measurement(*rows[0]) if rows else None

    def get_many(self, keys: Iterable[LayerKey]) -> dict[str, Measurement]:
        """Measurements of the keys that are present, by key digest (absent keys are simply left out)."""
        digests = list(dict.fromkeys(k.digest for k in keys))
        out: dict[str, Measurement] = {}
        for i in range(0, len(digests), 500):
            chunk = digests[i : i + 500]
            rows = self._query(
                "SELECT digest, median_ms, spread_ms, runs, backend, backend_version, measured_at FROM layers "
                f"WHERE digest IN ({','.join('?' * len(chunk))})", chunk,
            )
            out.update((row[0], Measurement(*row[1:])) for row in rows)
        return out

    def medians(self, target: LatencyTarget | None = None) -> dict[str, float]:
        """``{digest: median_ms}`` of every entry (of one target, when given): one query, for bulk estimators."""
        if target is None:
            rows = self._query("SELECT digest, median_ms FROM layers")
        else:
            rows = self._query(
                "SELECT digest, median_ms FROM layers WHERE backend = ? AND device = ? AND precision = ? AND batch_size = ?",
                (target.backend, target.device, target.precision, target.batch_size),
            )
        return dict(rows)

    def missing(self, keys: Iterable[LayerKey]) -> list[LayerKey]:
        """The keys (unique, in first-seen order) that the table lacks."""
        unique = {k.digest: k for k in keys}
        present = set()
        digests = list(unique)
        for i in range(0, len(digests), 500):
            chunk = digests[i : i + 500]
            present.update(r[0] for r in self._query(f"SELECT digest FROM layers WHERE digest IN ({','.join('?' * len(chunk))})", chunk))
        return [k for d, k in unique.items() if d not in present]

    def entries(self, target: LatencyTarget | None = None) -> Iterator[tuple[LayerKey, Measurement]]:
        """Every ``(key, measurement)`` (of one target, when given), in key-text order."""
        where, params = "", ()
        if target is not None:
            where = "WHERE backend = ? AND device = ? AND precision = ? AND batch_size = ?"
            params = (target.backend, target.device, target.precision, target.batch_size)  # type: ignore[assignment]
        rows = self._query(
            f"SELECT key_json, median_ms, spread_ms, runs, backend, backend_version, measured_at FROM layers {where} ORDER BY key_text",
            params,
        )
        for row in rows:
            yield LayerKey.from_json(row[0]), Measurement(*row[1:])

    def targets(self) -> list[LatencyTarget]:
        """The distinct targets that have entries."""
        rows = self._query("SELECT DISTINCT backend, device, precision, batch_size FROM layers ORDER BY backend, device")
        return [LatencyTarget(*row) for row in rows]

    # --- writing -------------------------------------------------------------------------------
    def put(self, key: LayerKey, measurement: Measurement) -> None:
        """Store (or replace) the measurement of ``key``; committed on return."""
        self.put_many([(key, measurement)])

    def put_many(self, items: Iterable[tuple[LayerKey, Measurement]]) -> int:
        """Store many measurements in one transaction (all or nothing); returns how many were written.

        ``items`` may be a generator: it is consumed inside the write transaction (readers keep reading
        the last committed state meanwhile; another writer waits up to :data:`BUSY_TIMEOUT_S`).

        Raises:
            TableError: the table was opened read-only, or the write failed (nothing of it is stored).
        """
        if self.readonly:
            raise TableError(self.path, "opened read-only; cannot write")
        count = 0

        def rows() -> Iterator[tuple[Any, ...]]:
            nonlocal count
            for key, m in items:
                count += 1
                yield (key.digest, key.text, key.to_json(), key.backend, key.device, key.precision, key.batch_size,
                       float(m.median_ms), float(m.spread_ms), int(m.runs), m.backend_version, m.measured_at)

        with self._lock:
            try:
                with transaction(self._conn):
                    self._conn.executemany("INSERT OR REPLACE INTO layers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows())
            except sqlite3.DatabaseError as exc:
                raise TableError(self.path, f"write failed: {exc}") from None
        return count

    # --- small metadata (calibrations, build defaults) ---------------------------------------------
    def get_meta(self, name: str) -> Any:
        """A JSON value stored under ``name`` in the meta table, or None."""
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except json.JSONDecodeError:
            return rows[0][0]

    def set_meta(self, name: str, value: Any) -> None:
        """Store a JSON-ready ``value`` under ``name`` (reserved names ``format``/``schema_version`` refused)."""
        if name in ("format", "schema_version", "created_at"):
            raise ValueError(f"meta name {name!r}: reserved")
        if self.readonly:
            raise TableError(self.path, "opened read-only; cannot write")
        with self._lock:
            try:
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))
            except sqlite3.DatabaseError as exc:
                raise TableError(self.path, f"write failed: {exc}") from None
