"""Atomic writes: concurrent writers (threads of one process too) never mix, a failed write changes nothing."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from gpunet.fileio import atomic_file, write_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_threads_of_one_process_writing_one_file_never_mix_or_lose_a_write(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    errors: list[BaseException] = []
    seen: list[dict] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        try:
            for i in range(40):
                write_json_atomic(target, {"writer": n, "i": i, "pad": "x" * (1000 * n)})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            if target.exists():
                seen.append(json.loads(target.read_text()))  # never half a file

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []
    final = json.loads(target.read_text())
    assert final["i"] == 39 and len(final["pad"]) == 1000 * final["writer"]
    assert all(len(d["pad"]) == 1000 * d["writer"] for d in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


def test_a_failing_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "hub.md", "old")

    def half(f) -> None:
        f.write(b"new, but")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, half)
    with pytest.raises(KeyError):
        with atomic_file(target, "w") as f:
            f.write("new")
            raise KeyError("x")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["hub.md"]


def test_writers_make_folders_keep_the_umask_mode_and_write_bytes_text_json_and_lines(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    path = write_bytes_atomic(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads(write_json_atomic(tmp_path / "c.json", {"a": [1, 2]}, indent=2).read_text()) == {"a": [1, 2]}
    assert write_json_atomic(tmp_path / "d.json", {"a": 1}).read_text() == '{"a":1}'
    with atomic_file(tmp_path / "e.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"id": i}) + "\n")
    assert [json.loads(line)["id"] for line in (tmp_path / "e.jsonl").read_text().splitlines()] == [0, 1, 2]
    with pytest.raises(ValueError, match="mode"):
        with atomic_file(tmp_path / "f", "a"):
            pass


def test_torch_save_writes_through_the_atomic_writer(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    path = write_atomic(tmp_path / "ckpt.pt", lambda f: torch.save(state, f))
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], state["w"])
