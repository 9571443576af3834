"""The latency table: keys, persistence, one writer with concurrent readers, resumable builds, bad files."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpunet.arch import LayerSpec
from gpunet.cli import main
from gpunet.latency import (
    KeyFormatError,
    LatencyTable,
    LatencyTarget,
    LayerKey,
    Measurement,
    TableError,
    build_table,
    get_backend,
    required_keys,
)
from gpunet.space import load_space

TARGET = LatencyTarget("onnxruntime", "Test CPU (1 thread)", "fp32", 1)
SPEC = LayerSpec("irb", (1, 48, 14, 14), 64, kernel=5, stride=2, expansion=4, se=True, act="swish", stage=4)


def key(c: int = 48, target: LatencyTarget = TARGET) -> LayerKey:
    return LayerKey.from_spec(LayerSpec("irb", (1, c, 14, 14), 64, kernel=5, stride=2, expansion=4, se=True, act="swish"), target)


def meas(ms: float) -> Measurement:
    return Measurement(median_ms=ms, spread_ms=ms / 10, runs=50, backend="onnxruntime", backend_version="onnxruntime 1.17.1")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- keys ------------------------------------------------------------------------------------------


def test_layer_key_has_stable_readable_text_and_hash() -> None:
    k = LayerKey.from_spec(SPEC, TARGET)
    assert k.text == "irb k5 e4 se1 swish s2 1x48x14x14->64 | onnxruntime fp32 @ Test CPU (1 thread)"
    assert k.digest == hashlib.blake2b(k.text.encode(), digest_size=8).hexdigest()
    assert len(k.digest) == 16


def test_layer_key_round_trips_through_json_and_keeps_batch_size() -> None:
    k = LayerKey.from_spec(SPEC, LatencyTarget("torch", "NVIDIA H100 80GB HBM3", "fp16", 8))
    assert k.batch_size == 8 and k.input_shape == (8, 48, 14, 14)
    back = LayerKey.from_json(k.to_json())
    assert back == k and back.digest == k.digest
    assert back.to_spec().describe() == "irb k5 e4 se1 swish s2 8x48x14x14->64"


def test_every_latency_attribute_changes_the_key() -> None:
    base = LayerKey.from_spec(SPEC, TARGET)
    variants = [
        LayerKey.from_spec(SPEC, LatencyTarget("onnxruntime", "Other CPU (1 thread)", "fp32", 1)),
        LayerKey.from_spec(SPEC, LatencyTarget("onnxruntime", "Test CPU (1 thread)", "fp32", 2)),
        LayerKey.from_spec(SPEC, LatencyTarget("torch", "Test CPU (1 thread)", "fp32", 1)),
        LayerKey.from_spec(SPEC, LatencyTarget("torch", "Test CPU (1 thread)", "fp16", 1)),
    ] + [LayerKey.from_spec(LayerSpec(**{**SPEC.__dict__, field: value}), TARGET) for field, value in
         [("kernel", 3), ("stride", 1), ("expansion", 6), ("se", False), ("act", "relu"), ("out_chs", 80),
          ("input_shape", (1, 48, 16, 16)), ("type", "fused_irb")]]
    assert len({v.digest for v in variants} | {base.digest}) == len(variants) + 1
    # the stage is not part of the key: the same layer in another stage costs the same
    assert LayerKey.from_spec(LayerSpec(**{**SPEC.__dict__, "stage": 6}), TARGET) == base


@pytest.mark.parametrize(
    ("field", "value"), [("type", "attention"), ("act", "gelu"), ("input_shape", [1, 2, 3]), ("precision", "int4"),
                         ("digest", "0" * 16), ("batch_size", 4), ("colour", "red")],
)
def test_layer_key_from_bad_dict_names_the_field(field: str, value: object) -> None:
    data = LayerKey.from_spec(SPEC, TARGET).to_dict()
    data[field] = value
    with pytest.raises(KeyFormatError, match=field):
        LayerKey.from_dict(data)


# --- table -------------------------------------------------------------------------------------------


def test_table_persists_measurements_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        table.put(key(48), meas(0.25))
        assert table.put_many([(key(c), meas(c / 100)) for c in (16, 24, 32)]) == 3
    with LatencyTable(path, readonly=True) as table:
        assert len(table) == 4
        got = table.get(key(48))
        assert got is not None and got.median_ms == 0.25 and got.spread_ms == 0.025 and got.runs == 50
        assert got.backend_version == "onnxruntime 1.17.1" and got.measured_at.endswith("+00:00")
        assert table.get(key(40)) is None
        assert [k.input_shape[1] for k in table.missing([key(16), key(40), key(48), key(56)])] == [40, 56]
        assert {k.input_shape[1] for k, _ in table.entries(TARGET)} == {16, 24, 32, 48}
        assert table.targets() == [TARGET]
        assert table.medians(TARGET)[key(32).digest] == 0.32
        with pytest.raises(TableError, match="read-only"):
            table.put(key(8), meas(1.0))


def test_reader_reads_committed_state_while_a_bulk_write_is_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    writer = LatencyTable(path)
    writer.put(key(8), meas(0.5))
    reader = LatencyTable(path, readonly=True)
    in_write, reader_done = threading.Event(), threading.Event()

    def items():  # a streaming bulk put that pauses half way, inside its transaction
        for c in range(16, 216):
            if c == 116:
                in_write.set()
                assert reader_done.wait(30)
            yield key(c), meas(c / 100)

    thread = threading.Thread(target=writer.put_many, args=(items(),))
    thread.start()
    assert in_write.wait(30)
    # the write transaction is open now: the reader is not blocked and sees the last committed state
    start = time.perf_counter()
    assert len(reader) == 1 and reader.get(key(8)).median_ms == 0.5 and reader.get(key(20)) is None
    assert time.perf_counter() - start < 5.0
    reader_done.set()
    thread.join(30)
    assert len(reader) == 201 and reader.get(key(215)).median_ms == 2.15


def test_text_file_is_rejected_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a latency table\n" * 20)
    before = sha(path)
    with pytest.raises(TableError, match="not a SQLite database"):
        LatencyTable(path)
    assert sha(path) == before and sorted(os.listdir(tmp_path)) == ["notes.sqlite"]


def test_foreign_sqlite_database_is_rejected_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada')")
    conn.commit()
    conn.close()
    before = sha(path)
    with pytest.raises(TableError, match="another application"):
        LatencyTable(path)
    assert sha(path) == before
    assert main(["latency", "estimate", "1,2,3", "--table", str(path)]) == 2  # the CLI: one line, exit 2
    assert sha(path) == before


def test_corrupt_table_is_rejected_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        table.put_many([(key(c), meas(c / 100)) for c in range(1, 400)])
    data = bytearray(path.read_bytes())
    assert len(data) > 5 * 4096
    data[2 * 4096 : 4 * 4096] = os.urandom(2 * 4096)  # overwrite pages 3-4 with garbage
    path.write_bytes(bytes(data))
    before = sha(path)
    with pytest.raises(TableError, match="corrupt"):
        LatencyTable(path)
    with pytest.raises(TableError, match="corrupt"):
        LatencyTable(path, readonly=True)
    assert sha(path) == before


# --- resumable builds ----------------------------------------------------------------------------------


def test_interrupted_build_resumes_and_measures_only_missing_layers(tmp_path: Path) -> None:
    space = load_space("gpunet-tiny")
    backend = get_backend("torch", runs=3, warmup=1, rounds=1)
    keys = required_keys(backend.target(), vectors=space.sobol(2, seed=3), space=space)[:8]
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        first = build_table(table, backend, keys, should_stop=lambda: len(table) >= 3, chunk_size=1)
        assert first.interrupted and first.measured == 3
        stored = {k.digest: m for k, m in table.entries()}
    with LatencyTable(path) as table:
        second = build_table(table, backend, keys)
        assert (second.already, second.measured, second.interrupted) == (3, 5, False)
        assert len(table) == 8
        assert all(table.get_many(keys)[d] == m for d, m in stored.items())  # not measured again


@pytest.mark.slow
def test_killed_cli_build_continues_where_it_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.sqlite"
    args = ["latency", "build", "--preset", "gpunet-tiny", "--backend", "torch", "--table", str(path), "--samples", "8",
            "--runs", "3", "--warmup", "1", "--rounds", "1", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "gpunet", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if path.exists():
                try:
                    with LatencyTable(path, readonly=True) as table:
                        if len(table) >= 1:
                            break
                except TableError:
                    pass
            time.sleep(0.02)
        # Take SQLite's write lock: the build's next put waits on it (busy timeout), so the kill lands at a known
        # row count however fast the machine measures (a poll alone raced a fast machine to the last row).
        lock = sqlite3.connect(path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        done = lock.execute("SELECT COUNT(*) FROM layers").fetchone()[0]
        assert proc.poll() is None, "the build finished before it could be killed"
        proc.kill()  # SIGKILL: no chance to clean up
    finally:
        proc.wait(30)
        if lock is not None:
            lock.rollback()
            lock.close()
    assert done >= 1
    with LatencyTable(path, readonly=True) as table:
        assert len(table) == done  # every row committed before the kill is there, nothing half-written
    assert main(args) == 0  # the rerun, in this process
    report = json.loads(capsys.readouterr().out)
    assert report["already"] == done
    assert report["measured"] == report["required"] - done > 0
    assert report["entries"] == report["required"]
