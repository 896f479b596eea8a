"""The training system's client flows against a live `agelens serve --estimator PATH` (a
trained model's folder, as `analyze` takes it): analyse, then the jobs API through
`agelens.client` (submit_job, job, job_results, wait), sync and async."""

from __future__ import annotations

import asyncio
import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from agelens.client import AsyncClient, Client, Job, JobTimeoutError, NotFoundError
from tests.conftest import REPO_ROOT, agelens_serve

TRAINED = REPO_ROOT / "src" / "agelens" / "trained" / "faceapi112-distilled"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained model folder outside the package, as `agelens finetune` leaves one."""
    folder = tmp_path_factory.mktemp("models") / "my-finetuned"
    shutil.copytree(TRAINED, folder)
    return folder


@pytest.fixture(scope="module")
def server(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "AGELENS_THREADS": "2",
        "AGELENS_DATA_DIR": str(tmp_path_factory.mktemp("agelens-data")),
        "AGELENS_JOBS_POLL_SECONDS": "0.1",
        "AGELENS_RATE_LIMIT_PER_MINUTE": "0",
    }
    with agelens_serve(["--estimator", str(model_folder)], env) as url:
        yield url


@pytest.fixture(scope="module")
def astronaut_jpeg_file(
    astronaut: NDArray[np.uint8], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    Image.fromarray(astronaut).save(path, quality=92)
    return path


def test_serve_takes_a_trained_model_folder_like_analyze(
    server: str, model_folder: Path, astronaut_jpeg_file: Path
) -> None:
    from agelens.pipeline import Analyzer

    with Client(server, retries=0) as client:
        assert client.models()["default_estimator"] == str(model_folder)
        result = client.analyze(astronaut_jpeg_file)
    (face,) = result.faces
    # the same model as `agelens analyze --estimator FOLDER` runs, with the same answer
    (expected,) = (
        Analyzer(estimator=str(model_folder), threads=1).analyze(astronaut_jpeg_file).faces
    )
    assert result.models["estimator"].startswith("faceapi112-distilled")
    assert face.age_years == pytest.approx(expected.age_years, abs=0.06)  # JSON rounds
    assert face.gender == expected.gender
    # requests may name the operator's folder, never another path on the server
    with Client(server, retries=0) as client, pytest.raises(Exception, match="unknown estimator"):
        client.analyze(astronaut_jpeg_file, estimator=str(model_folder.parent))


def test_a_job_of_local_files_submitted_waited_for_and_read(
    server: str, model_folder: Path, astronaut_jpeg_file: Path, blank_file: Path
) -> None:
    with Client(server, retries=0) as client:
        job = client.submit_job([astronaut_jpeg_file, blank_file, b"not an image"])
        assert isinstance(job, Job)
        assert job.status in {"queued", "running", "done"}
        assert job.images_total == 3
        done = client.wait(job.id, timeout=120, poll_seconds=0.2)
        assert done.status == "done"
        assert done.ended
        assert (done.images_done, done.faces, done.errors, done.images_without_faces) == (
            3,
            1,
            1,
            1,
        )
        assert done.estimator == str(model_folder)
        assert client.job(job.id) == done
        rows = client.job_results(job.id)
    assert len(rows) == 3
    (face,) = [row for row in rows if row["age_years"] is not None]
    assert face["path"] == "astronaut.jpg"
    assert face["status"] == "face"
    assert 10 <= face["age_years"] <= 70
    assert face["gender"] in {"F", "M"}


def test_a_zip_file_job_and_the_async_client(
    server: str, astronaut_jpeg_file: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(astronaut_jpeg_file, "one.jpg")
        zipped.write(astronaut_jpeg_file, "two.jpg")

    async def flow() -> tuple[Job, list[dict[str, object]]]:
        async with AsyncClient(server, retries=0) as client:
            job = await client.submit_job(archive)
            done = await client.wait(job.id, timeout=120, poll_seconds=0.2)
            return done, await client.job_results(job.id)

    done, rows = asyncio.run(flow())
    assert done.status == "done"
    assert done.faces == 2
    assert len(rows) == 2


def test_wait_gives_up_after_its_timeout_and_unknown_jobs_are_not_found(
    server: str, astronaut_jpeg_file: Path
) -> None:
    with Client(server, retries=0) as client:
        job = client.submit_job([astronaut_jpeg_file] * 12)
        with pytest.raises(JobTimeoutError, match=job.id):
            client.wait(job.id, timeout=0.05, poll_seconds=0.1)
        client.wait(job.id, timeout=120, poll_seconds=0.2)
        with pytest.raises(NotFoundError):
            client.job("0" * 32)


def test_submit_job_refuses_what_it_cannot_send(server: str, astronaut_jpeg_file: Path) -> None:
    with Client(server, retries=0) as client:
        with pytest.raises(ValueError, match="not both"):
            client.submit_job(["https://example.com/a.jpg", astronaut_jpeg_file])
        with pytest.raises(ValueError, match="at least one"):
            client.submit_job([])
        with pytest.raises(ValueError, match="several images"):
            client.submit_job(astronaut_jpeg_file)


@pytest.fixture
def blank_file(tmp_path: Path) -> Path:
    path = tmp_path / "blank.jpg"
    buffer = io.BytesIO()
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return path
