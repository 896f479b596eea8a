"""The SQLite job store on its own: a chunk commits once, a stopped job requeues, deletion
cascades, expiry drops rows and later the job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agelens.rows import error_row
from agelens.server.jobstore import JobRecord, NewItem, SqliteJobStore, sqlite_path


def _job(job_id: str, created_at: float) -> JobRecord:
    return JobRecord(
        id=job_id,
        owner=None,
        status="queued",
        source="urls",
        options={"detector": "d", "estimator": "e", "min_face": 0.0, "max_faces": None},
        images_total=3,
        images_done=0,
        faces=0,
        images_without_faces=0,
        errors=0,
        created_at=created_at,
        started_at=None,
        finished_at=None,
        expires_at=None,
        message=None,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteJobStore]:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    items = [NewItem("a", "http://x/a"), NewItem("b", "http://x/b"), NewItem("c", None, ("E", "m"))]
    store.create_job(_job("older", 1.0), items)
    store.create_job(_job("newer", 2.0), items)
    yield store
    store.close()


def test_chunks_commit_once_and_resume(store: SqliteJobStore) -> None:
    claimed = store.claim_next(now=10.0)
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.started_at) == ("older", "running", 10.0)
    rows = [(0, [error_row("a", None, ("E", "1"))])]
    assert store.commit_items("older", rows)
    assert store.commit_items("older", rows)  # the same chunk again: nothing added
    assert len(store.result_rows("older")) == 1
    assert [i.index for i in store.pending_items("older", 10)] == [1, 2]
    assert store.pending_items("older", 10)[1].refused == ("E", "m")

    assert store.requeue_running() == 1  # a restart
    again = store.claim_next(now=20.0)
    assert again is not None
    assert (again.id, again.started_at, again.images_done, again.errors) == ("older", 10.0, 1, 1)
    assert not store.commit_items("newer", rows)  # not running: refused


def test_delete_expire_and_purge(store: SqliteJobStore) -> None:
    assert store.claim_next(now=1.0) is not None
    store.commit_items("older", [(0, [error_row("a", None, ("E", "1"))])])
    store.finish_job("older", "done", now=5.0, expires_at=6.0, message=None)
    assert store.expire(now=5.5) == []
    assert store.expire(now=6.0) == ["older"]
    expired = store.get_job("older")
    assert expired is not None
    assert expired.status == "expired"
    assert store.result_rows("older") == []
    assert store.purge_expired(before=5.0) == 0
    assert store.purge_expired(before=6.0) == 1
    assert store.get_job("older") is None

    assert store.delete_job("newer")
    assert not store.delete_job("newer")
    assert store.pending_items("newer", 10) == []
    assert store.count_active() == 0


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/lib/agelens/jobs.sqlite3", "/var/lib/agelens/jobs.sqlite3"),
        ("sqlite:///relative/jobs.sqlite3", "relative/jobs.sqlite3"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://host/x", "jobs.sqlite3"])
def test_bad_sqlite_urls(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite"):
        sqlite_path(url)
