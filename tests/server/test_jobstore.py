"""The job stores on their own, SQLite and PostgreSQL (a throwaway server, see conftest.py):
a chunk commits once, a stopped job requeues, deletion cascades, expiry drops rows and later
the job; stores sharing a PostgreSQL database never claim the same job."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agelens.errors import MissingExtraError
from agelens.rows import error_row
from agelens.server.jobstore import (
    JobRecord,
    JobStore,
    JobStoreUnavailableError,
    NewItem,
    PostgresJobStore,
    open_job_store,
    postgres_conninfo,
    redact_url,
    sqlite_path,
)


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


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    store = open_job_store(database_url)
    items = [NewItem("a", "http://x/a"), NewItem("b", "http://x/b"), NewItem("c", None, ("E", "m"))]
    store.create_job(_job("older", 1.0), items)
    store.create_job(_job("newer", 2.0), items)
    yield store
    store.close()


def test_chunks_commit_once_and_resume(store: JobStore) -> None:
    claimed = store.claim_next(now=10.0)
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.started_at) == ("older", "running", 10.0)
    rows = [(0, [error_row("a", None, ("E", "1"))])]
    assert store.commit_items("older", rows)
    assert store.commit_items("older", rows)  # the same chunk again: nothing added
    assert len(store.result_rows("older")) == 1
    assert [i.index for i in store.pending_items("older", 10)] == [1, 2]
    assert store.pending_items("older", 10)[1].refused == ("E", "m")

    assert store.requeue_running(now=15.0) == 1  # a restart
    again = store.claim_next(now=20.0)
    assert again is not None
    assert (again.id, again.started_at, again.images_done, again.errors) == ("older", 10.0, 1, 1)
    assert not store.commit_items("newer", rows)  # not running: refused


def test_a_lease_requeues_only_jobs_whose_heartbeat_stopped(store: JobStore) -> None:
    """Replicas sharing a database: a running job is requeued once its heartbeat is older
    than the lease, not while its worker renews it."""
    first, second = store.claim_next(now=100.0), store.claim_next(now=100.0)
    assert first is not None
    assert second is not None
    assert store.requeue_running(now=150.0, lease_s=60.0) == 0  # both fresh
    assert store.heartbeat(first.id, now=140.0)
    assert store.requeue_running(now=170.0, lease_s=60.0) == 1  # the second's lease ran out
    assert [j.status for j in (store.get_job(first.id), store.get_job(second.id))] == [
        "running",
        "queued",
    ]
    assert not store.heartbeat(second.id, now=171.0)  # no longer running: its worker lets go
    assert not store.heartbeat("no-such-job", now=171.0)
    again = store.claim_next(now=180.0)
    assert again is not None
    assert again.id == second.id
    assert store.requeue_running(now=1000.0, lease_s=60.0) == 2
    assert store.requeue_running(now=1000.0) == 0  # nothing left running


def test_a_database_from_before_the_lease_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, owner TEXT, status TEXT NOT NULL, "
            "source TEXT NOT NULL, options TEXT NOT NULL, images_total INTEGER NOT NULL, "
            "images_done INTEGER NOT NULL DEFAULT 0, faces INTEGER NOT NULL DEFAULT 0, "
            "images_without_faces INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, "
            "created_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION, "
            "finished_at DOUBLE PRECISION, expires_at DOUBLE PRECISION, message TEXT)"
        )
        old.execute(
            "INSERT INTO jobs (id, status, source, options, images_total, created_at) "
            "VALUES ('left', 'running', 'urls', '{}', 1, 1.0)"
        )
    store = open_job_store(f"sqlite:///{path}")
    try:
        assert store.requeue_running(now=2.0, lease_s=60.0) == 1  # no heartbeat: stale
        claimed = store.claim_next(now=3.0)
        assert claimed is not None
        assert claimed.id == "left"
        assert store.heartbeat("left", now=4.0)
    finally:
        store.close()


def test_delete_expire_and_purge(store: JobStore) -> None:
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


def test_reopening_keeps_the_jobs(store: JobStore, database_url: str) -> None:
    again = open_job_store(database_url)  # CREATE TABLE IF NOT EXISTS: idempotent
    try:
        assert again.active_job_ids() == {"older", "newer"}
        older = again.get_job("older")
        assert older is not None
        assert older.options["max_faces"] is None
        assert older.created_at == 1.0
    finally:
        again.close()


def test_stores_sharing_postgres_never_claim_the_same_job(postgres_url: str) -> None:
    stores = [open_job_store(postgres_url) for _ in range(2)]
    job_ids = [f"job{i:03d}" for i in range(40)]
    for i, job_id in enumerate(job_ids):
        stores[0].create_job(_job(job_id, float(i % 5)), [NewItem("a", "http://x/a")])
    claimed: list[list[str]] = [[], [], [], []]
    start = threading.Barrier(len(claimed))

    def claim_all(worker: int) -> None:
        store = stores[worker % 2]
        start.wait()
        while (job := store.claim_next(now=100.0)) is not None:
            claimed[worker].append(job.id)

    threads = [threading.Thread(target=claim_all, args=(w,)) for w in range(len(claimed))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    everything = [job_id for ids in claimed for job_id in ids]
    assert sorted(everything) == job_ids  # every job once, none twice
    assert all(ids for ids in claimed[:2])  # both stores took part


def test_unreachable_postgres_is_a_clear_error() -> None:
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://agelens:secret@127.0.0.1:9/agelens"  # port 9: nothing listens
    with pytest.raises(JobStoreUnavailableError, match="cannot connect") as raised:
        PostgresJobStore(url, connect_timeout_s=2)
    assert "secret" not in str(raised.value)
    assert "AGELENS_JOBS_DATABASE_URL" in str(raised.value)


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'agelens\[postgres\]'"):
        open_job_store("postgresql://agelens@db/agelens")


@pytest.mark.parametrize(
    ("url", "conninfo", "redacted"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql://u:p@h:5432/d", "postgresql://u:***@h:5432/d"),
        ("postgresql+psycopg://u@h/d", "postgresql://u@h/d", "postgresql+psycopg://u@h/d"),
        ("POSTGRESQL://h/d", "postgresql://h/d", "POSTGRESQL://h/d"),
    ],
)
def test_postgres_urls(url: str, conninfo: str, redacted: str) -> None:
    assert postgres_conninfo(url) == conninfo
    assert redact_url(url) == redacted


@pytest.mark.parametrize("url", ["postgres://h/d", "mysql://h/d", "postgresql:h"])
def test_bad_postgres_urls(url: str) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        postgres_conninfo(url)


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
