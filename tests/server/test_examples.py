"""Example photos from a folder or from `s3://bucket/prefix`, the latter against a local
S3-compatible server (moto's) that the tests start: the web page's routes list and serve them,
and the service analyses what they serve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agelens.server.examples import FolderExamples, S3Examples, is_example_name, open_examples
from tests.server.conftest import ClientFactory

BUCKET = "agelens-examples"


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("photo.jpg", True),
        ("Photo.JPEG", True),
        ("scan.png", True),
        ("", False),
        ("notes.txt", False),
        ("../secret.jpg", False),
        ("nested/photo.jpg", False),
        ("back\\slash.jpg", False),
        (".hidden.jpg", False),
    ],
)
def test_example_names_are_bare_photo_file_names(name: str, allowed: bool) -> None:
    assert is_example_name(name) is allowed


def test_open_examples_reads_the_setting(tmp_path: Path) -> None:
    assert open_examples(None) is None
    assert open_examples("") is None
    assert open_examples(str(tmp_path)) == FolderExamples(tmp_path)
    s3 = open_examples("s3://bucket/some/prefix")
    assert isinstance(s3, S3Examples)
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    whole_bucket = open_examples("s3://bucket")
    assert isinstance(whole_bucket, S3Examples)
    assert whole_bucket.prefix == ""
    with pytest.raises(ValueError, match="no bucket"):
        open_examples("s3:///prefix")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3-compatible server on loopback, with made-up credentials in the environment
    (boto3 reads AWS_ENDPOINT_URL as every AWS tool does)."""
    moto_server = pytest.importorskip("moto.server", reason="moto is not installed (dev extra)")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    patch = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        patch.setenv(name, value)
    patch.delenv("AWS_PROFILE", raising=False)
    try:
        yield f"http://{host}:{port}"
    finally:
        patch.undo()
        server.stop()


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, astronaut_jpeg: bytes) -> str:
    """A bucket with two photos under `photos/`, and things that are not examples."""
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="photos/astronaut.jpg", Body=astronaut_jpeg)
    s3.put_object(Bucket=BUCKET, Key="photos/second.jpeg", Body=astronaut_jpeg)
    s3.put_object(Bucket=BUCKET, Key="photos/readme.txt", Body=b"not a photo")
    s3.put_object(Bucket=BUCKET, Key="photos/nested/deeper.jpg", Body=astronaut_jpeg)
    s3.put_object(Bucket=BUCKET, Key="elsewhere.jpg", Body=astronaut_jpeg)
    return BUCKET


def test_examples_from_an_s3_prefix_are_listed_served_and_analysed(
    make_client: ClientFactory, bucket: str, astronaut_jpeg: bytes
) -> None:
    client = make_client(examples_dir=f"s3://{bucket}/photos")
    listed = client.get("/v1/examples").json()
    assert listed == {"examples": ["astronaut.jpg", "second.jpeg"], "reason": None}
    photo = client.get("/v1/examples/astronaut.jpg")
    assert photo.status_code == 200
    assert photo.headers["content-type"] == "image/jpeg"
    assert photo.content == astronaut_jpeg
    faces = client.post(
        "/v1/analyze", content=photo.content, headers={"Content-Type": "image/jpeg"}
    ).json()["faces"]
    assert len(faces) == 1
    for missing in ("nothing.jpg", "readme.txt", "..%2Felsewhere.jpg", "deeper.jpg"):
        response = client.get(f"/v1/examples/{missing}")
        assert response.status_code == 404, missing
        assert response.json()["error"]["code"] == "not_found"


def test_an_empty_prefix_and_a_missing_bucket_say_so(
    make_client: ClientFactory, bucket: str
) -> None:
    empty = make_client(examples_dir=f"s3://{bucket}/no-such-prefix/").get("/v1/examples")
    assert empty.json()["examples"] == []
    assert "s3://agelens-examples/no-such-prefix/ holds no photo" in empty.json()["reason"]
    client = make_client(examples_dir="s3://no-such-bucket/photos")
    unavailable = client.get("/v1/examples")
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "examples_unavailable"
    assert client.get("/v1/examples/astronaut.jpg").status_code == 503


def test_examples_from_a_folder(
    make_client: ClientFactory, tmp_path: Path, astronaut_jpeg: bytes
) -> None:
    folder = tmp_path / "examples"
    folder.mkdir()
    (folder / "astronaut.jpg").write_bytes(astronaut_jpeg)
    (folder / "notes.txt").write_text("not a photo")
    client: Any = make_client(examples_dir=folder)
    assert client.get("/v1/examples").json()["examples"] == ["astronaut.jpg"]
    assert client.get("/v1/examples/astronaut.jpg").content == astronaut_jpeg
    assert client.get("/v1/examples/notes.txt").status_code == 404
