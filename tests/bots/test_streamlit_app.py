"""The Streamlit app through Streamlit's own testing API (AppTest runs the real script): upload
and camera input, real models in process or a live agelens service, the image, the table and
the JSON; and `agelens streamlit` serving it."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

pytest.importorskip("streamlit", reason="streamlit is not installed (agelens[streamlit])")

from streamlit.testing.v1 import AppTest

from tests.conftest import REPO_ROOT, agelens_serve

SCRIPT = REPO_ROOT / "src" / "agelens" / "bots" / "streamlit_app.py"
TIMEOUT_S = 120


def _jpeg(image: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.delenv("AGELENS_SERVICE_URL", raising=False)
    monkeypatch.delenv("AGELENS_STREAMLIT_PRESET", raising=False)
    test = AppTest.from_file(str(SCRIPT), default_timeout=TIMEOUT_S)
    test.run()
    assert not test.exception
    return test


def _result(test: AppTest) -> dict[str, object]:
    assert not test.exception, test.exception
    assert not test.error, [e.value for e in test.error]
    text = test.session_state["result_json"]
    result: dict[str, object] = json.loads(text)
    return result


def test_the_page_asks_for_a_photo_and_analyses_in_process(app: AppTest) -> None:
    assert app.title[0].value == "agelens"
    assert app.sidebar.radio[0].value == "In this process"
    assert len(app.file_uploader) == 1
    assert len(app.image) == 0  # nothing until a photo comes


def test_an_upload_gives_the_image_the_table_and_the_json(
    app: AppTest, astronaut: NDArray[np.uint8]
) -> None:
    app.file_uploader[0].set_value(("astronaut.jpg", _jpeg(astronaut), "image/jpeg")).run()
    result = _result(app)
    assert result["source"] == "astronaut.jpg"
    assert result["image_wh"] == [512, 512]
    faces = result["faces"]
    assert isinstance(faces, list)
    (face,) = faces
    assert face["gender"] == "F"
    assert 30 <= face["age_years"] <= 52
    assert app.image[0].captions == ["astronaut.jpg: 1 face"]
    table = app.dataframe[0].value
    assert list(table["gender"]) == ["F"]
    assert table["age"][0] == pytest.approx(face["age_years"], abs=0.06)
    assert app.get("download_button")[0].label == "Download JSON"
    assert app.json[0].value  # the same JSON, shown


def test_the_camera_and_a_photo_without_a_face(app: AppTest) -> None:
    app.radio(key="source").set_value("Camera").run()
    blank = _jpeg(np.full((480, 640, 3), 128, np.uint8))
    app.camera_input[0].set_value(("camera.jpg", blank, "image/jpeg")).run()
    result = _result(app)
    assert result["faces"] == []
    assert "No face found" in app.warning[0].value
    assert len(app.dataframe) == 0


def test_a_file_that_is_not_an_image_gets_an_error_not_a_crash(app: AppTest) -> None:
    app.file_uploader[0].set_value(("broken.jpg", b"\xff\xd8\xff broken", "image/jpeg")).run()
    assert not app.exception
    assert "broken.jpg could not be analysed" in app.error[0].value


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "AGELENS_THREADS": "2",
        "AGELENS_DATA_DIR": str(tmp_path_factory.mktemp("agelens-data")),
    }
    with agelens_serve([], env) as url:
        yield url


def test_analysing_on_a_running_service(
    monkeypatch: pytest.MonkeyPatch, service_url: str, samples_dir: Path
) -> None:
    monkeypatch.setenv("AGELENS_SERVICE_URL", service_url)
    test = AppTest.from_file(str(SCRIPT), default_timeout=TIMEOUT_S)
    test.run()
    assert test.sidebar.radio[0].value == "On an agelens service"
    assert test.sidebar.text_input[0].value == service_url
    photo = (samples_dir / "sample5.jpg").read_bytes()
    test.file_uploader[0].set_value(("sample5.jpg", photo, "image/jpeg")).run()
    result = _result(test)
    assert len(result["faces"]) == 5  # type: ignore[arg-type]
    assert len(test.dataframe[0].value) == 5
    # an unreachable service is a message, not a crash
    test.sidebar.text_input[0].set_value("http://127.0.0.1:9").run()
    assert not test.exception
    assert "could not be analysed" in test.error[0].value


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_command_serves_the_app(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "HOME": str(tmp_path)}  # streamlit's own settings folder
    process = subprocess.Popen(
        [sys.executable, "-m", "agelens", "streamlit", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "streamlit did not answer"
            time.sleep(0.2)
        assert health.text == "ok"
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
