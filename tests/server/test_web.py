"""The web page at `/` in a real browser: headless Chromium (Playwright) against a real uvicorn
server with the real models.

The page is driven like a person would: a photo through the file input, the keyboard, paste,
drop, the examples gallery and a (fake) webcam. Screenshots land in artifacts/screenshots/.
Without ../shared/data/samples (a fresh clone) the photos are skimage's astronaut, so these
tests always run; they skip only when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from agelens.server.app import create_app
from agelens.server.engine import ModelPool
from agelens.server.examples import EXAMPLE_SUFFIXES
from agelens.server.settings import Settings
from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.server.conftest import jpeg_bytes, uvicorn_in_thread

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A synthetic camera (a test pattern, no face) that needs no permission prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
MAX_BODY_BYTES = 1024 * 1024  # small, so a server-side 413 is cheap to provoke
TIMEOUT_MS = 20_000
FEMALE_RGB = (0xC2, 0x25, 0x5C)  # COLORS.F in app.js
LABEL = re.compile(r"^[FM] \d+ \(\d+–\d+\)$")

if not CHROMIUM.is_file():  # pragma: no cover - CI installs it
    pytest.skip(
        f"{CHROMIUM} is absent: install Debian's chromium package to run the browser tests",
        allow_module_level=True,
    )

from playwright.sync_api import (  # noqa: E402  (after the skip: only needed with chromium)
    Browser,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

expect.set_options(timeout=TIMEOUT_MS)


# ------------------------------------------------------------------ the photos


class Photos:
    """What the page is fed: the examples folder and a photo whose faces are all women."""

    def __init__(self, examples: Path, women: Path, count: int) -> None:
        self.examples = examples
        self.women = women  # every face in it is F
        self.count = count  # how many faces it holds

    def example_names(self) -> list[str]:
        return sorted(
            p.name
            for p in self.examples.iterdir()
            if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES
        )


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut: NDArray[np.uint8]) -> Photos:
    """../shared/data/samples with sample1.jpg (3 women), else a folder with the astronaut."""
    samples = SHARED_DATA / "samples"
    if (samples / "sample1.jpg").is_file():
        return Photos(samples, samples / "sample1.jpg", 3)
    folder = tmp_path_factory.mktemp("examples")
    (folder / "astronaut.jpg").write_bytes(jpeg_bytes(astronaut))
    return Photos(folder, folder / "astronaut.jpg", 1)


# ------------------------------------------------------------------ a real server


@contextmanager
def serve(settings: Settings, pool: ModelPool) -> Iterator[str]:
    """Run the app under uvicorn on a free loopback port in a thread; yield its base URL."""
    with uvicorn_in_thread(create_app(settings, pool=pool)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def base_url(photos: Photos, model_pool: ModelPool) -> Iterator[str]:
    settings = Settings(examples_dir=photos.examples, max_body_bytes=MAX_BODY_BYTES)
    with serve(settings, model_pool) as url:
        yield url


# ------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


class PageProblems:
    """Uncaught exceptions and CSP violations seen by a page: there must be none."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.problems.append(f"console: {message.text}")


@contextmanager
def open_page(
    browser: Browser,
    url: str,
    *,
    width: int = 1280,
    height: int = 900,
    init_script: str | None = None,
) -> Iterator[Page]:
    """A fresh context and page at `url`, ready (examples and camera checked)."""
    context = browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True
    )
    try:
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        problems = PageProblems(page)
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='true']", state="attached")
        yield page
        assert problems.problems == []
    finally:
        context.close()


def upload(page: Page, path: Path) -> None:
    page.set_input_files("#file-input", str(path))


def wait_for_faces(page: Page, count: int) -> None:
    expect(page.locator("#faces tbody tr")).to_have_count(count)
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def canvas_pixel(page: Page, x: float, y: float) -> tuple[int, int, int]:
    """The canvas pixel at image coordinates (x, y) of the analysed photo."""
    rgb = page.evaluate(
        """([x, y]) => {
            const canvas = document.getElementById("canvas");
            const [w, h] = window.__result_wh;
            const px = Math.round(x * canvas.width / w), py = Math.round(y * canvas.height / h);
            return Array.from(canvas.getContext("2d").getImageData(px, py, 1, 1).data.slice(0, 3));
        }""",
        [x, y],
    )
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def png_bytes(image: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------ the tests


def test_upload_draws_labelled_boxes_lists_faces_and_downloads_json(
    browser: Browser, base_url: str, photos: Photos
) -> None:
    with open_page(browser, base_url) as page:
        upload(page, photos.women)
        wait_for_faces(page, photos.count)
        expect(page.locator("#status")).to_contain_text(f"found in {photos.women.name}")
        expect(page.locator("#no-face")).to_be_hidden()

        # the table: one row per face, every gender F, every column filled
        rows = page.locator("#faces tbody tr")
        headers = page.locator("#faces thead th").all_inner_texts()
        assert [h.split(" (")[0] for h in headers] == [
            "#",
            "Gender",
            "Probability",
            "Age",
            "Interval",
            "Detection score",
            "Box",
        ]
        for index in range(photos.count):
            cells = rows.nth(index).locator("th, td").all_inner_texts()
            assert cells[0] == str(index + 1)
            assert cells[1].strip() == "F"
            assert re.fullmatch(r"\d+%", cells[2])
            assert re.fullmatch(r"\d+\.\d", cells[3])
            assert re.fullmatch(r"\d+–\d+", cells[4])
            assert re.fullmatch(r"0\.\d\d|1\.00", cells[5])
            assert re.fullmatch(r"\d+, \d+, \d+, \d+", cells[6])

        # the labels drawn on the canvas are also its accessible description
        labels = [rows.nth(i).get_attribute("data-label") for i in range(photos.count)]
        assert all(label and LABEL.match(label) and label.startswith("F ") for label in labels)
        aria = page.get_attribute("#canvas", "aria-label") or ""
        assert all(str(label) in aria for label in labels)

        # the JSON the page offers is the server's answer
        with page.expect_download() as download_info:
            page.click("#download")
        download = download_info.value
        assert download.suggested_filename == f"{photos.women.stem}.agelens.json"
        result = json.loads(Path(download.path()).read_text(encoding="utf-8"))
        assert len(result["faces"]) == photos.count
        assert {face["gender"] for face in result["faces"]} == {"F"}
        assert "image_jpeg_base64" not in result

        # boxes are drawn in the female colour: sample the left edge of each box
        page.evaluate("wh => { window.__result_wh = wh; }", result["image_wh"])
        for face, label in zip(result["faces"], labels, strict=True):
            x1, y1, _x2, y2 = face["box_xyxy"]
            low, high = face["age_interval"]
            # the same text as agelens.render.face_label (Python's rounding, halves to even)
            assert label == f"F {face['age_years']:.0f} ({low:.0f}–{high:.0f})"
            r, g, b = canvas_pixel(page, x1, (y1 + y2) / 2)
            assert abs(r - FEMALE_RGB[0]) + abs(g - FEMALE_RGB[1]) + abs(b - FEMALE_RGB[2]) < 60, (
                r,
                g,
                b,
            )

        # a row focused from the keyboard highlights its face
        rows.first.focus()
        expect(rows.first).to_have_class(re.compile(r"\bactive\b"))
        rows.first.blur()
        screenshot(page, "desktop-result.png")


def test_phone_width_has_no_horizontal_scroll(
    browser: Browser, base_url: str, photos: Photos
) -> None:
    with open_page(browser, base_url, width=375, height=740) as page:
        upload(page, photos.women)
        wait_for_faces(page, photos.count)
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth,"
            " document.body.scrollWidth]"
        )
        assert widths[0] <= widths[1], widths
        assert widths[2] <= widths[1], widths
        canvas_box = page.locator("#canvas").bounding_box()
        assert canvas_box is not None
        assert canvas_box["width"] <= 375
        screenshot(page, "phone-result.png")


def test_not_an_image_is_refused_with_a_message(
    browser: Browser, base_url: str, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n", encoding="utf-8")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 20)
    with open_page(browser, base_url) as page:
        upload(page, text)  # refused by the page itself
        expect(page.locator("#error")).to_be_visible()
        expect(page.locator("#error-title")).to_have_text("This file is not an image.")
        expect(page.locator("#error-detail")).to_contain_text("notes.txt")

        upload(page, broken)  # looks like a JPEG to the page, refused by the server (422)
        expect(page.locator("#error-title")).to_have_text("This file is not an image we can read.")
        expect(page.locator("#error-detail")).to_contain_text("broken.jpg")
        expect(page.locator("#result")).to_be_hidden()
        screenshot(page, "desktop-not-an-image.png")


def test_no_face_is_an_empty_state_not_an_error(
    browser: Browser, base_url: str, tmp_path: Path, blank_jpeg: bytes
) -> None:
    blank = tmp_path / "wall.jpg"
    blank.write_bytes(blank_jpeg)
    with open_page(browser, base_url) as page:
        # through the keyboard: the drop zone opens the file chooser on Enter
        with page.expect_file_chooser() as chooser:
            page.focus("#dropzone")
            page.keyboard.press("Enter")
        chooser.value.set_files(str(blank))
        expect(page.locator("#no-face")).to_be_visible()
        expect(page.locator("#no-face")).to_contain_text("No face found")
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#faces-wrap")).to_be_hidden()
        expect(page.locator("#status")).to_contain_text("No face found in wall.jpg")
        screenshot(page, "desktop-no-face.png")


def test_too_large_photos_are_refused_by_the_page_and_by_the_server(
    browser: Browser, base_url: str, photos: Photos, tmp_path: Path
) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (720, 720, 3), dtype=np.uint8)
    big = tmp_path / "noise.png"
    big.write_bytes(png_bytes(noise))
    assert big.stat().st_size > MAX_BODY_BYTES
    with open_page(browser, base_url) as page:
        analyze_calls: list[str] = []

        def count(request: Any) -> None:
            if "/v1/analyze" in request.url:
                analyze_calls.append(request.url)

        page.on("request", count)

        # over the server's limit, under the page's (20 MB): the server's 413 is explained
        upload(page, big)
        expect(page.locator("#error-title")).to_have_text("This photo is too large for the server.")
        assert len(analyze_calls) == 1

        # over the page's own limit: refused before any upload
        page.evaluate("document.body.dataset.maxUploadBytes = '50000'")
        upload(page, photos.women)
        expect(page.locator("#error-title")).to_have_text("This photo is too large.")
        expect(page.locator("#error-detail")).to_contain_text("the limit is 49 KB")
        assert len(analyze_calls) == 1


def test_examples_gallery_lists_the_folder_and_analyses_a_click(
    browser: Browser, base_url: str, photos: Photos
) -> None:
    with open_page(browser, base_url) as page:
        buttons = page.locator("#examples button")
        names = photos.example_names()
        expect(buttons).to_have_count(len(names))
        assert [buttons.nth(i).get_attribute("data-name") for i in range(len(names))] == names
        expect(page.locator("#examples-empty")).to_be_hidden()
        thumb = page.locator(f"#examples button[data-name='{photos.women.name}'] img")
        assert thumb.get_attribute("alt") == f"Example photo {photos.women.name}"
        expect(thumb).to_have_js_property("complete", True)
        assert thumb.evaluate("img => img.naturalWidth") > 0

        page.click(f"#examples button[data-name='{photos.women.name}']")
        wait_for_faces(page, photos.count)
        expect(page.locator("#caption")).to_contain_text(photos.women.name)


def test_paste_and_drop_analyse_the_photo(browser: Browser, base_url: str, photos: Photos) -> None:
    send = """async ([kind, url, name]) => {
        const blob = await (await fetch(url)).blob();
        const data = new DataTransfer();
        data.items.add(new File([blob], name, { type: blob.type || "image/jpeg" }));
        if (kind === "paste") {
            const event = new ClipboardEvent("paste", { clipboardData: data, bubbles: true });
            document.dispatchEvent(event);
        } else {
            const zone = document.getElementById("dropzone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                const init = { dataTransfer: data, bubbles: true, cancelable: true };
                zone.dispatchEvent(new DragEvent(type, init));
            }
        }
    }"""
    url = f"/v1/examples/{photos.women.name}"
    with open_page(browser, base_url) as page:
        page.evaluate(send, ["paste", url, "pasted.jpg"])
        wait_for_faces(page, photos.count)
        expect(page.locator("#caption")).to_contain_text("pasted.jpg")
        page.evaluate(send, ["drop", url, "dropped.jpg"])
        expect(page.locator("#caption")).to_contain_text("dropped.jpg")
        wait_for_faces(page, photos.count)
        expect(page.locator("#dropzone")).not_to_have_class(re.compile(r"\bdragover\b"))


def test_webcam_snapshot_is_analysed(browser: Browser, base_url: str) -> None:
    with open_page(browser, base_url) as page:
        expect(page.locator("#camera-start")).to_be_enabled()
        expect(page.locator("#camera-note")).to_be_hidden()
        page.click("#camera-start")
        expect(page.locator("#camera")).to_be_visible()
        page.wait_for_function("() => document.getElementById('camera-video').videoWidth > 0")
        page.click("#camera-snap")
        # Chromium's fake camera films a test pattern: an analysed photo without a face
        expect(page.locator("#no-face")).to_be_visible()
        expect(page.locator("#caption")).to_contain_text("snapshot-")
        page.click("#camera-stop")
        expect(page.locator("#camera")).to_be_hidden()


def test_webcam_is_disabled_with_a_reason_without_camera_access(
    browser: Browser, base_url: str
) -> None:
    no_media = "Object.defineProperty(navigator, 'mediaDevices', { value: undefined });"
    with open_page(browser, base_url, init_script=no_media) as page:
        expect(page.locator("#camera-start")).to_be_disabled()
        expect(page.locator("#camera-note")).to_be_visible()
        expect(page.locator("#camera-note")).to_contain_text("camera")


def test_keys_and_no_examples(browser: Browser, model_pool: ModelPool, photos: Photos) -> None:
    """A server with API keys and no examples folder: the empty gallery says why, a 401 asks
    for the key, which is then kept in localStorage and sent as X-API-Key."""
    settings = Settings(api_keys=["s3cret-key"], examples_dir=None)
    with serve(settings, model_pool) as url, open_page(browser, url) as page:
        expect(page.locator("#examples-empty")).to_be_visible()
        expect(page.locator("#examples-empty")).to_contain_text("AGELENS_EXAMPLES_DIR")
        expect(page.locator("#examples button")).to_have_count(0)
        expect(page.locator("#key-form")).to_be_hidden()

        upload(page, photos.women)
        expect(page.locator("#error-title")).to_have_text("This server needs an API key.")
        expect(page.locator("#key-form")).to_be_visible()
        expect(page.locator("#api-key")).to_be_focused()

        page.fill("#api-key", "s3cret-key")
        with page.expect_request("**/v1/analyze") as sent:
            page.click("#key-form button[type=submit]")
        assert sent.value.headers.get("x-api-key") == "s3cret-key"
        wait_for_faces(page, photos.count)
        assert page.evaluate("localStorage.getItem('agelens.apiKey')") == "s3cret-key"


# ------------------------------------------------------------------ the jobs panel


@pytest.fixture(scope="module")
def jobs_base_url(
    photos: Photos, model_pool: ModelPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A server whose jobs may fetch from loopback: its own example photos are the URLs."""
    settings = Settings(
        examples_dir=photos.examples,
        data_dir=tmp_path_factory.mktemp("agelens-data"),
        url_allow_networks=["127.0.0.1/32"],
    )
    with serve(settings, model_pool) as url:
        yield url


def test_jobs_panel_runs_url_and_zip_jobs_and_opens_the_report(
    browser: Browser, jobs_base_url: str, photos: Photos, tmp_path: Path
) -> None:
    names = photos.example_names()
    urls = [f"{jobs_base_url}/v1/examples/{name}" for name in names]
    with open_page(browser, jobs_base_url) as page:
        page.fill("#job-urls", "\n".join([*urls, f"{jobs_base_url}/v1/examples/absent.jpg"]))
        page.click("#job-form button[type=submit]")
        job = page.locator("#jobs li").first
        total = len(urls) + 1
        expect(job.locator(".job-status")).to_contain_text(f"done: {total} of {total} images")
        expect(job.locator(".job-status")).to_contain_text("1 error")
        expect(job.locator(".job-links")).to_be_visible()
        with page.context.expect_page() as opened:
            job.get_by_role("link", name="Report").click()
        report = opened.value
        expect(report.locator("h1")).to_contain_text("agelens job")
        expect(report.locator("#errors")).to_contain_text("absent.jpg")
        assert report.locator("svg").count() == 6
        report.close()

        archive = tmp_path / "photos.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.write(photos.women, "group/women.jpg")
            bundle.writestr("readme.txt", "not a photo")
        page.set_input_files("#job-zip", str(archive))
        page.click("#job-form button[type=submit]")
        zipped = page.locator("#jobs li").first
        expect(zipped).to_contain_text("zip · 2 images")
        expect(zipped.locator(".job-status")).to_contain_text(
            f"done: 2 of 2 images · {photos.count} face"
        )
        screenshot(page, "jobs-panel.png")


# ------------------------------------------------------------------ where messages show


def _assert_in_viewport(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    viewport = page.viewport_size
    assert box is not None
    assert viewport is not None
    assert box["y"] >= 0, (selector, box)
    assert box["y"] + box["height"] <= viewport["height"], (selector, box, viewport)
    return box


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
def test_a_bad_upload_on_a_fresh_page_shows_its_error_next_to_the_upload(
    browser: Browser, base_url: str, tmp_path: Path, width: int, height: int
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n", encoding="utf-8")
    with open_page(browser, base_url, width=width, height=height) as page:
        upload(page, text)
        expect(page.locator("#error")).to_be_visible()
        error = _assert_in_viewport(page, "#error")
        dropzone = page.locator("#dropzone").bounding_box()
        jobs = page.locator("#jobs-title").bounding_box()
        assert dropzone is not None
        assert jobs is not None
        assert dropzone["y"] < error["y"] < jobs["y"]  # under the upload, above the Jobs panel
        screenshot(page, f"error-next-to-upload-{width}.png")


def test_analysing_message_shows_next_to_the_upload(
    browser: Browser, base_url: str, photos: Photos
) -> None:
    # The request is held until the message has been seen, so "Analysing…" cannot be missed.
    with open_page(browser, base_url, width=390, height=844) as page:
        release: list[Any] = []
        page.route("**/v1/analyze", lambda route: release.append(route))
        upload(page, photos.women)
        expect(page.locator("#status")).to_have_text(f"Analysing {photos.women.name}…")
        _assert_in_viewport(page, "#status")
        assert len(release) == 1
        release[0].continue_()
        wait_for_faces(page, photos.count)


# ------------------------------------------------------------------ labels at phone width


@pytest.fixture(scope="module")
def group_photo(tmp_path_factory: pytest.TempPathFactory, astronaut: NDArray[np.uint8]) -> Path:
    """sample5 (a group photo) when the shared samples are there, else eight astronauts side
    by side in two rows: faces close together, as in a group photo. Each is her head and
    shoulders (rows 16-228, columns 120-332 of the portrait), so the face fills about half of
    its 200-px cell, large enough for the detector in an 800x400 photo."""
    sample = SHARED_DATA / "samples" / "sample5.jpg"
    if sample.is_file():
        return sample
    face = Image.fromarray(np.ascontiguousarray(astronaut[16:228, 120:332])).resize((200, 200))
    group = Image.new("RGB", (800, 400), (240, 240, 240))
    for index in range(8):
        group.paste(face, ((index % 4) * 200, (index // 4) * 200))
    path = tmp_path_factory.mktemp("group") / "group.jpg"
    group.save(path, quality=92)
    return path


def test_labels_do_not_overlap_at_phone_width(
    browser: Browser, base_url: str, group_photo: Path
) -> None:
    with open_page(browser, base_url, width=390, height=844) as page:
        upload(page, group_photo)
        expect(page.locator("#result")).to_be_visible()
        count = page.locator("#faces tbody tr").count()
        assert count >= 4
        labels = json.loads(page.get_attribute("#canvas", "data-label-boxes") or "[]")
        width, height = page.evaluate("[canvas.width, canvas.height]")
        assert len(labels) == count
        for index, (x, y, w, h) in enumerate(labels):
            assert x >= 0, (index, labels[index])
            assert y >= 0, (index, labels[index])
            assert x + w <= width + 0.5, (index, labels[index])
            assert y + h <= height + 0.5, (index, labels[index])
            for other in labels[index + 1 :]:
                ox, oy, ow, oh = other
                assert not (x < ox + ow and ox < x + w and y < oy + oh and oy < y + h), (
                    labels[index],
                    other,
                )
        screenshot(page, "phone-group-labels.png")


# ------------------------------------------------------------------ the jobs panel's input


def test_jobs_url_box_takes_one_url_per_line_and_shows_the_full_job_id(
    browser: Browser, jobs_base_url: str, photos: Photos
) -> None:
    name = photos.example_names()[0]
    lines = [f"{jobs_base_url}/v1/examples/{name}", f"{jobs_base_url}/v1/examples/my photo.jpg"]
    with open_page(browser, jobs_base_url, width=390, height=844) as page:
        page.fill("#job-urls", "\n".join([lines[0], "", f"  {lines[1]}  "]))
        with page.expect_request("**/v1/jobs") as submitted:
            page.click("#job-form button[type=submit]")
        sent = submitted.value.post_data_json
        assert sent["urls"] == [lines[0], lines[1].replace(" ", "%20")]
        job = page.locator("#jobs li").first
        expect(job.locator(".job-status")).to_contain_text("done: 2 of 2 images")
        shown = (job.locator(".job-id").text_content() or "").strip()
        assert shown == job.get_attribute("data-job-id")
        answer = page.request.get(f"{jobs_base_url}/v1/jobs/{shown}")
        assert answer.status == 200
        assert answer.json()["id"] == shown
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths
