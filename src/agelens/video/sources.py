"""Where video frames come from: files, folders or globs of frames, webcams and streams.

Every source yields `VideoFrame`s (RGB uint8 arrays with their index and timestamp). Video
files, webcams and streams are decoded by FFmpeg through PyAV; a folder or glob of images is
read with agelens' own image loader. A source that cannot be opened raises VideoSourceError;
one that breaks off part way (corrupt, truncated) raises VideoDecodeError *after* yielding the
frames before the damage.

Stream URLs go through the address rules of the image fetcher (`agelens/urlfetch.py`): every
address the host resolves to must be public, or inside a network the caller allows. FFmpeg
makes the connection itself, so (unlike the image fetcher) the checked address is not pinned;
the rule keeps a user-given URL from naming an internal host, not a DNS server that lies.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from agelens.errors import (
    AgelensError,
    VideoDecodeError,
    VideoSourceError,
    require_extra,
)
from agelens.models.base import RGBImage

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https"})
#: Frame rate given to a folder or glob of frames, which carries none of its own.
DEFAULT_FRAMES_FPS = 25.0
#: Seconds FFmpeg may wait on a stream or webcam before giving up (opening and each read).
STREAM_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One decoded frame: `index` counts from 0 in decoding order, `timestamp_s` is its
    presentation time in seconds from the start, `image` is RGB uint8 (H, W, 3)."""

    index: int
    timestamp_s: float
    image: RGBImage = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What is known of a source before decoding: frame rate (frames a second), size in
    pixels (None until the first frame for frame folders), declared length (None for live
    sources), whether it is live (webcam, stream) and the path of a file with audio to keep."""

    description: str
    fps: float
    size_wh: tuple[int, int] | None
    duration_s: float | None
    live: bool
    file: Path | None = None


def is_webcam(source: str | int) -> bool:
    """True for a webcam index (0, 1, ... or "0", "1", ...)."""
    return isinstance(source, int) or (isinstance(source, str) and source.isdigit())


def is_stream_url(source: str | int) -> bool:
    """True for an rtsp/rtmp/http(s) URL."""
    return isinstance(source, str) and urlsplit(source).scheme.lower() in STREAM_SCHEMES


class VideoSource:
    """A source of frames; iterate it once. Use as a context manager, or call `close()`."""

    info: SourceInfo

    def __iter__(self) -> Iterator[VideoFrame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file, device or connection."""

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(
    source: str | int | os.PathLike[str],
    *,
    frames_fps: float = DEFAULT_FRAMES_FPS,
    allow_networks: Sequence[str] = (),
    timeout_s: float = STREAM_TIMEOUT_S,
) -> VideoSource:
    """The frames of `source`: a video file, a folder or glob of images (at `frames_fps`), a
    webcam index, or an rtsp/rtmp/http(s) stream URL whose host must resolve to public
    addresses (or to addresses in `allow_networks`, CIDR strings).

    Raises VideoSourceError when the source cannot be opened, MissingExtraError without PyAV.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if is_webcam(source):
        return _AvSource(*_webcam_target(int(source)), live=True, timeout_s=timeout_s)
    assert isinstance(source, str)
    if is_stream_url(source):
        check_stream_url(source, allow_networks)
        return _AvSource(source, None, live=True, timeout_s=timeout_s)
    path = Path(source)
    if path.is_dir() or any(c in source for c in "*?["):
        return _FramesSource(source, frames_fps)
    if not path.exists():
        raise VideoSourceError(f"{source}: no such file, folder, webcam index or stream URL")
    if not path.is_file():
        raise VideoSourceError(f"{source}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoSourceError(f"{source}: the file is empty (0 bytes), not a video")
    return _AvSource(str(path), None, live=False, timeout_s=timeout_s, file=path)


def check_stream_url(url: str, allow_networks: Sequence[str] = ()) -> None:
    """Raise VideoSourceError unless every address `url`'s host resolves to is public or in
    `allow_networks` (the image fetcher's rule: no loopback, private, link-local or metadata
    addresses). http(s) URLs may not carry credentials, as for images; rtsp may (cameras)."""
    require_extra("httpx", "server")  # the address rules live with the image fetcher
    from agelens.urlfetch import is_public_address

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in STREAM_SCHEMES:
        raise VideoSourceError(f"{url}: only {sorted(STREAM_SCHEMES)} URLs are streamed")
    if scheme in ("http", "https") and (parts.username or parts.password):
        raise VideoSourceError(f"{_redacted(url)}: http(s) URLs with credentials are not opened")
    host = parts.hostname
    if not host:
        raise VideoSourceError(f"{_redacted(url)}: the URL has no host")
    networks = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
    try:
        port = parts.port
        infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        raise VideoSourceError(f"{_redacted(url)}: cannot resolve {host!r}: {error}") from error
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not (is_public_address(address) or any(address in n for n in networks)):
            raise VideoSourceError(
                f"{_redacted(url)}: {host} resolves to {address}, a non-public address; "
                "allow its network explicitly (--allow-network) to stream from it"
            )


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@")


def _webcam_target(index: int) -> tuple[str, str | None]:
    if sys.platform.startswith("linux"):
        return f"/dev/video{index}", "v4l2"
    if sys.platform == "darwin":
        return str(index), "avfoundation"
    raise VideoSourceError(
        f"webcam {index}: webcam indexes are supported on Linux and macOS; on Windows give "
        "the camera as a stream URL or record a file"
    )


class _AvSource(VideoSource):
    """A container FFmpeg opens: a file, a device (with `input_format`) or a URL."""

    def __init__(
        self,
        target: str,
        input_format: str | None,
        *,
        live: bool,
        timeout_s: float,
        file: Path | None = None,
    ) -> None:
        require_extra("av", "video")
        import av

        self._label = _redacted(target)
        try:
            self._container: Any = av.open(
                target,
                format=input_format,
                timeout=timeout_s if live else None,
                options={"rtsp_transport": "tcp"} if target.startswith("rtsp") else {},
            )
        except (av.error.FFmpegError, OSError) as error:
            raise VideoSourceError(f"{self._label}: cannot open as a video: {error}") from error
        if not self._container.streams.video:
            self._container.close()
            raise VideoSourceError(f"{self._label}: holds no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # FFmpeg's frame threads decode ahead on other cores
        rate = self._stream.average_rate or self._stream.guessed_rate
        fps = float(rate) if rate else DEFAULT_FRAMES_FPS
        duration = None
        if self._container.duration:
            duration = self._container.duration / 1_000_000  # AV_TIME_BASE
        width, height = self._stream.codec_context.width, self._stream.codec_context.height
        self.info = SourceInfo(
            description=self._label,
            fps=fps,
            size_wh=(width, height) if width and height else None,
            duration_s=None if live else duration,
            live=live,
            file=file,
        )

    def __iter__(self) -> Iterator[VideoFrame]:
        import av

        index = 0
        fps = self.info.fps
        last_s = -1.0
        start = self._container.start_time
        offset_s = start / 1_000_000 if start else 0.0
        try:
            for frame in self._container.decode(self._stream):
                time_s = frame.time - offset_s if frame.time is not None else index / fps
                # Live sources can repeat or go back in time; keep timestamps increasing.
                time_s = max(float(time_s), last_s + 1e-6)
                last_s = time_s
                image = frame.to_ndarray(format="rgb24")
                yield VideoFrame(index, time_s, image)
                index += 1
        except av.error.FFmpegError as error:
            raise VideoDecodeError(
                f"{self._label}: the video breaks off after frame {index} "
                f"({max(last_s, 0):.2f} s): {error}",
                frames_read=index,
            ) from error
        self._check_complete(index, last_s)

    def _check_complete(self, frames: int, last_s: float) -> None:
        """A file that ends well before the length its header declares was cut off."""
        if frames == 0:
            raise VideoDecodeError(f"{self._label}: no frame could be decoded", 0)
        duration = self.info.duration_s
        # The last frame starts one frame before the end; two more frames of slack because
        # containers round their duration.
        if duration is not None and last_s < duration - 3.0 / self.info.fps:
            raise VideoDecodeError(
                f"{self._label}: the video ends after frame {frames} ({last_s:.2f} s) of the "
                f"{duration:.2f} s its header declares: the file looks truncated",
                frames_read=frames,
            )

    def close(self) -> None:
        self._container.close()


class _FramesSource(VideoSource):
    """A folder or glob of image files, in name order, at a given frame rate."""

    def __init__(self, pattern: str, fps: float) -> None:
        from agelens.errors import BatchInputError
        from agelens.intake import iter_sources

        try:
            self._paths = list(iter_sources([pattern]))
        except BatchInputError as error:
            raise VideoSourceError(str(error)) from error
        if not self._paths:
            raise VideoSourceError(f"{pattern}: holds no image files")
        if fps <= 0:
            raise VideoSourceError(f"frame rate must be positive, not {fps}")
        self.info = SourceInfo(
            description=pattern,
            fps=fps,
            size_wh=None,
            duration_s=len(self._paths) / fps,
            live=False,
        )

    def __iter__(self) -> Iterator[VideoFrame]:
        from agelens.intake import SourceLoader

        with SourceLoader() as loader:
            for index, path in enumerate(self._paths):
                loaded = loader.load(path)
                if loaded.image is None:
                    raise VideoDecodeError(
                        f"frame {index} ({path}) cannot be read: {loaded.error_message}",
                        frames_read=index,
                    )
                image = np.ascontiguousarray(loaded.image)
                yield VideoFrame(index, index / self.info.fps, image)


_END = object()


def prefetched(frames: Iterator[VideoFrame], depth: int = 8) -> Iterator[VideoFrame]:
    """The same frames, decoded ahead in a thread so decoding overlaps the caller's work
    (FFmpeg releases the GIL). At most `depth` frames wait; an error of the source is raised
    here after the frames before it. Closing the generator stops the thread."""
    waiting: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for frame in frames:
                if not put(frame):
                    return
        except (AgelensError, OSError) as error:
            put(error)
            return
        except Exception as error:  # an unexpected decoder failure still reaches the caller
            logger.exception("decoding failed")
            put(error)
            return
        put(_END)

    thread = threading.Thread(target=decode, name="agelens-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = waiting.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, VideoFrame)
            yield item
    finally:
        stop.set()
        # A live source's read returns within its timeout; only then may the caller close it.
        thread.join(timeout=STREAM_TIMEOUT_S + 1)
        if thread.is_alive():
            logger.warning("the decoding thread did not stop within %.0f s", STREAM_TIMEOUT_S + 1)
