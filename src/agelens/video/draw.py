"""The annotated video: every frame with its tracked boxes and "#3 F 27 (24-30)" labels, at
the input's resolution and frame rate, with the input's audio kept when the output container
can hold it (dropped, with a warning, when it cannot).

Frames are drawn and encoded in a thread of their own, so encoding overlaps the analysis.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

from agelens.errors import AgelensError, require_extra
from agelens.models.base import RGBImage
from agelens.render import draw_labelled_boxes, gender_colour
from agelens.video.tracking import FrameResult

logger = logging.getLogger(__name__)

#: Encoder of each output container (PyAV's wheels carry all of these).
ENCODERS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mpeg4",
}


class VideoOutputError(AgelensError):
    """The annotated video cannot be written (unknown container suffix, encoder failure)."""

    code = "video_output_error"


def draw_frame(result: FrameResult) -> RGBImage:
    """The frame's image with each tracked face's box and label drawn on it."""
    if result.image is None:
        raise ValueError("the FrameResult carries no image to draw on")
    return draw_labelled_boxes(
        result.image,
        [(face.box_xyxy, face.label(), gender_colour(face.gender)) for face in result.faces],
    )


class AnnotatedVideoWriter:
    """Writes annotated frames to `path` (container from the suffix) at `fps`; `audio_from`
    names a file whose first audio track is copied in at `close()`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        *,
        audio_from: Path | None = None,
        queue_frames: int = 8,
    ) -> None:
        require_extra("av", "video")
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in ENCODERS:
            raise VideoOutputError(
                f"{path}: cannot tell the video format from {suffix!r}; end the name in "
                f"{', '.join(sorted(ENCODERS))}"
            )
        self.codec = ENCODERS[suffix]
        self.fps = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self.audio_from = audio_from
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._video_only = self.path.with_name(f".{self.path.stem}.{os.getpid()}.video{suffix}")
        self._queue: queue.Queue[FrameResult | None] = queue.Queue(maxsize=queue_frames)
        self._error: BaseException | None = None
        self._container: Any = None
        self._stream: Any = None
        self.frames_written = 0
        self._thread = threading.Thread(target=self._run, name="agelens-encode", daemon=True)
        self._thread.start()

    def write(self, result: FrameResult) -> None:
        """Queue one frame to draw and encode (blocks while the encoder is behind)."""
        if self._error is not None:
            raise VideoOutputError(f"{self.path}: encoding failed: {self._error}") from self._error
        self._queue.put(result)

    def _run(self) -> None:
        try:
            while (result := self._queue.get()) is not None:
                if self._error is None:
                    self._encode(draw_frame(result))
        except Exception as error:  # reported to the caller by write() / close()
            self._error = error
            while self._queue.get() is not None:  # let the producer finish
                pass

    def _encode(self, image: RGBImage) -> None:
        import av

        if self._container is None:
            height, width = image.shape[:2]
            self._container = av.open(str(self._video_only), mode="w")
            stream = self._container.add_stream(self.codec, rate=self.fps)
            stream.width, stream.height = width, height
            even = width % 2 == 0 and height % 2 == 0
            # 4:2:0 needs even sides; odd-sized inputs keep their size in 4:4:4.
            stream.pix_fmt = "yuv420p" if even or self.codec != "libx264" else "yuv444p"
            if self.codec == "libx264":
                stream.options = {"preset": "veryfast", "crf": "23"}
            elif self.codec == "libvpx-vp9":
                stream.options = {"deadline": "realtime", "cpu-used": "8"}
            self._stream = stream
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        if (frame.width, frame.height) != (self._stream.width, self._stream.height):
            frame = frame.reformat(self._stream.width, self._stream.height)
        self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    def close(self) -> None:
        """Finish encoding, copy the audio in, and move the file into place. Raises
        VideoOutputError when encoding failed; an empty video (no frame) is not written."""
        self._queue.put(None)
        self._thread.join()
        if self._container is not None:
            if self._error is None:
                self._container.mux(self._stream.encode(None))
            self._container.close()
        if self._error is not None:
            self._video_only.unlink(missing_ok=True)
            raise VideoOutputError(f"{self.path}: encoding failed: {self._error}") from self._error
        if self._container is None:
            return
        try:
            if self.audio_from is not None and _has_audio(self.audio_from):
                _mux_with_audio(self._video_only, self.audio_from, self.path)
                self._video_only.unlink()
                return
        except Exception as error:
            logger.warning("%s: the audio is dropped (%s)", self.path, error)
        os.replace(self._video_only, self.path)


def _has_audio(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except av.error.FFmpegError:
        return False


def _mux_with_audio(video_only: Path, audio_source: Path, target: Path) -> None:
    """Copy the video of `video_only` and the first audio track of `audio_source` (no
    re-encoding) into `target`, interleaved by time; the audio is cut at the video's end."""
    import av

    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp{target.suffix}")
    try:
        with (
            av.open(str(video_only)) as video,
            av.open(str(audio_source)) as sound,
            av.open(str(temporary), mode="w") as out,
        ):
            video_in, audio_in = video.streams.video[0], sound.streams.audio[0]
            video_out = out.add_stream_from_template(video_in)
            audio_out = out.add_stream_from_template(audio_in)
            end_s = float(video.duration or 0) / 1_000_000
            pending = {
                "video": _packets(video.demux(video_in), video_out),
                "audio": _packets(sound.demux(audio_in), audio_out, end_s or None),
            }
            heads = {name: next(iterator, None) for name, iterator in pending.items()}
            while any(heads.values()):
                name = min(
                    (n for n, head in heads.items() if head is not None),
                    key=lambda n: heads[n][0],  # type: ignore[index]
                )
                head = heads[name]
                assert head is not None
                out.mux(head[1])
                heads[name] = next(pending[name], None)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _packets(demuxed: Any, stream: Any, end_s: float | None = None) -> Any:
    """(time in seconds, packet re-aimed at `stream`) of real packets, up to `end_s`."""
    for packet in demuxed:
        if packet.dts is None or packet.size == 0:
            continue
        time_s = float(packet.dts * packet.time_base)
        if end_s is not None and time_s > end_s:
            return
        packet.stream = stream
        yield time_s, packet
