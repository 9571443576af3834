"""The one SQLite helper, seen through both of its users: the controller state and the latency table."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from gpunet.controller.errors import StateFileError
from gpunet.controller.state import STATE_FORMAT, Candidate, ControllerState, StateStore
from gpunet.latency import LatencyTable, TableError
from gpunet.sqlite import FileFormat, open_database, transaction

FMT = FileFormat("test-format", 2, tables=("items",), schema="CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")


def error(path: Path, reason: str) -> Exception:
    return RuntimeError(f"{path}: {reason}")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_file_gets_the_schema_wal_and_a_format_row(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "a.sqlite", FMT, error=error)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert dict(conn.execute("SELECT name, value FROM meta WHERE name != 'created_at'")) == {"format": "test-format",
                                                                                            "schema_version": "2"}
    conn.close()
    ro = open_database(tmp_path / "a.sqlite", FMT, error=error, readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("INSERT INTO items VALUES (1, 'x')")


def test_transaction_commits_all_or_nothing(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "a.sqlite", FMT, error=error)
    with transaction(conn):
        conn.execute("INSERT INTO items VALUES (1, 'kept')")
    with pytest.raises(ZeroDivisionError):
        with transaction(conn):
            conn.execute("INSERT INTO items VALUES (2, 'lost')")
            1 / 0
    assert conn.execute("SELECT name FROM items").fetchall() == [("kept",)] and not conn.in_transaction


@pytest.mark.parametrize("meta, reason", [
    ([("format", "other-format"), ("schema_version", "1")], "meta format 'other-format'; expected 'test-format'"),
    ([("format", "test-format"), ("schema_version", "3")], "schema version 3; this gpunet reads up to 2"),
    ([("format", "test-format"), ("schema_version", "two")], "meta schema_version 'two'; expected an integer"),
])
def test_files_of_another_format_or_a_newer_version_are_refused_untouched(tmp_path: Path, meta, reason) -> None:
    path = tmp_path / "a.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL); CREATE TABLE items (id INTEGER);")
    conn.executemany("INSERT INTO meta VALUES (?, ?)", meta)
    conn.commit()
    conn.close()
    before = sha(path)
    for readonly in (False, True):
        with pytest.raises(RuntimeError, match=reason):
            open_database(path, FMT, error=error, readonly=readonly)
    assert sha(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.sqlite"]


def test_a_reader_before_the_first_writer_gets_the_missing_error(tmp_path: Path) -> None:
    def missing(path: Path, reason: str) -> Exception:
        return FileNotFoundError(reason)

    with pytest.raises(FileNotFoundError, match="no such file"):
        open_database(tmp_path / "a.sqlite", FMT, error=error, missing=missing, readonly=True)
    sqlite3.connect(tmp_path / "b.sqlite").close()  # an empty database
    with pytest.raises(FileNotFoundError, match="an empty database"):
        open_database(tmp_path / "b.sqlite", FMT, error=error, missing=missing, readonly=True)


def test_the_state_store_refuses_a_latency_table_and_the_table_refuses_a_state_file(tmp_path: Path) -> None:
    LatencyTable(tmp_path / "latency.sqlite").close()
    before = sha(tmp_path / "latency.sqlite")
    with pytest.raises(StateFileError, match="another application"):
        StateStore(tmp_path / "latency.sqlite")
    assert sha(tmp_path / "latency.sqlite") == before
    StateStore(tmp_path / "state.sqlite").close()
    with pytest.raises(TableError, match="another application"):
        LatencyTable(tmp_path / "state.sqlite")
    (tmp_path / "notes.sqlite").write_text("not a database\n")
    with pytest.raises(StateFileError, match="not a SQLite database"):
        StateStore(tmp_path / "notes.sqlite", readonly=True)


def test_a_state_file_of_the_first_version_is_read_and_marked(tmp_path: Path) -> None:
    """state.sqlite files written before the format row existed keep working."""
    path = tmp_path / "state.sqlite"
    state = ControllerState(name="old", phase="Searching", candidates={"t0-c0000": Candidate("t0-c0000", 0, 0, [1] * 41, 0.2)})
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "CREATE TABLE candidates (id TEXT PRIMARY KEY, data TEXT NOT NULL);")
    conn.execute("INSERT INTO meta VALUES ('state', ?)", (json.dumps(state.header()),))
    conn.execute("INSERT INTO candidates VALUES (?, ?)", ("t0-c0000", json.dumps({**state.candidates["t0-c0000"].to_dict(),
                                                                                  "lease_deadline": 5.0})))
    conn.close()
    assert ControllerState.load(tmp_path).candidates["t0-c0000"].vector == [1] * 41  # read-only: nothing written
    store = StateStore(path)
    loaded = store.load()
    store.close()
    assert loaded.phase == "Searching" and loaded.header()["format"] == STATE_FORMAT
    conn = sqlite3.connect(path)
    assert dict(conn.execute("SELECT key, value FROM meta WHERE key != 'state'")) == {"format": STATE_FORMAT, "schema_version": "1"}


def test_a_state_with_an_unknown_phase_is_refused_with_the_allowed_names(tmp_path: Path) -> None:
    data = ControllerState(name="x").to_dict() | {"phase": "Finishing"}
    with pytest.raises(StateFileError, match=r"controller state phase: got 'Finishing'; expected one of \['Pending'"):
        ControllerState.from_dict(data)


def test_commits_leave_wal_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    """A state store's commits never checkpoint the WAL (each checkpoint syncs, and the commits run on the RPC
    loop): past SQLite's default of 1,000 WAL pages the database file stays as it was, until the checkpointer runs;
    then it holds every committed row, and the WAL frames are all checkpointed."""
    from gpunet.sqlite import BACKSTOP_CHECKPOINT_PAGES

    path = tmp_path / "state.sqlite"
    store = StateStore(path, checkpoint_period_s=None)  # no thread: checkpoints only when this test runs one
    state = ControllerState(name="ckpt", phase="Searching")
    page = store._conn.execute("PRAGMA page_size").fetchone()[0]
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_CHECKPOINT_PAGES
    size_before = path.stat().st_size
    for batch in range(30):  # ~1,500 pages of WAL at 4 KiB: an auto-checkpoint at 1,000 would have copied them
        cands = [Candidate(f"t0-c{batch:02d}{i:03d}", 0, batch * 100 + i, [i % 7] * 41, 0.2) for i in range(100)]
        for cand in cands:
            cand.error = "x" * 1500  # rows of about 2 KiB
        store.save(state, cands)
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 1_000 * page
    assert path.stat().st_size == size_before  # nothing checkpointed by a commit
    frames, done = store.checkpointer.run_once()
    assert frames > 1_000 and done == frames
    assert path.stat().st_size > 1_000 * page  # the rows are in the database file now
    store.close()
    assert len(StateStore(path, readonly=True).load().candidates) == 3_000


def test_the_checkpointer_thread_checkpoints_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = StateStore(path, checkpoint_period_s=0.05)
    store.save(ControllerState(name="ckpt"), [Candidate(f"t0-c{i:04d}", 0, i, [1] * 41, 0.2) for i in range(50)])
    size_before = path.stat().st_size
    deadline = time.monotonic() + 10
    while path.stat().st_size == size_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.stat().st_size > size_before  # the thread checkpointed the committed rows
    thread = store.checkpointer._thread
    store.close()
    assert thread is not None and not thread.is_alive()
