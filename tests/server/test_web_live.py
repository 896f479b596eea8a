"""The web page's live mode in a real browser: headless Chromium whose fake camera films a
video built from a real photo (`--use-file-for-fake-video-capture` of a .y4m), streaming to a
real uvicorn server over `/v1/live`, with the real models."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from agelens.server.app import create_app
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():  # pragma: no cover - CI installs it
    pytest.skip(f"{CHROMIUM} is absent", allow_module_level=True)
av = pytest.importorskip("av", reason="the video extra is not installed")
pytest.importorskip("supervision", reason="the video extra is not installed")

from playwright.sync_api import Browser, expect, sync_playwright  # noqa: E402

from tests.server.conftest import uvicorn_in_thread  # noqa: E402
from tests.video.clips import astronaut_clip  # noqa: E402

TIMEOUT_MS = 30_000
FEMALE_RGB = (0xC2, 0x25, 0x5C)  # COLORS.F in app.js
PERSON = re.compile(r"^#1 F \d+ \(\d+–\d+\), in view \d+ s$")


def write_y4m(clip: Path, target: Path) -> Path:
    """The clip's frames as a YUV4MPEG2 file, the format Chromium's fake camera plays."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        width, height = stream.width, stream.height
        fps = int(stream.average_rate)
        planes = [
            frame.reformat(format="yuv420p").to_ndarray() for frame in container.decode(stream)
        ]
    with target.open("wb") as file:
        file.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for plane in planes:
            file.write(b"FRAME\n")
            file.write(np.ascontiguousarray(plane).tobytes())
    return target


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, astronaut: NDArray[np.uint8]) -> Path:
    """A zoom and pan over the astronaut photo, as an MP4."""
    return astronaut_clip(tmp_path_factory.mktemp("clip"), astronaut).path


@pytest.fixture(scope="module")
def fake_camera(clip: Path) -> Path:
    return write_y4m(clip, clip.with_name("camera.y4m"))


@contextmanager
def serve(settings: Settings, pool: ModelPool) -> Iterator[str]:
    """The app under uvicorn (with WebSockets) on a free loopback port; yield its base URL."""
    app = create_app(settings, pool=pool)
    with uvicorn_in_thread(app, name="uvicorn-live", ws="websockets-sansio") as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser(fake_camera: Path) -> Iterator[Browser]:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={fake_camera}",
            ],
        )
        yield browser
        browser.close()


def test_live_mode_tracks_the_camera_and_lists_the_person(
    browser: Browser, model_pool: ModelPool, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with serve(settings, model_pool) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='true']", state="attached")
            page.click("#camera-start")
            page.wait_for_function("() => document.getElementById('camera-video').videoWidth > 0")
            page.click("#live-start")
            page.wait_for_function(
                "() => Number(document.body.dataset.liveFrames || 0) >= 8", timeout=TIMEOUT_MS
            )
            people = page.locator("#live-people li")
            expect(people).to_have_count(1, timeout=TIMEOUT_MS)
            expect(people.first).to_have_text(PERSON, timeout=TIMEOUT_MS)
            expect(page.locator("#live-status")).to_contain_text("frames tracked")
            # The box and its label are drawn over the video in the women's colour.
            drawn = page.evaluate(
                """([r, g, b]) => {
                    const c = document.getElementById('live-overlay');
                    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0;
                    for (let i = 0; i < data.length; i += 4) {
                        if (data[i] === r && data[i + 1] === g && data[i + 2] === b) n++;
                    }
                    return n;
                }""",
                list(FEMALE_RGB),
            )
            assert drawn > 100
            page.click("#live-stop")
            expect(page.locator("#live-start")).to_be_visible()
            expect(page.locator("#live-status")).to_contain_text("Stopped after")
            assert errors == []
        finally:
            context.close()


def test_a_video_job_shows_its_annotated_clip_and_people(
    browser: Browser, model_pool: ModelPool, tmp_path: Path, clip: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with serve(settings, model_pool) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='true']", state="attached")
            page.set_input_files("#job-zip", str(clip))
            page.click("#job-form button[type=submit]")
            job = page.locator("#jobs li").first
            expect(job).to_contain_text("video · 30 frames")
            expect(job.locator(".job-status")).to_have_attribute(
                "data-status", "done", timeout=90_000
            )
            expect(job.locator(".job-status")).to_contain_text("1 person")
            expect(job.locator(".video-job video")).to_be_visible()
            rows = job.locator(".video-job tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first.locator("td").nth(1)).to_have_text("F")
            page.wait_for_function(
                "() => document.querySelector('.video-job video').readyState >= 1"
            )
            width = page.evaluate("() => document.querySelector('.video-job video').videoWidth")
            assert width == 480
            assert errors == []
        finally:
            context.close()
