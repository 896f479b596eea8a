"""The Telegram bot end to end: python-telegram-bot polls a fake Bot API server on loopback
(tests/bots/fake_telegram.py) that serves updates carrying real photos; the bot downloads them,
runs the real models (in process, or on a live agelens service through the client) and answers;
the server records the answers."""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

pytest.importorskip("telegram", reason="python-telegram-bot is not installed (agelens[telegram])")

from agelens.bots.analysis import ImageAnalysis, LibraryAnalysis, ServiceAnalysis
from agelens.bots.telegram import (
    HELP_TEXT,
    MAX_CAPTION_CHARS,
    NO_FACE_TEXT,
    NOT_AN_IMAGE_TEXT,
    AgeBot,
    ChatRateLimiter,
    TelegramConfigurationError,
    build_application,
    caption_for,
    token_from_environment,
)
from agelens.pipeline import Analyzer
from tests.bots.fake_telegram import FakeBotApi, FakeBotApiServer, Sent, decoded_fields
from tests.conftest import agelens_serve

TOKEN = "123456:TEST-token_for-the-fake-server"
ANN, BOB, CAROL = 1001, 1002, 1003


def _jpeg(image: NDArray[np.uint8], quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _png(image: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _sizes(image: NDArray[np.uint8]) -> list[tuple[bytes, int, int]]:
    """The sizes Telegram makes of a photo: a thumbnail, then the photo itself."""
    height, width = image.shape[:2]
    thumbnail = np.asarray(Image.fromarray(image).resize((width // 8, height // 8)))
    return [(_jpeg(thumbnail), width // 8, height // 8), (_jpeg(image), width, height)]


@pytest.fixture(scope="module")
def library() -> LibraryAnalysis:
    return LibraryAnalysis(Analyzer(threads=2))


@pytest.fixture
def fake_api() -> Iterator[FakeBotApi]:
    with FakeBotApiServer(TOKEN) as api:
        yield api


def run_bot(
    api: FakeBotApi,
    analysis: ImageAnalysis,
    until: Callable[[], bool],
    *,
    per_minute: int = 10,
    timeout: float = 120.0,
) -> None:
    """Poll the fake server with the real python-telegram-bot Application until `until()`."""
    bot = AgeBot(analysis, ChatRateLimiter(per_minute))
    application = build_application(
        TOKEN, bot, base_url=api.base_url, base_file_url=api.base_file_url
    )

    async def main() -> None:
        async with application:
            await application.start()
            assert application.updater is not None
            await application.updater.start_polling(poll_interval=0.0, timeout=1)
            deadline = time.monotonic() + timeout
            try:
                while not until():
                    assert time.monotonic() < deadline, f"no answer in time: {api.sent}"
                    await asyncio.sleep(0.05)
            finally:
                await application.updater.stop()
                await application.stop()
        await analysis.aclose()  # what run_polling's post_shutdown does

    asyncio.run(main())


def _texts(sent: list[Sent]) -> list[str]:
    return [s.fields.get("text", s.fields.get("caption", "")) for s in sent]


def _photo(sent: Sent) -> NDArray[np.uint8]:
    assert sent.method == "sendPhoto"
    return np.asarray(Image.open(io.BytesIO(sent.files["photo"])).convert("RGB"))


# ------------------------------------------------------------------ in-process analysis


def test_start_help_photo_image_file_and_everything_else(
    fake_api: FakeBotApi,
    library: LibraryAnalysis,
    astronaut: NDArray[np.uint8],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the bot writes nothing: not in its working folder, not in the temporary folder
    workdir, scratch = tmp_path / "cwd", tmp_path / "tmp"
    workdir.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    fake_api.queue_command(ANN, "/start")
    fake_api.queue_command(ANN, "/help")
    fake_api.queue_photo(ANN, _sizes(astronaut), caption="how old?")
    fake_api.queue_document(ANN, _png(astronaut), "astronaut.png", "image/png")
    fake_api.queue_photo(ANN, _sizes(np.full((480, 640, 3), 128, np.uint8)))
    fake_api.queue_document(ANN, b"%PDF-1.7 not an image", "paper.pdf", "application/pdf")
    fake_api.queue_document(ANN, b"\xff\xd8\xff broken", "broken.jpg", "image/jpeg")
    fake_api.queue_text(ANN, "hello?")
    run_bot(fake_api, library, lambda: len(fake_api.replies_to(ANN)) >= 8)

    replies = fake_api.replies_to(ANN)
    assert [r.method for r in replies] == [
        "sendMessage",
        "sendMessage",
        "sendPhoto",
        "sendPhoto",
        "sendMessage",
        "sendMessage",
        "sendMessage",
        "sendMessage",
    ]
    start, help_, photo, document, blank, pdf, broken, text = replies
    assert HELP_TEXT in start.fields["text"]
    assert help_.fields["text"] == HELP_TEXT
    for needed in ("apparent age", "not a person's gender", "not stored"):
        assert needed in HELP_TEXT
    # the photo: the largest size was analysed, and answered with boxes drawn on it
    answered = _photo(photo)
    assert answered.shape == astronaut.shape
    assert (np.abs(answered.astype(int) - astronaut).max(axis=2) > 80).mean() > 0.005
    lines = photo.fields["caption"].splitlines()
    assert lines[0] == "1 face:"
    gender, age, interval = lines[1].split(" ")
    assert gender == "F"
    assert 30 <= int(age) <= 52
    low, high = (int(v) for v in interval.strip("()").split("-"))
    assert low <= int(age) <= high
    assert decoded_fields(photo)["chat_id"] == ANN
    # the image sent as a file (PNG) gets the same answer
    assert _photo(document).shape == astronaut.shape
    assert document.fields["caption"].splitlines()[1].startswith("F ")
    assert blank.fields["text"] == NO_FACE_TEXT
    assert pdf.fields["text"] == NOT_AN_IMAGE_TEXT
    assert broken.fields["text"].startswith("I could not read that image")
    assert text.fields["text"] == NOT_AN_IMAGE_TEXT
    assert "getFile" in fake_api.calls
    assert list(workdir.iterdir()) == []
    assert list(scratch.iterdir()) == []


def test_a_group_photo_gets_a_line_per_face(
    fake_api: FakeBotApi, library: LibraryAnalysis, samples_dir: Path
) -> None:
    image = np.asarray(Image.open(samples_dir / "sample5.jpg").convert("RGB"))
    fake_api.queue_photo(BOB, _sizes(image))
    run_bot(fake_api, library, lambda: bool(fake_api.replies_to(BOB)))
    (reply,) = fake_api.replies_to(BOB)
    lines = reply.fields["caption"].splitlines()
    assert lines[0] == "5 faces:"
    assert len(lines) == 6
    assert all(line.split(" ")[0] in {"F", "M"} for line in lines[1:])


def test_each_chat_has_its_own_rate_limit(
    fake_api: FakeBotApi, library: LibraryAnalysis, astronaut: NDArray[np.uint8]
) -> None:
    for _ in range(3):
        fake_api.queue_photo(CAROL, _sizes(astronaut))
    fake_api.queue_photo(ANN, _sizes(astronaut))
    run_bot(
        fake_api,
        library,
        lambda: len(fake_api.replies_to(CAROL)) >= 3 and bool(fake_api.replies_to(ANN)),
        per_minute=2,
    )
    carol = fake_api.replies_to(CAROL)
    assert [r.method for r in carol] == ["sendPhoto", "sendPhoto", "sendMessage"]
    assert "more than 2 images a minute" in carol[2].fields["text"]
    assert [r.method for r in fake_api.replies_to(ANN)] == ["sendPhoto"]


# ------------------------------------------------------------------ a remote service


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "AGELENS_THREADS": "2",
        "AGELENS_DATA_DIR": str(tmp_path_factory.mktemp("agelens-data")),
    }
    with agelens_serve([], env) as url:
        yield url


def test_the_bot_can_analyse_on_a_running_service(
    fake_api: FakeBotApi, service_url: str, astronaut: NDArray[np.uint8]
) -> None:
    analysis = ServiceAnalysis.connect(service_url)
    fake_api.queue_photo(ANN, _sizes(astronaut))
    fake_api.queue_document(ANN, b"GIF89a broken", "broken.gif", "image/gif")
    run_bot(fake_api, analysis, lambda: len(fake_api.replies_to(ANN)) >= 2)
    photo, broken = fake_api.replies_to(ANN)
    assert _photo(photo).shape == astronaut.shape
    assert photo.fields["caption"].splitlines()[1].startswith("F ")
    assert broken.fields["text"].startswith("I could not read that image")


# ------------------------------------------------------------------ the parts


def test_the_rate_limiter_is_a_sliding_minute() -> None:
    limiter = ChatRateLimiter(2)
    assert limiter.wait_seconds(1, now=0.0) == 0
    assert limiter.wait_seconds(1, now=10.0) == 0
    assert limiter.wait_seconds(1, now=20.0) == pytest.approx(40.0)
    assert limiter.wait_seconds(2, now=20.0) == 0  # another chat
    assert limiter.wait_seconds(1, now=60.5) == 0  # the first image left the window
    assert ChatRateLimiter(0).wait_seconds(1) == 0


def test_captions_fit_telegrams_limit() -> None:
    assert caption_for(["F 27 (21-34)"]) == "1 face:\nF 27 (21-34)"
    many = caption_for([f"M {i} ({i}-{i + 9})" for i in range(200)])
    assert len(many) <= MAX_CAPTION_CHARS
    assert many.startswith("200 faces:\nM 0 (0-9)")
    assert many.rsplit("\n", 1)[1].startswith("... and ")


def test_the_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGELENS_TELEGRAM_TOKEN", raising=False)
    with pytest.raises(TelegramConfigurationError, match="AGELENS_TELEGRAM_TOKEN"):
        token_from_environment()
    monkeypatch.setenv("AGELENS_TELEGRAM_TOKEN", f" {TOKEN} ")
    assert token_from_environment() == TOKEN


def test_the_command_refuses_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from agelens.cli import app

    monkeypatch.delenv("AGELENS_TELEGRAM_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["telegram"])
    assert result.exit_code == 2
    assert "AGELENS_TELEGRAM_TOKEN" in result.output
