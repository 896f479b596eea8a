"""write_atomically: whole files or none, even with two writers at once."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from agelens.files import write_atomically


def test_writes_whole_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deeper" / "ranges.json"
    write_atomically(target, lambda path: path.write_text("new", encoding="utf-8"))
    assert target.read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["ranges.json"]


def test_the_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    """Batch results and shipped model files are read by others: not owner-only."""
    target = tmp_path / "results.parquet"
    write_atomically(target, lambda path: path.write_bytes(b"rows"))
    ordinary = tmp_path / "ordinary"
    ordinary.write_bytes(b"rows")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(ordinary.stat().st_mode)


def test_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "chunk.npz"
    target.write_bytes(b"old")

    def fail(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["chunk.npz"]


def test_concurrent_writers_never_share_a_temporary(tmp_path: Path) -> None:
    """Two trainings calibrating into one cache once raced on a fixed temporary name (one
    renamed it away under the other: FileNotFoundError). Each write now has its own."""
    target = tmp_path / "int8-ranges.json"
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        def slow(path: Path) -> None:
            start.wait()
            path.write_text(str(index) * 10_000, encoding="utf-8")

        try:
            write_atomically(target, slow)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    content = target.read_text(encoding="utf-8")
    assert len(set(content)) == 1
    assert len(content) == 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["int8-ranges.json"]
