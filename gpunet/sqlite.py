"""SQLite files of gpunet: one way to open them, check that they are ours, and write in transactions.

Both of the project's databases go through here: the controller state (``state.sqlite``,
:mod:`gpunet.controller.state`) and the latency table (:mod:`gpunet.latency.table`). Each declares a
:class:`FileFormat`: its name and schema version (rows ``format`` and ``schema_version`` of its ``meta`` table),
the tables it must have and the DDL that creates them.

:func:`open_database` refuses, without changing a byte of it, a file that is not SQLite, a SQLite database of
another application, a corrupt one, or one of a newer schema version; it creates the schema in a new or empty
file. Writable connections then run in WAL mode with ``synchronous=NORMAL``: one writer and any number of
readers (other processes included) use the file at once, readers see the last committed state and never block
the writer, and a commit survives a killed process (not necessarily a power cut). Read-only connections use
SQLite's ``mode=ro`` URI and never create or change anything.

``synchronous=NORMAL`` in WAL mode (SQLite, "PRAGMA synchronous"): a commit is a write into the WAL file with no
fsync; the WAL is synced at checkpoints. A commit is durable against a crash of the process (the operating system
has the bytes) but the last commits before a power loss or kernel crash may be rolled back; the database is never
corrupted. ``FULL`` would fsync every commit. :class:`GroupCommit` batches the writes of many callers into one
transaction, so that each of them waits on a shared commit rather than one of its own.

Checkpoints (copying the WAL back into the database file, with an fsync of each) run by default inside the commit
that takes the WAL past 1,000 pages (SQLite's ``wal_autocheckpoint``). A busy writer can hand them to a
:class:`Checkpointer`, a thread with a connection of its own, and keep only a far larger auto-checkpoint as a
backstop: then no commit waits for a sync.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

#: Seconds a connection waits for a lock held by another writer before giving up (SQLite's busy timeout).
BUSY_TIMEOUT_S = 60.0
#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"

#: WAL pages at which a connection handed to a :class:`Checkpointer` still checkpoints inside a commit (SQLite's
#: ``wal_autocheckpoint``; its default is 1,000): a backstop, about 80 MiB of WAL at 4 KiB pages, for a checkpointer
#: that cannot keep up (a reader that holds the WAL, a failing disk).
BACKSTOP_CHECKPOINT_PAGES = 20_000
#: Seconds between two of a :class:`Checkpointer`'s checkpoints.
CHECKPOINT_PERIOD_S = 1.0

log = logging.getLogger(__name__)

#: Makes the exception raised for an unusable file, from the file's path and the reason in words.
ErrorFactory = Callable[[Path, str], Exception]


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class FileFormat:
    """What makes a SQLite file one of ours.

    Attributes:
        name: the value of the ``format`` row of the ``meta`` table, e.g. ``"gpunet-latency-table"``.
        version: the schema version this code writes; files of versions up to it are read, newer ones refused.
        tables: the tables (besides ``meta``) a file of this format has.
        schema: the DDL creating ``tables`` (statements separated by ``;``), run once in a new or empty file.
        meta_key: name of the ``meta`` table's key column (``meta(<meta_key> TEXT PRIMARY KEY, value TEXT)``).
        legacy: for files written before the ``format`` row existed: given a connection to a file that has the
            tables but no ``format`` row, True when it is nevertheless ours (its rows are then added, when writable).
    """

    name: str
    version: int
    tables: tuple[str, ...]
    schema: str
    meta_key: str = "name"
    legacy: Callable[[sqlite3.Connection], bool] | None = None

    def meta_rows(self, conn: sqlite3.Connection) -> dict[str, str]:
        return dict(conn.execute(f"SELECT {self.meta_key}, value FROM meta").fetchall())


def open_database(path: str | Path, fmt: FileFormat, *, error: ErrorFactory, readonly: bool = False,
                  missing: ErrorFactory | None = None, timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A connection to the ``fmt`` database at ``path``, checked, and created when new (unless ``readonly``).

    The connection may be shared between threads (``check_same_thread=False``; guard it with a lock) and is in
    autocommit mode: write with :func:`transaction`.

    Args:
        path: the database file.
        fmt: its format.
        error: makes the exception raised for a file that is not usable (see below).
        readonly: open with ``mode=ro``: never creates, converts or writes anything.
        missing: makes the exception raised, in ``readonly`` mode, for a file that does not exist or holds no
            tables yet (a reader that came before the first writer); default ``error``.
        timeout_s: SQLite's busy timeout, in seconds.

    Raises:
        whatever ``error`` makes: the path is a directory; the file is not SQLite, belongs to another
        application (other tables, another ``format``), is of a newer schema version, or is corrupt
        (``PRAGMA quick_check``). The file is then left exactly as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise error(path, "is a directory, not a database file")
    exists = path.exists()
    if readonly and not exists:
        raise (missing or error)(path, "no such file")
    if exists and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                raise error(path, "not a SQLite database (a foreign or corrupt file); refusing to use or overwrite it")
    try:
        if readonly:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise error(path, f"cannot open: {exc}") from None
    try:
        _check(conn, path, fmt, readonly, error, missing or error)
        if not readonly:  # only now: switching to WAL rewrites the file header
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _check(conn: sqlite3.Connection, path: Path, fmt: FileFormat, readonly: bool, error: ErrorFactory,
           missing: ErrorFactory) -> None:
    try:
        names = _names(conn)
        if not names:
            if readonly:
                raise missing(path, f"an empty database, not a {fmt.name} file")
            _create(conn, fmt)
            names = _names(conn)
        if "meta" not in names or not set(fmt.tables) <= names:
            raise error(path, f"a SQLite database of another application (tables: {sorted(names)[:6]}); "
                        f"expected a {fmt.name} file; refusing to use or overwrite it")
        meta = fmt.meta_rows(conn)
        if "format" not in meta and fmt.legacy is not None and fmt.legacy(conn):
            meta = {"format": fmt.name, "schema_version": "1"}
            if not readonly:
                with transaction(conn):
                    conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", list(meta.items()))
        if meta.get("format") != fmt.name:
            raise error(path, f"meta format {meta.get('format')!r}; expected {fmt.name!r}")
        version = meta.get("schema_version", "0")
        if not version.isdigit():
            raise error(path, f"meta schema_version {version!r}; expected an integer")
        if int(version) > fmt.version:
            raise error(path, f"schema version {version}; this gpunet reads up to {fmt.version}")
        status = conn.execute("PRAGMA quick_check").fetchone()[0]
        if status != "ok":
            raise error(path, f"corrupt (sqlite quick_check: {status}); refusing to use or overwrite it")
    except sqlite3.DatabaseError as exc:
        raise error(path, f"corrupt or not a {fmt.name} file ({exc}); refusing to use or overwrite it") from None


def _names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}


def _create(conn: sqlite3.Connection, fmt: FileFormat) -> None:
    """Create the schema in an empty database; a concurrent creator that won the race is accepted."""
    with transaction(conn):
        if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
            conn.execute(f"CREATE TABLE meta ({fmt.meta_key} TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for statement in fmt.schema.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("format", fmt.name), ("schema_version", str(fmt.version)), ("created_at", utc_now())])


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: all of the block's writes or none of them.

    IMMEDIATE takes the write lock at the start (waiting up to the busy timeout for another writer), so the block
    never fails half way for a lock. Any exception, a failed ``COMMIT`` included, rolls back and propagates.
    The connection must be in autocommit mode (``isolation_level=None``, as :func:`open_database` makes it).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class CommitFailed(RuntimeError):
    """The batch that held a staged write could not be committed (the cause is chained); the writes stay staged
    and go into the next batch, which is retried."""


#: One staged write: an SQL statement and its parameters.
Write = tuple[str, tuple]


class GroupCommit:
    """Group commit: writes are staged from any thread, and one :meth:`flush` commits everything staged so far in
    one transaction, so that the writes of many callers share a commit rather than each paying for one of its own.

    Each write has a key; a later write of the same key replaces an earlier one still staged (e.g. one row per
    candidate: only its newest version is written). :meth:`stage` returns a ticket; :meth:`flush` makes it durable:
    if the ticket is already committed (another caller's flush took it) it returns at once, else it commits every
    write staged until now. Flushes are serialised and take the staged writes in order, so ticket ``n`` committed
    means every write staged before it is too. The asyncio server stages the writes of all the calls it handles
    in one turn of its event loop and flushes once at the end of it, on its own thread (no hand-off to another
    thread, whose wake-up on a loaded machine costs more than the commit).

    Durability is the connection's: with :func:`open_database`'s WAL and ``synchronous=NORMAL`` a committed batch
    survives a killed process, and a power cut may lose the last batches (never corrupts the file).

    Args:
        conn: a connection in autocommit mode (:func:`open_database`); used under :attr:`lock`.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: Guards :attr:`conn` (readers take it too); held for a whole flush, so flushes are serialised.
        self.lock = threading.Lock()
        self._staging = threading.Lock()  # guards _pending and _staged
        self._pending: dict[Any, Write] = {}
        self._staged = 0  # the last ticket handed out
        self._done = 0  # the last ticket whose batch was tried (committed unless in _failures)
        self._failures: list[tuple[int, int, BaseException]] = []  # (first, last, error) of failed batches
        self._closed = False
        self.batches = 0

    @property
    def staged(self) -> int:
        """The last ticket handed out: flushing it commits every write staged so far."""
        return self._staged

    def stage(self, writes: dict[Any, Write]) -> int:
        """Stage ``writes`` (key -> (sql, params)) for the next flush; returns their ticket.

        Raises:
            RuntimeError: after :meth:`close`.
        """
        with self._staging:
            if self._closed:
                raise RuntimeError("group commit is closed")
            self._pending.update(writes)
            self._staged += 1
            return self._staged

    def error(self, ticket: int) -> BaseException | None:
        """None when ``ticket``'s batch committed, the error when it failed (only for tickets already done)."""
        for first, last, exc in self._failures:
            if first <= ticket <= last:
                return exc
        return None

    def done(self, ticket: int) -> bool:
        return self._done >= ticket

    def flush(self, ticket: int | None = None) -> None:
        """Make ``ticket`` (default: everything staged) durable, committing what is staged unless it already is.

        Raises:
            CommitFailed: its batch failed; the writes stay staged for the next flush (a transient error, e.g. a
                full disk or a locked file, heals on a later try).
        """
        ticket = self._staged if ticket is None else ticket
        with self.lock:
            if self._done < ticket:
                with self._staging:
                    writes, last, first = self._pending, self._staged, self._done + 1
                    self._pending = {}
                by_statement: dict[str, list[tuple]] = {}
                for sql, params in writes.values():
                    by_statement.setdefault(sql, []).append(params)
                try:
                    with transaction(self.conn):
                        for sql, rows in by_statement.items():
                            self.conn.executemany(sql, rows)
                except Exception as exc:  # noqa: BLE001 - reported to the waiters; the writes are retried
                    self._failures = (self._failures + [(first, last, exc)])[-64:]
                    with self._staging:
                        for key, write in writes.items():  # newer staged versions win
                            self._pending.setdefault(key, write)
                self._done = last
                self.batches += 1
        exc = self.error(ticket)
        if exc is not None:
            raise CommitFailed(f"commit failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Commit what is staged and refuse further writes.

        Raises:
            CommitFailed: the last flush failed.
        """
        with self._staging:
            self._closed = True
        self.flush()


class Checkpointer:
    """WAL checkpoints of one database on a thread of their own, so that the writer's commits never run one.

    SQLite's automatic checkpoint runs inside the commit that takes the WAL past ``wal_autocheckpoint`` pages, and a
    checkpoint syncs the WAL and the database file. In the controller that commit runs on the event loop that
    serves every RPC: at 1,000 simulated workers such commits took up to 28 ms (about one in 150), against at most
    6 ms without them, and every call in flight waited (the epoch reports' p99 went from 19 to 38 ms).

    The checkpointer raises ``conn``'s automatic checkpoint to a backstop (:data:`BACKSTOP_CHECKPOINT_PAGES`) and
    every ``period_s`` runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own, which waits for no writer
    or reader (SQLite, "Write-Ahead Logging", 7; "PRAGMA wal_checkpoint"); Python's sqlite3 releases the GIL while
    it runs. Durability is unchanged: a commit is what ``synchronous`` makes it, wherever the checkpoint runs. A
    failing checkpoint (a full disk) is logged and tried again at the next period; the WAL keeps the data.

    Args:
        path: the database file (in WAL mode).
        conn: the writer's connection, whose automatic checkpoint becomes the backstop.
        lock: guards ``conn`` (:attr:`GroupCommit.lock`).
        period_s: seconds between checkpoints; ``None``: no thread, only :meth:`run_once` (tests).
    """

    def __init__(self, path: str | Path, conn: sqlite3.Connection, lock: threading.Lock,
                 period_s: float | None = CHECKPOINT_PERIOD_S) -> None:
        self.path = Path(path)
        with lock:
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
        self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _conn
        self.failures = 0
        self._thread: threading.Thread | None = None
        if period_s is not None:
            self._thread = threading.Thread(target=self._run, args=(float(period_s),), daemon=True,
                                            name=f"sqlite-checkpoint-{self.path.name}")
            self._thread.start()

    def run_once(self) -> tuple[int, int]:
        """One passive checkpoint; returns ``(wal_frames, checkpointed_frames)`` (both -1 when the file is not in
        WAL mode).

        Raises:
            sqlite3.Error: the checkpoint failed (I/O error, full disk).
        """
        with self._lock:
            busy, frames, done = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames), int(done)

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self.run_once()
            except sqlite3.Error as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 60 == 0:
                    log.warning("%s: WAL checkpoint failed (%s; %d times); retrying every %.1f s", self.path,
                                exc, self.failures, period_s)

    def close(self) -> None:
        """Stop the thread and close its connection (the writer's last checkpoint is SQLite's, on close)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._conn.close()
