"""Where jobs, their images and their result rows live: the `JobStore` interface and its two
implementations, SQLite (the embedded default, stdlib `sqlite3`, nothing to install) and
PostgreSQL (psycopg 3, `pip install 'agelens[postgres]'`), chosen by the database URL.

Both stores run the same SQL (`_SqlJobStore`); a `_Dialect` holds the few differences
(placeholders, row locks). The schema is created if missing, so opening a store is idempotent.

Durability: a chunk of images is committed in one transaction (its rows and the items' `done`
flags together), so a service stopped at any moment resumes with exactly the images whose rows
were not committed, and never writes an image's rows twice.

Several processes: with PostgreSQL, `claim_next` takes a queued job with `FOR UPDATE SKIP
LOCKED`, so replicas sharing the database never claim the same job. A running job carries a
lease: `heartbeat_at`, set when it is claimed and renewed before each chunk (`heartbeat`).
`requeue_running` with a lease puts back only the jobs whose heartbeat is older than it, i.e.
those of a replica that stopped, not those another replica is working on.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agelens.errors import AgelensError, MissingExtraError

if TYPE_CHECKING:
    import psycopg

JobStatus = Literal["queued", "running", "done", "failed", "expired"]
ACTIVE: tuple[JobStatus, ...] = ("queued", "running")
POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg")


class JobStoreUnavailableError(AgelensError):
    """The jobs database cannot be reached (a PostgreSQL server down, a wrong URL)."""

    code = "job_store_unavailable"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored. Times are Unix seconds; `expires_at` is set when the job ends."""

    id: str
    owner: str | None  # the API key's identity when keys are configured, else None
    status: JobStatus
    source: Literal["urls", "zip", "video"]
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

    def requeue_running(self, now: float, lease_s: float | None = None) -> int:
        """Put jobs left `running` back in the queue; how many. Without `lease_s`, every one
        (a single process starting: none can be running elsewhere); with it, only those whose
        heartbeat is older than `lease_s` seconds, or missing (their process stopped). A job
        requeued while its process was merely slow may be analysed twice over, never stored
        twice: the `done` flags decide."""

    def claim_next(self, now: float) -> JobRecord | None:
        """Mark the oldest queued job running (keeping its first start time), its heartbeat
        `now`, and return it. Safe with several processes: no two calls get the same job."""

    def heartbeat(self, job_id: str, now: float) -> bool:
        """Renew a running job's lease; False when it is no longer running."""

    def pending_items(self, job_id: str, limit: int) -> list[ItemRecord]:
        """Up to `limit` images of the job not analysed yet, in order."""

    def set_progress(self, job_id: str, done: int, total: int, faces: int) -> bool:
        """A video job's counts (frames done and expected, people found); False when the job
        is no longer running."""

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


# One schema for both databases: DOUBLE PRECISION (not REAL, a 4-byte float in PostgreSQL that
# would round Unix times to minutes) has REAL affinity in SQLite.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
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
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    expires_at DOUBLE PRECISION,
    message TEXT,
    heartbeat_at DOUBLE PRECISION
)""",
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at)",
    """CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    item_index INTEGER NOT NULL,
    label TEXT NOT NULL,
    source TEXT,
    refused_type TEXT,
    refused_message TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, item_index)
)""",
    """CREATE TABLE IF NOT EXISTS job_rows (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    item_index INTEGER NOT NULL,
    row_index INTEGER NOT NULL,
    row_json TEXT NOT NULL,
    PRIMARY KEY (job_id, item_index, row_index)
)""",
)
_JOB_COLUMNS = (
    "id, owner, status, source, options, images_total, images_done, faces, "
    "images_without_faces, errors, created_at, started_at, finished_at, expires_at, message"
)


@dataclass(frozen=True, slots=True)
class _Dialect:
    """What differs between the two databases in the shared SQL (written with `?`)."""

    placeholder: str  # what `?` becomes
    lock_row: str  # appended to a SELECT whose rows the transaction will update
    skip_locked: str  # appended to the SELECT that claims a job


_SQLITE = _Dialect(placeholder="?", lock_row="", skip_locked="")  # BEGIN IMMEDIATE locks all
_POSTGRES = _Dialect(
    placeholder="%s", lock_row=" FOR UPDATE", skip_locked=" FOR UPDATE SKIP LOCKED"
)


class _Cursor:
    """A DB-API cursor that takes `?` placeholders and gives rows as dicts."""

    def __init__(self, raw: Any, dialect: _Dialect) -> None:
        self._raw = raw
        self._dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._dialect.placeholder)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        self._raw.execute(self._sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self._raw.executemany(self._sql(sql), [tuple(p) for p in params])

    def fetchone(self) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self._raw.fetchone()
        return row

    def fetchall(self) -> list[dict[str, Any]]:
        return list(self._raw.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)


def _plain(value: Any) -> Any:
    """numpy scalars (a float32 score, say) as the Python numbers JSON can hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _job(row: dict[str, Any]) -> JobRecord:
    values = dict(row)
    values["options"] = json.loads(values["options"])
    return JobRecord(**values)


class _SqlJobStore:
    """The JobStore queries, shared by both databases. A subclass supplies `_transaction`
    (one transaction, committed on exit, rolled back on an exception) and `_read` (one
    statement's worth of reading), each yielding a `_Cursor`."""

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        raise NotImplementedError
        yield

    @contextmanager
    def _read(self) -> Iterator[_Cursor]:
        raise NotImplementedError
        yield

    @property
    def _dialect(self) -> _Dialect:
        raise NotImplementedError

    def create_job(self, job: JobRecord, items: Sequence[NewItem]) -> None:
        """Store a queued job and its images in one transaction."""
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
        """The job, or None."""
        with self._read() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def count_active(self) -> int:
        """Jobs queued or running."""
        with self._read() as db:
            row = db.execute(
                "SELECT COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
        assert row is not None
        return int(row["n"])

    def active_job_ids(self) -> set[str]:
        """Ids of the jobs queued or running."""
        with self._read() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchall()
        return {str(r["id"]) for r in rows}

    def requeue_running(self, now: float, lease_s: float | None = None) -> int:
        """Put jobs left `running` back in the queue; how many (see JobStore)."""
        with self._transaction() as db:
            if lease_s is None:
                return db.execute(
                    "UPDATE jobs SET status = 'queued' WHERE status = 'running'"
                ).rowcount
            return db.execute(
                "UPDATE jobs SET status = 'queued' WHERE status = 'running' "
                "AND (heartbeat_at IS NULL OR heartbeat_at < ?)",
                (now - lease_s,),
            ).rowcount

    def heartbeat(self, job_id: str, now: float) -> bool:
        """Renew a running job's lease; False when it is no longer running."""
        with self._transaction() as db:
            return (
                db.execute(
                    "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND status = 'running'",
                    (now, job_id),
                ).rowcount
                > 0
            )

    def claim_next(self, now: float) -> JobRecord | None:
        """Mark the oldest queued job running and return it; no two callers get the same job."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1"
                + self._dialect.skip_locked
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), "
                "heartbeat_at = ? WHERE id = ?",
                (now, now, row["id"]),
            )
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (row["id"],)
            ).fetchone()
        assert row is not None
        return _job(row)

    def pending_items(self, job_id: str, limit: int) -> list[ItemRecord]:
        """Up to `limit` images of the job not analysed yet, in order."""
        with self._read() as db:
            rows = db.execute(
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
        """Store the rows of these images and mark them done, in one transaction; False (and
        nothing stored) when the job is no longer running."""
        with self._transaction() as db:
            job = db.execute(
                "SELECT status FROM jobs WHERE id = ?" + self._dialect.lock_row, (job_id,)
            ).fetchone()
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

    def set_progress(self, job_id: str, done: int, total: int, faces: int) -> bool:
        """A video job's counts (frames done and expected, people found); False when the job
        is no longer running."""
        with self._transaction() as db:
            return bool(
                db.execute(
                    "UPDATE jobs SET images_done = ?, images_total = ?, faces = ? "
                    "WHERE id = ? AND status = 'running'",
                    (done, total, faces, job_id),
                ).rowcount
            )

    def finish_job(
        self, job_id: str, status: JobStatus, now: float, expires_at: float, message: str | None
    ) -> None:
        """Mark a running job done or failed."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, expires_at = ?, message = ? "
                "WHERE id = ? AND status = 'running'",
                (status, now, expires_at, message, job_id),
            )

    def result_rows(self, job_id: str) -> list[dict[str, Any]]:
        """Every committed row of the job, in image order then face order."""
        with self._read() as db:
            rows = db.execute(
                "SELECT row_json FROM job_rows WHERE job_id = ? ORDER BY item_index, row_index",
                (job_id,),
            ).fetchall()
        return [json.loads(r["row_json"]) for r in rows]

    def delete_job(self, job_id: str) -> bool:
        """Remove the job, its images and its rows; False when there was no such job."""
        with self._transaction() as db:
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def expire(self, now: float) -> list[str]:
        """Mark ended jobs past `expires_at` expired and drop their rows; their ids."""
        with self._transaction() as db:
            ids = [
                str(r["id"])
                for r in db.execute(
                    "SELECT id FROM jobs WHERE status IN ('done', 'failed') AND expires_at <= ?"
                    + self._dialect.lock_row,
                    (now,),
                ).fetchall()
            ]
            for job_id in ids:
                db.execute("DELETE FROM job_rows WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM job_items WHERE job_id = ?", (job_id,))
                db.execute("UPDATE jobs SET status = 'expired' WHERE id = ?", (job_id,))
        return ids

    def purge_expired(self, before: float) -> int:
        """Forget expired jobs that expired before `before`; how many."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM jobs WHERE status = 'expired' AND expires_at <= ?", (before,)
            ).rowcount


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class SqliteJobStore(_SqlJobStore):
    """JobStore on one SQLite file (WAL mode), shared by threads through one lock. One
    process per file."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._connection.row_factory = _dict_row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            # a database made before jobs had a lease
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)").fetchall()}
            if "heartbeat_at" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN heartbeat_at DOUBLE PRECISION")

    @property
    def _dialect(self) -> _Dialect:
        return _SQLITE

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield _Cursor(self._connection.cursor(), _SQLITE)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[_Cursor]:
        with self._lock:
            yield _Cursor(self._connection.cursor(), _SQLITE)

    def close(self) -> None:
        """Release the connection."""
        with self._lock:
            self._connection.close()


# Held while creating the schema, so replicas starting together do not race on CREATE TABLE.
_SCHEMA_LOCK_KEY = 0x6167656C656E73  # "agelens"


def postgres_conninfo(url: str) -> str:
    """The libpq URL of a `postgresql://` or `postgresql+psycopg://` (SQLAlchemy's form) URL."""
    scheme, rest = url.split("://", 1) if "://" in url else ("", "")
    if scheme.lower() not in POSTGRES_SCHEMES:
        raise ValueError(
            f"not a PostgreSQL URL: {redact_url(url)!r} (write postgresql://user:password@host:"
            "port/database)"
        )
    return f"postgresql://{rest}"


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


class PostgresJobStore(_SqlJobStore):
    """JobStore on a PostgreSQL database (psycopg 3), which several service replicas may share:
    `claim_next` never gives two of them the same job. One connection per store, shared by
    threads through one lock, opened again if the server dropped it.

    Raises MissingExtraError without psycopg, JobStoreUnavailableError when the server cannot
    be reached.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError as error:
            raise MissingExtraError(
                "a postgresql:// jobs database needs psycopg, which is not installed; run: "
                "pip install 'agelens[postgres]'"
            ) from error
        self.url = url
        self._conninfo = postgres_conninfo(url)
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._connection = self._connect()
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK_KEY,))
            for statement in _SCHEMA:
                db.execute(statement)
            # a database made before jobs had a lease
            db.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS heartbeat_at DOUBLE PRECISION")

    @property
    def _dialect(self) -> _Dialect:
        return _POSTGRES

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        try:
            return psycopg.connect(
                self._conninfo,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=max(1, round(self._connect_timeout_s)),
                application_name="agelens-jobs",
            )
        except psycopg.OperationalError as error:
            raise JobStoreUnavailableError(
                f"cannot connect to the jobs database {redact_url(self.url)}: "
                f"{str(error).strip()}. Check AGELENS_JOBS_DATABASE_URL and that the PostgreSQL "
                "server is running and reachable"
            ) from error

    def _connection_now(self) -> psycopg.Connection[dict[str, Any]]:
        if self._connection.closed or self._connection.broken:
            self._connection = self._connect()
        return self._connection

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        with self._lock:
            connection = self._connection_now()
            with connection.transaction(), connection.cursor() as cursor:
                yield _Cursor(cursor, _POSTGRES)

    @contextmanager
    def _read(self) -> Iterator[_Cursor]:
        with self._lock, self._connection_now().cursor() as cursor:
            yield _Cursor(cursor, _POSTGRES)

    def close(self) -> None:
        """Release the connection."""
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
    """The store behind a database URL: `sqlite:///...` or `postgresql://...` (also
    `postgresql+psycopg://`). Raises ValueError for another scheme, MissingExtraError or
    JobStoreUnavailableError for PostgreSQL without psycopg or without a reachable server."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return SqliteJobStore(sqlite_path(url))
    if scheme in POSTGRES_SCHEMES:
        return PostgresJobStore(url)
    raise ValueError(
        f"unsupported AGELENS_JOBS_DATABASE_URL scheme {scheme!r}; use sqlite:/// or postgresql://"
    )
