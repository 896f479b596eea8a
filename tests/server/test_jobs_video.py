"""Video jobs: `POST /v1/jobs` with a video, progress in frames, track and people rows and the
annotated clip, with the real models on a clip built from the astronaut photo."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from tests.server.conftest import ClientFactory

av = pytest.importorskip("av", reason="the video extra is not installed")
pytest.importorskip("supervision", reason="the video extra is not installed")

from tests.video.clips import astronaut_clip, encode, truncated_copy  # noqa: E402

TERMINAL = {"done", "failed", "expired"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, astronaut: NDArray[np.uint8]) -> Path:
    return astronaut_clip(tmp_path_factory.mktemp("clip"), astronaut).path


def wait_done(client: TestClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_a_video_upload_becomes_tracks_people_and_an_annotated_clip(
    make_client: ClientFactory, clip: Path
) -> None:
    client = make_client()
    response = client.post(
        "/v1/jobs",
        files={"file": ("astronaut.mp4", clip.read_bytes(), "video/mp4")},
        data={"estimate_every": "3"},
    )
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["source"] == "video"
    assert queued["images_total"] == 30  # frames, known from the upload
    assert queued["links"]["video"] == f"/v1/jobs/{queued['id']}/video"
    job = wait_done(client, queued["id"])
    assert job["status"] == "done", job
    assert (job["images_done"], job["images_total"], job["progress"]) == (30, 30, 1.0)
    assert job["faces"] == 1  # people
    tracks = [
        json.loads(line) for line in client.get(job["links"]["results_jsonl"]).text.splitlines()
    ]
    assert len(tracks) == 30
    assert {row["track_id"] for row in tracks} == {1}
    people = pq.read_table(io.BytesIO(client.get(job["links"]["people_parquet"]).content))
    assert people["track_id"].to_pylist() == [1]
    assert people["gender"].to_pylist() == ["F"]
    video = client.get(job["links"]["video"])
    assert video.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(video.content)) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (480, 270)
        assert sum(1 for _ in container.decode(video=0)) == 30
    report = client.get(f"/v1/jobs/{queued['id']}/report")
    assert report.status_code == 200
    assert "People by age band" in report.text
    assert client.delete(f"/v1/jobs/{queued['id']}").status_code == 204
    assert client.get(job["links"]["video"]).status_code == 404


def test_a_raw_video_body_is_a_job_too(make_client: ClientFactory, clip: Path) -> None:
    client = make_client()
    response = client.post(
        "/v1/jobs?filename=clip.mp4&detect_every=3",
        content=clip.read_bytes(),
        headers={"content-type": "video/mp4"},
    )
    assert response.status_code == 202, response.text
    assert wait_done(client, response.json()["id"])["status"] == "done"


def test_a_truncated_video_keeps_its_frames_and_says_why(
    make_client: ClientFactory, clip: Path, tmp_path: Path
) -> None:
    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    whole = encode(tmp_path / "whole.mkv", frames, 15)
    damaged = truncated_copy(whole, tmp_path / "cut.mkv", keep=0.5).read_bytes()
    client = make_client()
    response = client.post("/v1/jobs", files={"file": ("cut.mkv", damaged, "video/x-matroska")})
    assert response.status_code == 202, response.text
    job = wait_done(client, response.json()["id"])
    assert job["status"] == "done"
    assert "truncated" in job["message"]
    assert 0 < job["images_done"] < 30


@pytest.mark.parametrize(
    ("upload", "status"),
    [(("empty.mp4", b"", "video/mp4"), 400), (("text.mp4", b"not a video" * 50, "video/mp4"), 400)],
)
def test_uploads_that_are_not_videos_are_refused_at_once(
    make_client: ClientFactory, upload: tuple[str, bytes, str], status: int
) -> None:
    response = make_client().post("/v1/jobs", files={"file": upload})
    assert response.status_code == status, response.text
    assert "not a video" in response.json()["error"]["message"]


def test_video_options_are_checked(make_client: ClientFactory, clip: Path) -> None:
    response = make_client().post(
        "/v1/jobs",
        files={"file": ("a.mp4", clip.read_bytes(), "video/mp4")},
        data={"detect_every": "0"},
    )
    assert response.status_code == 400, response.text
