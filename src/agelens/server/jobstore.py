"""Where jobs, their images and their result rows live: the `JobStore` interface and its one
implementation, SQLite (the embedded default, stdlib `sqlite3`, nothing to install).

The interface is small on purpose, so that a PostgreSQL store could implement it for several
service replicas; that store is NOT implemented: `open_job_store` refuses `postgresql://` URLs
with a message saying so.

Durability: a chunk of images is committed in one transaction (its rows and the items' `done`
flags together), so a service stopped at any moment resumes with exactly the images whose rows
were not committed, and never writes an image's rows twice. One service process per database:
`requeue_running` at start-up assumes no other process is working on the jobs.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

JobStatus = Literal["queued", "running", "done", "failed", "expired"]
ACTIVE: tuple[JobStatus, ...] = ("queued", "running")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored. Times are Unix seconds; `expires_at` is set when the job ends."""

    id: str
    owner: str | None  # the API key's identity when keys are configured, else None
    status: JobStatus
    source: Literal["urls", "zip"]
    options: dict[str, Any]
    images_total: int
    images_done: int
    faces: int
    images_without_faces: int
    errors: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    message: str | None  # why a job failed


@dataclass(frozen=True, slots=True)
class NewItem:
    """One image of a new job: its label (the `path` of its rows), where to read it (a URL or
    a stored upload's file name), or why it was refused at intake (then `source` is None)."""

    label: str
    source: str | None
    refused: tuple[str, str] | None = None  # (error type, message)


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """A stored image of a job that has not been analysed yet."""

    index: int
    label: str
    source: str | None
    refused: tuple[str, str] | None


class JobStore(Protocol):
    """What the job runner and the API need from a database."""

    def create_job(self, job: JobRecord, items: Sequence[NewItem]) -> None:
        """Store a queued job and its images in one transaction."""

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None."""

    def count_active(self) -> int:
        """Jobs queued or running."""

    def active_job_ids(self) -> set[str]:
        """Ids of the jobs queued or running."""

    def requeue_running(self) -> int:
        """Put jobs left `running` by a stopped process back in the queue; how many."""

    def claim_next(self, now: float) -> JobRecord | None:
        """Mark the oldest queued job running (keeping its first start time) and return it."""

    def pending_items(self, job_id: str, limit: int) -> list[ItemRecord]:
        """Up to `limit` images of the job not analysed yet, in order."""

    def commit_items(
        self, job_id: str, rows_by_item: Sequence[tuple[int, list[dict[str, Any]]]]
    ) -> bool:
        """Store the rows of these images and mark them done, in one transaction; False (and
        nothing stored) when the job is no longer running (deleted meanwhile)."""

    def finish_job(
        self, job_id: str, status: JobStatus, now: float, expires_at: float, message: str | None
    ) -> None:
        """Mark a running job done or failed."""

    def result_rows(self, job_id: str) -> list[dict[str, Any]]:
        """Every committed row of the job, in image order then face order."""

    def delete_job(self, job_id: str) -> bool:
        """Remove the job, its images and its rows; False when there was no such job."""

    def expire(self, now: float) -> list[str]:
        """Mark ended jobs whose results are past `expires_at` expired and drop their rows."""

    def purge_expired(self, before: float) -> int:
        """Forget expired jobs that expired before `before` (then they are 404)."""

    def close(self) -> None:
        """Release the connection."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    options TEXT NOT NULL,
    images_total INTEGER NOT NULL,
    images_done INTEGER NOT NULL DEFAULT 0,
    faces INTEGER NOT NULL DEFAULT 0,
    images_without_faces INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    item_index INTEGER NOT NULL,
    label TEXT NOT NULL,
    source TEXT,
    refused_type TEXT,
    refused_message TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, item_index)
);
CREATE TABLE IF NOT EXISTS job_rows (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    item_index INTEGER NOT NULL,
    row_index INTEGER NOT NULL,
    row_json TEXT NOT NULL,
    PRIMARY KEY (job_id, item_index, row_index)
);
"""
_JOB_COLUMNS = (
    "id, owner, status, source, options, images_total, images_done, faces, "
    "images_without_faces, errors, created_at, started_at, finished_at, expires_at, message"
)


def _plain(value: Any) -> Any:
    """numpy scalars (a float32 score, say) as the Python numbers JSON can hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _job(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["options"] = json.loads(values["options"])
    return JobRecord(**values)


class SqliteJobStore:
    """JobStore on one SQLite file (WAL mode), shared by threads through one lock."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA foreign_keys=ON")
        self._connection.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def create_job(self, job: JobRecord, items: Sequence[NewItem]) -> None:
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                (
                    job.id,
                    job.owner,
                    job.status,
                    job.source,
                    json.dumps(job.options),
                    job.images_total,
                    job.images_done,
                    job.faces,
                    job.images_without_faces,
                    job.errors,
                    job.created_at,
                    job.started_at,
                    job.finished_at,
                    job.expires_at,
                    job.message,
                ),
            )
            db.executemany(
                "INSERT INTO job_items (job_id, item_index, label, source, refused_type, "
                "refused_message) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        job.id,
                        index,
                        item.label,
                        item.source,
                        item.refused[0] if item.refused else None,
                        item.refused[1] if item.refused else None,
                    )
                    for index, item in enumerate(items)
                ],
            )

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._connection.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None else _job(row)

    def count_active(self) -> int:
        with self._lock:
            row = self._connection.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
        return int(row[0])

    def active_job_ids(self) -> set[str]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT id FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchall()
        return {str(r[0]) for r in rows}

    def requeue_running(self) -> int:
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'").rowcount

    def claim_next(self, now: float) -> JobRecord | None:
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'queued' "
                "ORDER BY created_at, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?) "
                "WHERE id = ?",
                (now, row["id"]),
            )
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (row["id"],)
            ).fetchone()
        return _job(row)

    def pending_items(self, job_id: str, limit: int) -> list[ItemRecord]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT item_index, label, source, refused_type, refused_message FROM job_items "
                "WHERE job_id = ? AND done = 0 ORDER BY item_index LIMIT ?",
                (job_id, limit),
            ).fetchall()
        return [
            ItemRecord(
                index=int(r["item_index"]),
                label=str(r["label"]),
                source=r["source"],
                refused=(r["refused_type"], r["refused_message"]) if r["refused_type"] else None,
            )
            for r in rows
        ]

    def commit_items(
        self, job_id: str, rows_by_item: Sequence[tuple[int, list[dict[str, Any]]]]
    ) -> bool:
        with self._transaction() as db:
            job = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None or job["status"] != "running":
                return False
            done = [
                index
                for index, _ in rows_by_item
                if db.execute(
                    "UPDATE job_items SET done = 1 "
                    "WHERE job_id = ? AND item_index = ? AND done = 0",
                    (job_id, index),
                ).rowcount
            ]
            newly_done = set(done)
            fresh = [(index, rows) for index, rows in rows_by_item if index in newly_done]
            db.executemany(
                "INSERT INTO job_rows (job_id, item_index, row_index, row_json) "
                "VALUES (?, ?, ?, ?)",
                [
                    (job_id, index, k, json.dumps(row, default=_plain))
                    for index, rows in fresh
                    for k, row in enumerate(rows)
                ],
            )
            statuses = [row["status"] for _, rows in fresh for row in rows]
            db.execute(
                "UPDATE jobs SET images_done = images_done + ?, faces = faces + ?, "
                "images_without_faces = images_without_faces + ?, errors = errors + ? "
                "WHERE id = ?",
                (
                    len(fresh),
                    statuses.count("face"),
                    statuses.count("no_face"),
                    statuses.count("error"),
                    job_id,
                ),
            )
        return True

    def finish_job(
        self, job_id: str, status: JobStatus, now: float, expires_at: float, message: str | None
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, expires_at = ?, message = ? "
                "WHERE id = ? AND status = 'running'",
                (status, now, expires_at, message, job_id),
            )

    def result_rows(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT row_json FROM job_rows WHERE job_id = ? ORDER BY item_index, row_index",
                (job_id,),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def delete_job(self, job_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def expire(self, now: float) -> list[str]:
        with self._transaction() as db:
            ids = [
                str(r[0])
                for r in db.execute(
                    "SELECT id FROM jobs WHERE status IN ('done', 'failed') AND expires_at <= ?",
                    (now,),
                ).fetchall()
            ]
            for job_id in ids:
                db.execute("DELETE FROM job_rows WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM job_items WHERE job_id = ?", (job_id,))
                db.execute("UPDATE jobs SET status = 'expired' WHERE id = ?", (job_id,))
        return ids

    def purge_expired(self, before: float) -> int:
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM jobs WHERE status = 'expired' AND expires_at <= ?", (before,)
            ).rowcount

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///relative` or `sqlite:////absolute` URL (SQLAlchemy's form)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"not a SQLite URL with a file: {url!r} (write sqlite:////path/jobs.sqlite3)"
        )
    return url[len(prefix) :]


def open_job_store(url: str) -> JobStore:
    """The store behind a database URL. Only SQLite is implemented; PostgreSQL URLs raise
    ValueError saying so."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return SqliteJobStore(sqlite_path(url))
    if scheme.startswith("postgres"):
        raise ValueError(
            "AGELENS_JOBS_DATABASE_URL names PostgreSQL, which is not implemented yet: the job "
            "store is SQLite only (a PostgreSQL JobStore would implement agelens.server.jobstore."
            "JobStore). Use a sqlite:/// URL"
        )
    raise ValueError(f"unsupported AGELENS_JOBS_DATABASE_URL scheme {scheme!r}; use sqlite:///")
