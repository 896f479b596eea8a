"""The jobs API on the real models: URL jobs served by a local HTTP server (allowed through
`url_allow_networks`), zip jobs, a restart in the middle of a job, expiry, keys and limits."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import stat
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from agelens.imaging import DecodedImage
from agelens.rows import COLUMN_NAMES, rows_to_table, sha256_bytes
from agelens.server.app import create_app
from agelens.server.engine import AnalysisOptions, ModelPool
from agelens.server.errors import RequestTooLargeError
from agelens.server.jobs import extract_zip, folder_bytes
from agelens.server.jobstore import JobStoreUnavailableError, open_job_store
from agelens.server.settings import Settings
from agelens.types import ImageResult
from tests.conftest import DecodeSpy
from tests.server.conftest import ClientFactory, WebServer, jpeg_bytes

LOCAL = ["127.0.0.1/32"]
TERMINAL = {"done", "failed", "expired"}


# ------------------------------------------------------------------ a local image server


@dataclass
class Route:
    body: bytes
    content_type: str = "image/jpeg"
    status: int = 200
    gated: bool = False  # wait for ImageServer.gate before answering


@dataclass
class ImageServer:
    """The shared local web server (conftest.web_server) serving `Route`s."""

    web: WebServer
    gate: threading.Event

    @property
    def base(self) -> str:
        return self.web.base

    @property
    def hits(self) -> list[str]:
        return self.web.requested

    def add(self, path: str, route: Route) -> str:
        def answer(handler: BaseHTTPRequestHandler) -> None:
            if route.gated:
                self.gate.wait(timeout=60)
            handler.send_response(route.status)
            handler.send_header("Content-Type", route.content_type)
            handler.send_header("Content-Length", str(len(route.body)))
            handler.end_headers()
            handler.wfile.write(route.body)

        self.web.routes[path] = answer
        return self.web.base + path


@pytest.fixture
def image_server(web_server: WebServer) -> Iterator[ImageServer]:
    server = ImageServer(web_server, threading.Event())
    try:
        yield server
    finally:
        server.gate.set()  # before the web server shuts down: no handler left waiting


# ------------------------------------------------------------------ helpers


def wait_for(
    client: TestClient, job_id: str, until: Any = None, timeout: float = 120
) -> dict[str, Any]:
    """Poll the job until `until(job)` (default: a terminal status)."""
    until = until or (lambda job: job["status"] in TERMINAL)
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job never reached the state: {job}"
        time.sleep(0.05)


def jsonl_rows(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/jobs/{job_id}/results")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def assert_error_shape(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def make_zip(members: dict[str, bytes], *, links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def uploads_of(data_dir: Path, job_id: str) -> Path:
    return data_dir / "job-uploads" / job_id


# ------------------------------------------------------------------ URL jobs


def test_url_job_gives_rows_results_and_report(
    make_client: ClientFactory,
    image_server: ImageServer,
    astronaut_jpeg: bytes,
    blank_jpeg: bytes,
) -> None:
    client = make_client(url_allow_networks=LOCAL)
    urls = [
        image_server.add("/astronaut.jpg", Route(astronaut_jpeg)),
        image_server.add("/blank.jpg", Route(blank_jpeg)),
        image_server.add("/notes.jpg", Route(b"not an image at all")),
        image_server.add("/page.html", Route(b"<html>", content_type="text/html")),
        image_server.base + "/missing.jpg",
        "http://10.1.2.3/private.jpg",  # a private address: refused, an error row
        "ftp://example.com/a.jpg",
    ]
    response = client.post("/v1/jobs", json={"urls": urls})
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/jobs/{created['id']}"
    assert created["status"] == "queued"
    assert created["images_total"] == len(urls)

    job = wait_for(client, created["id"])
    assert job["status"] == "done"
    assert job["progress"] == 1.0
    assert (job["images_done"], job["faces"], job["images_without_faces"], job["errors"]) == (
        7,
        1,
        1,
        5,
    )
    assert job["started_at"] >= job["created_at"]
    assert job["finished_at"] >= job["started_at"]
    assert job["expires_at"] > job["finished_at"]

    rows = jsonl_rows(client, job["id"])
    assert [r["path"] for r in rows] == urls
    assert all(list(r) == list(COLUMN_NAMES) for r in rows)
    face, blank, *errors = rows
    assert face["status"] == "face"
    assert face["gender"] == "F"
    assert 25 <= face["age_years"] <= 60
    assert face["content_sha256"] == sha256_bytes(astronaut_jpeg)
    assert blank["status"] == "no_face"
    assert [r["error_type"] for r in errors] == [
        "ImageDecodeError",
        "UrlFetchError",
        "UrlFetchError",
        "UrlForbiddenError",
        "UrlForbiddenError",
    ]
    assert "10.1.2.3" in errors[3]["error_message"]
    assert "/private.jpg" not in image_server.hits

    parquet = client.get(f"/v1/jobs/{job['id']}/results", params={"format": "parquet"})
    assert parquet.status_code == 200
    assert pq.read_table(io.BytesIO(parquet.content)).equals(rows_to_table(rows))

    report = client.get(f"/v1/jobs/{job['id']}/report")
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in report.headers["content-security-policy"]
    page = report.text
    assert f"agelens job {job['id']}" in page
    assert page.count("<svg") == 6
    assert "10.1.2.3" in page  # the error list
    assert "http-equiv" not in page
    assert "<script" not in page


def test_an_image_the_models_fail_on_costs_its_row_not_the_chunk(
    make_client: ClientFactory,
    model_pool: ModelPool,
    image_server: ImageServer,
    astronaut_jpeg: bytes,
    blank_jpeg: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    culprit_shape = (240, 321, 3)
    runs: list[int] = []
    real_run = model_pool.run

    def run(options: AnalysisOptions, images: Sequence[DecodedImage]) -> list[ImageResult]:
        runs.append(len(images))
        if any(image.image.pixels.shape == culprit_shape for image in images):
            raise RuntimeError("the network broke on this image")
        return real_run(options, images)

    monkeypatch.setattr(model_pool, "run", run)
    client = make_client(url_allow_networks=LOCAL, jobs_chunk_images=3)
    urls = [
        image_server.add("/astronaut.jpg", Route(astronaut_jpeg)),
        image_server.add("/culprit.jpg", Route(jpeg_bytes(np.full(culprit_shape, 90, np.uint8)))),
        image_server.add("/blank.jpg", Route(blank_jpeg)),
        image_server.add("/alone.jpg", Route(jpeg_bytes(np.full(culprit_shape, 30, np.uint8)))),
    ]
    created = client.post("/v1/jobs", json={"urls": urls}).json()
    job = wait_for(client, created["id"])

    assert job["status"] == "done", job
    assert (job["images_done"], job["faces"], job["images_without_faces"], job["errors"]) == (
        4,
        1,
        1,
        2,
    )
    # the first chunk's shared run, then its three images alone; the second chunk's one
    # image is already alone, so it is not run twice
    assert runs == [3, 1, 1, 1, 1]
    rows = jsonl_rows(client, job["id"])
    assert [r["path"] for r in rows] == urls
    assert [r["status"] for r in rows] == ["face", "error", "no_face", "error"]
    assert rows[0]["gender"] == "F"
    for row in (rows[1], rows[3]):
        assert (row["error_type"], row["error_message"]) == (
            "RuntimeError",
            "the network broke on this image",
        )
        assert row["content_sha256"] is not None


def test_utkface_url_job(
    make_client: ClientFactory, image_server: ImageServer, utkface_dir: Path
) -> None:
    with (utkface_dir / "labels.csv").open() as handle:
        chosen = [r for r in csv.DictReader(handle) if r["split"] == "test"][:24]
    urls = [
        image_server.add(f"/utk/{i}.jpg", Route((utkface_dir / row["file"]).read_bytes()))
        for i, row in enumerate(chosen)
    ]
    client = make_client(url_allow_networks=LOCAL)
    created = client.post("/v1/jobs", json={"urls": urls, "min_face": 20}).json()
    job = wait_for(client, created["id"])
    assert job["status"] == "done"
    assert job["images_done"] == len(urls)
    assert job["errors"] == 0
    rows = jsonl_rows(client, job["id"])
    per_image: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        per_image.setdefault(row["path"], []).append(row)
    assert list(per_image) == urls  # every image once, in order
    for image_rows in per_image.values():
        if image_rows[0]["status"] == "face":
            assert [r["face_index"] for r in image_rows] == list(range(len(image_rows)))
        else:
            assert len(image_rows) == 1
    assert job["faces"] == sum(r["status"] == "face" for r in rows)
    assert job["images_without_faces"] == sum(r["status"] == "no_face" for r in rows)


# ------------------------------------------------------------------ zip jobs


def test_zip_job_refuses_unsafe_members_and_deletes_its_images(
    make_client: ClientFactory,
    image_server: ImageServer,
    astronaut_jpeg: bytes,
    blank_jpeg: bytes,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    client = make_client(url_allow_networks=LOCAL, data_dir=data_dir)
    # A URL job held at its first image keeps the worker busy, so the zip job waits queued.
    blocker = client.post(
        "/v1/jobs", json={"urls": [image_server.add("/held.jpg", Route(blank_jpeg, gated=True))]}
    ).json()
    wait_for(client, blocker["id"], lambda job: job["status"] == "running")

    archive = make_zip(
        {
            "astronaut.jpg": astronaut_jpeg,
            "photos/": b"",
            "photos/blank.jpg": blank_jpeg,
            "notes.txt": b"a text file, not an image",
            "../evil.jpg": astronaut_jpeg,
            "/etc/cron.d/evil.jpg": astronaut_jpeg,
            "__MACOSX/._astronaut.jpg": b"resource fork",
        },
        links=("link.jpg",),
    )
    response = client.post("/v1/jobs", files={"file": ("photos.zip", archive, "application/zip")})
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["source"] == "zip"
    assert created["images_total"] == 6  # the folder and the macOS metadata are skipped
    stored = uploads_of(data_dir, created["id"])
    assert sorted(p.name for p in stored.iterdir()) == ["000000", "000001", "000002"]
    assert not (tmp_path / "evil.jpg").exists()
    assert not list(data_dir.rglob("evil.jpg"))

    # the same zip again, deleted while queued: its images go at once
    second = client.post("/v1/jobs", content=archive, headers={"content-type": "application/zip"})
    assert second.status_code == 202
    assert uploads_of(data_dir, second.json()["id"]).is_dir()
    assert client.delete(f"/v1/jobs/{second.json()['id']}").status_code == 204
    assert not uploads_of(data_dir, second.json()["id"]).exists()
    assert_error_shape(client.get(f"/v1/jobs/{second.json()['id']}"), 404, "not_found")

    image_server.gate.set()
    job = wait_for(client, created["id"])
    assert job["status"] == "done"
    assert not stored.exists(), "the zip's images stay on disk after the job"
    rows = jsonl_rows(client, job["id"])
    assert [(r["path"], r["status"], r["error_type"]) for r in rows] == [
        ("astronaut.jpg", "face", None),
        ("photos/blank.jpg", "no_face", None),
        ("notes.txt", "error", "ImageDecodeError"),
        ("../evil.jpg", "error", "UnsafeZipMemberError"),
        ("/etc/cron.d/evil.jpg", "error", "UnsafeZipMemberError"),
        ("link.jpg", "error", "UnsafeZipMemberError"),
    ]
    assert rows[0]["content_sha256"] == sha256_bytes(astronaut_jpeg)


@pytest.mark.parametrize(
    ("archive", "status", "code"),
    [
        (make_zip({"bomb.jpg": bytes(3 * 1024 * 1024)}), 413, "request_too_large"),
        (make_zip({f"{i}.jpg": bytes(400 * 1024) for i in range(3)}), 413, "request_too_large"),
        (make_zip({f"{i}.jpg": b"x" for i in range(6)}), 400, "invalid_request"),
        (make_zip({"empty/": b""}), 400, "invalid_request"),
        (b"PK\x03\x04 but not really a zip", 400, "invalid_request"),
    ],
    ids=["bomb", "adds-up", "too-many-members", "no-file", "not-a-zip"],
)
def test_zip_limits(
    make_client: ClientFactory, tmp_path: Path, archive: bytes, status: int, code: str
) -> None:
    data_dir = tmp_path / "data"
    client = make_client(
        data_dir=data_dir, jobs_max_images=5, jobs_zip_max_uncompressed_bytes=1024 * 1024
    )
    response = client.post("/v1/jobs", files={"file": ("a.zip", archive, "application/zip")})
    assert_error_shape(response, status, code)
    uploads = data_dir / "job-uploads"
    assert not uploads.exists() or not list(uploads.iterdir())


def _deflated_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_bomb_is_refused_before_anything_is_written(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """50 x 2 MiB of zeros deflate to ~100 KB: within the byte limits, far over the ratio."""
    archive = _deflated_zip({f"{i}.jpg": bytes(2 * 1024 * 1024) for i in range(50)})
    assert len(archive) < 200 * 1024
    data_dir = tmp_path / "data"
    client = make_client(data_dir=data_dir, jobs_zip_max_uncompressed_bytes=1024**3)
    response = client.post("/v1/jobs", files={"file": ("a.zip", archive, "application/zip")})
    assert_error_shape(response, 413, "request_too_large")
    assert "zip bomb" in response.json()["error"]["message"]
    uploads = data_dir / "job-uploads"
    assert not uploads.exists() or not list(uploads.iterdir())


def test_zip_extraction_respects_the_disk_budget_of_all_jobs(tmp_path: Path) -> None:
    archive = _deflated_zip({f"{i}.jpg": bytes(range(256)) * 400 for i in range(3)})
    folder = tmp_path / "job"
    with pytest.raises(RequestTooLargeError, match="disk space"):
        extract_zip(
            archive,
            folder,
            max_members=10,
            max_total_bytes=10**9,
            max_member_bytes=10**9,
            max_ratio=1000,
            disk_budget_bytes=200_000,
        )
    assert not folder.exists()
    items = extract_zip(
        archive,
        folder,
        max_members=10,
        max_total_bytes=10**9,
        max_member_bytes=10**9,
        max_ratio=1000,
        disk_budget_bytes=400_000,
    )
    assert len(items) == 3
    assert folder_bytes(folder) == 3 * 256 * 400
    assert folder_bytes(tmp_path / "absent") == 0


# ------------------------------------------------------------------ restart


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_restart_mid_job_resumes_without_duplicate_rows(
    database: str,
    model_pool: ModelPool,
    image_server: ImageServer,
    astronaut_jpeg: bytes,
    blank_jpeg: bytes,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    database_url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    settings = Settings(
        data_dir=tmp_path / "data",
        url_allow_networks=LOCAL,
        jobs_chunk_images=1,
        jobs_database_url=database_url,
        # PostgreSQL may be shared by replicas: a stopped one's job is taken back only once
        # its lease has run out (SQLite, one process per file, takes it back at start)
        jobs_lease_s=1.0,
    )
    urls = [
        image_server.add(f"/{i}.jpg", Route(astronaut_jpeg if i % 2 else blank_jpeg, gated=i >= 3))
        for i in range(7)
    ]
    with TestClient(create_app(settings, pool=model_pool)) as first:
        created = first.post("/v1/jobs", json={"urls": urls}).json()
        wait_for(first, created["id"], lambda job: job["images_done"] == 3)
        time.sleep(0.3)  # the worker now waits on image 3, which the server holds back
        before = wait_for(first, created["id"], lambda job: True)
        assert (before["status"], before["images_done"]) == ("running", 3)
    # the service is stopped mid-job: three images committed, the job still `running`
    store = open_job_store(settings.jobs_database())
    stopped = store.get_job(created["id"])
    assert stopped is not None
    assert (stopped.status, stopped.images_done) == ("running", 3)
    assert len(store.result_rows(created["id"])) == 3
    store.close()

    image_server.gate.set()
    with TestClient(create_app(settings, pool=model_pool)) as second:
        job = wait_for(second, created["id"])
        assert job["status"] == "done"
        assert job["images_done"] == 7
        assert (job["faces"], job["images_without_faces"], job["errors"]) == (3, 4, 0)
        assert job["started_at"] == before["started_at"]  # resumed, not started again
        rows = jsonl_rows(second, created["id"])
    assert [r["path"] for r in rows] == urls  # one row set per image, in order, none twice
    assert [r["status"] for r in rows] == ["no_face", "face"] * 3 + ["no_face"]
    store = open_job_store(settings.jobs_database())
    assert len(store.result_rows(created["id"])) == 7
    store.close()


def test_a_second_replica_leaves_a_running_job_alone(
    model_pool: ModelPool,
    image_server: ImageServer,
    astronaut_jpeg: bytes,
    blank_jpeg: bytes,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """Two services on one PostgreSQL database: the one starting second neither requeues nor
    analyses the job the first is working on (its heartbeat is fresh)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        url_allow_networks=LOCAL,
        jobs_chunk_images=1,
        jobs_database_url=postgres_url,
        jobs_poll_seconds=0.2,
    )
    urls = [
        image_server.add(f"/r{i}.jpg", Route(astronaut_jpeg if i else blank_jpeg, gated=i == 2))
        for i in range(3)
    ]
    with TestClient(create_app(settings, pool=model_pool)) as first:
        created = first.post("/v1/jobs", json={"urls": urls}).json()
        wait_for(first, created["id"], lambda job: job["images_done"] == 2)
        with TestClient(create_app(settings, pool=model_pool)) as second:
            time.sleep(1.0)  # five of its polls and sweeps
            job = wait_for(second, created["id"], lambda job: True)
            assert (job["status"], job["images_done"]) == ("running", 2)
        image_server.gate.set()
        job = wait_for(first, created["id"])
    assert (job["status"], job["images_done"], job["faces"]) == ("done", 3, 2)
    assert [image_server.hits.count(f"/r{i}.jpg") for i in range(3)] == [1, 1, 1]


def test_postgres_job_end_to_end_and_read_by_a_second_app(
    make_client: ClientFactory,
    image_server: ImageServer,
    astronaut_jpeg: bytes,
    blank_jpeg: bytes,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    urls = [
        image_server.add("/a.jpg", Route(astronaut_jpeg)),
        image_server.add("/b.jpg", Route(blank_jpeg)),
    ]
    first = make_client(url_allow_networks=LOCAL, jobs_database_url=postgres_url)
    created = first.post("/v1/jobs", json={"urls": urls}).json()
    job = wait_for(first, created["id"])
    assert (job["status"], job["images_done"], job["faces"]) == ("done", 2, 1)
    rows = jsonl_rows(first, job["id"])
    assert [r["status"] for r in rows] == ["face", "no_face"]
    # another replica (its own data folder) on the same database sees the same job and rows
    second = make_client(
        url_allow_networks=LOCAL, jobs_database_url=postgres_url, data_dir=tmp_path / "other"
    )
    assert wait_for(second, job["id"]) == job
    assert jsonl_rows(second, job["id"]) == rows
    assert image_server.hits.count("/a.jpg") == 1  # analysed once


# ------------------------------------------------------------------ expiry, keys, errors


def test_results_expire_with_410(
    make_client: ClientFactory, image_server: ImageServer, blank_jpeg: bytes
) -> None:
    client = make_client(url_allow_networks=LOCAL, jobs_result_ttl_s=1, jobs_poll_seconds=0.1)
    url = image_server.add("/blank.jpg", Route(blank_jpeg))
    created = client.post("/v1/jobs", json={"urls": [url]}).json()
    done = wait_for(client, created["id"], lambda job: job["status"] == "done")
    assert len(jsonl_rows(client, created["id"])) == 1
    expired = wait_for(client, created["id"], lambda job: job["status"] == "expired", timeout=10)
    assert expired["expires_at"] == done["expires_at"]
    for path in ("results", "results?format=parquet", "report"):
        assert_error_shape(client.get(f"/v1/jobs/{created['id']}/{path}"), 410, "expired")


def test_keys_owners_and_rate_limits(
    make_client: ClientFactory, image_server: ImageServer, blank_jpeg: bytes
) -> None:
    client = make_client(
        api_keys=["key-a", "key-b"], url_allow_networks=LOCAL, rate_limit_per_minute=6
    )
    url = image_server.add("/blank.jpg", Route(blank_jpeg))
    assert_error_shape(client.post("/v1/jobs", json={"urls": [url]}), 401, "unauthorized")
    a, b = {"X-API-Key": "key-a"}, {"Authorization": "Bearer key-b"}
    created = client.post("/v1/jobs", json={"urls": [url]}, headers=a)
    assert created.status_code == 202
    job_id = created.json()["id"]
    assert_error_shape(client.get(f"/v1/jobs/{job_id}", headers=b), 404, "not_found")
    assert_error_shape(client.delete(f"/v1/jobs/{job_id}", headers=b), 404, "not_found")
    assert_error_shape(client.get(f"/v1/jobs/{job_id}"), 401, "unauthorized")
    assert client.get(f"/v1/jobs/{job_id}", headers=a).status_code == 200
    assert client.delete(f"/v1/jobs/{job_id}", headers=a).status_code == 204
    assert_error_shape(client.get(f"/v1/jobs/{job_id}", headers=a), 404, "not_found")
    answers = [client.get(f"/v1/jobs/{job_id}", headers=a) for _ in range(4)]
    limited = answers[-1]
    assert_error_shape(limited, 429, "rate_limited")
    assert "retry-after" in limited.headers


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("post", "/v1/jobs", {"json": {"urls": []}}, 400, "invalid_request"),
        ("post", "/v1/jobs", {"json": {"urls": ["http://a/1.jpg"] * 6}}, 400, "invalid_request"),
        ("post", "/v1/jobs", {"json": {"images": ["x"]}}, 400, "invalid_request"),
        ("post", "/v1/jobs", {"json": {"urls": ["u"], "detector": "nope"}}, 400, "invalid_request"),
        (
            "post",
            "/v1/jobs",
            {"content": b"u", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ("get", "/v1/jobs/0123", {}, 404, "not_found"),
        ("get", "/v1/jobs/0123/results?format=xml", {}, 400, "invalid_request"),
        ("delete", "/v1/jobs/0123", {}, 404, "not_found"),
    ],
)
def test_invalid_job_requests(
    make_client: ClientFactory,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    client = make_client(jobs_max_images=5)
    assert_error_shape(getattr(client, method)(path, **kwargs), status, code)


def test_jobs_can_be_turned_off(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client(jobs_enabled=False, data_dir=tmp_path / "data")
    assert_error_shape(client.post("/v1/jobs", json={"urls": ["http://a/b.jpg"]}), 404, "not_found")
    assert not (tmp_path / "data").exists()


def test_nothing_is_written_before_the_first_job(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client(data_dir=tmp_path / "data")
    assert_error_shape(client.get("/v1/jobs/0123"), 404, "not_found")
    assert not (tmp_path / "data").exists()


def test_database_urls(tmp_path: Path) -> None:
    for url in ("postgresql://agelens@db/agelens", "postgresql+psycopg://a:b@db:5432/jobs"):
        assert Settings(jobs_database_url=url).jobs_database() == url
    with pytest.raises(ValidationError, match="postgresql://user:password@host"):
        Settings(jobs_database_url="mysql://agelens@db/agelens")
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'jobs.sqlite3'}"
    store = open_job_store(url)
    store.close()
    assert (tmp_path / "elsewhere" / "jobs.sqlite3").is_file()
    assert sqlite3.connect(tmp_path / "elsewhere" / "jobs.sqlite3").execute(
        "SELECT COUNT(*) FROM jobs"
    ).fetchone() == (0,)


def test_unreachable_postgres_stops_the_service_at_start(model_pool: ModelPool) -> None:
    pytest.importorskip("psycopg")
    settings = Settings(jobs_database_url="postgresql://agelens:secret@127.0.0.1:9/agelens")
    with (
        pytest.raises(JobStoreUnavailableError, match="cannot connect to the jobs database"),
        TestClient(create_app(settings, pool=model_pool)),
    ):
        pass


def test_a_zip_job_decodes_a_large_jpeg_reduced_as_the_library_does(
    make_client: ClientFactory,
    model_pool: ModelPool,
    large_photo_jpeg: bytes,
    decode_spy: DecodeSpy,
) -> None:
    client = make_client()
    archive = make_zip({"phone.jpg": large_photo_jpeg})
    response = client.post("/v1/jobs", files={"file": ("p.zip", archive, "application/zip")})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "done"
    assert decode_spy.scales
    assert decode_spy.scales[0] > 1
    (row,) = jsonl_rows(client, job["id"])
    settings = Settings()
    analyzer = model_pool.analyzer(settings.detector, settings.estimator)
    (expected,) = analyzer.analyze(large_photo_jpeg).faces
    box = [row[f"box_{name}_px"] for name in ("x1", "y1", "x2", "y2")]
    assert box == pytest.approx(list(expected.box_xyxy), abs=0.01)
    assert row["age_years"] == pytest.approx(expected.age_years, abs=0.01)
    assert (row["image_width_px"], row["image_height_px"]) == (3200, 2400)
