"""Frame sources: files of every container, frame folders, damaged files, refused URLs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agelens.errors import VideoDecodeError, VideoSourceError
from agelens.video.sources import check_stream_url, open_source, prefetched
from tests.video.clips import background, corrupted_copy, encode, truncated_copy


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    wall = background((160, 96), seed=4)
    return [np.roll(wall, 4 * i, axis=1) for i in range(20)]


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [
        (".mp4", "libx264"),
        (".mov", "libx264"),
        (".mkv", "libx264"),
        (".webm", "libvpx-vp9"),
        (".avi", "mpeg4"),
    ],
)
def test_every_container_decodes_to_all_its_frames_with_timestamps(
    tmp_path: Path, frames: list[np.ndarray], suffix: str, codec: str
) -> None:
    path = encode(tmp_path / f"clip{suffix}", frames, 10, codec=codec)
    with open_source(path) as video:
        assert video.info.fps == pytest.approx(10.0)
        assert video.info.size_wh == (160, 96)
        decoded = list(prefetched(iter(video)))
    assert [f.index for f in decoded] == list(range(20))
    assert decoded[5].timestamp_s == pytest.approx(0.5, abs=0.01)
    assert decoded[0].image.shape == (96, 160, 3)


def test_a_folder_of_frames_is_a_video_at_the_given_rate(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    for index, image in enumerate(frames[:5]):
        Image.fromarray(image).save(tmp_path / f"frame{index:03d}.png")
    with open_source(tmp_path / "frame*.png", frames_fps=5) as video:
        decoded = list(video)
    assert [round(f.timestamp_s, 2) for f in decoded] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert np.array_equal(decoded[3].image, frames[3])


def test_a_truncated_video_keeps_the_frames_before_the_damage(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    whole = encode(tmp_path / "whole.mkv", frames, 10)
    damaged = truncated_copy(whole, tmp_path / "cut.mkv", keep=0.5)
    kept = []
    with open_source(damaged) as video, pytest.raises(VideoDecodeError, match="truncated") as error:
        kept.extend(video)
    assert 0 < len(kept) < 20
    assert error.value.frames_read == len(kept)


def test_a_corrupt_video_keeps_the_frames_before_the_damage(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    whole = encode(tmp_path / "whole.mp4", frames, 10)
    damaged = corrupted_copy(whole, tmp_path / "bad.mp4", start=0.5, end=0.8)
    kept = []
    with open_source(damaged) as video, pytest.raises(VideoDecodeError):
        kept.extend(prefetched(iter(video)))
    assert 0 < len(kept) < 20


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"not a video at all" * 20, "cannot open")],
)
def test_files_that_are_not_videos_are_clear_errors(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoSourceError, match=message):
        open_source(path)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VideoSourceError, match="no such file"):
        open_source(tmp_path / "absent.mp4")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/stream.m3u8",
        "rtsp://10.0.0.5/live",
        "https://169.254.169.254/latest",
        "http://user:secret@example.com/a.mp4",
        "http:///nohost",
    ],
)
def test_stream_urls_to_internal_hosts_are_refused(url: str) -> None:
    with pytest.raises(VideoSourceError):
        check_stream_url(url)


def test_an_allowed_network_may_be_streamed_from() -> None:
    check_stream_url("rtsp://10.0.0.5/live", allow_networks=["10.0.0.0/8"])


def test_an_http_stream_from_an_allowed_network_is_read(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    encode(tmp_path / "clip.mkv", frames, 10)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mkv"
        with pytest.raises(VideoSourceError, match="non-public"):
            open_source(url)
        with open_source(url, allow_networks=["127.0.0.0/8"]) as video:
            assert video.info.live
            assert len(list(video)) == 20
    finally:
        server.shutdown()
        server.server_close()
