"""One video in, its files out: the track table, the people table, the annotated video and the
best face of each person. The CLI's `agelens video` (and any other door) calls `run_video`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agelens.errors import VideoDecodeError
from agelens.pipeline import Analyzer
from agelens.video.sources import DEFAULT_FRAMES_FPS, open_source, prefetched
from agelens.video.tracking import PersonSummary, TrackOptions, VideoTracker

logger = logging.getLogger(__name__)

#: Frames between two writes of track rows.
_ROWS_EVERY_FRAMES = 256


@dataclass(frozen=True, slots=True)
class VideoRun:
    """What a run did: frames read, people found, seconds taken, and the error that cut the
    video short (None when it was read to the end)."""

    source: str
    frames: int
    fps: float
    people: tuple[PersonSummary, ...]
    seconds: float
    error: VideoDecodeError | None = None
    crops: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False
    live: bool = False

    @property
    def frames_per_second(self) -> float:
        """Frames analysed per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def run_video(
    source: str | int | os.PathLike[str],
    analyzer: Analyzer,
    *,
    options: TrackOptions | None = None,
    out: Path | None = None,
    draw: Path | None = None,
    summary: Path | None = None,
    crops: Path | None = None,
    frames_fps: float = DEFAULT_FRAMES_FPS,
    allow_networks: Sequence[str] = (),
    min_frames_seen: int = 1,
    progress: Callable[[int, int | None], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> VideoRun:
    """Track `source` and write what was asked: `out` (track rows), `summary` (people rows),
    `draw` (annotated video, audio kept), `crops` (best face of each person, TRACK.jpg).

    A video that breaks off part way still gets every output from the frames before the
    damage; the error is returned in `VideoRun.error`. Ctrl-C (KeyboardInterrupt) ends the run
    the same way, with `VideoRun.interrupted` set: how a webcam or stream is stopped.
    VideoSourceError (not openable) is raised before anything is written.
    `progress(frames_done, frames_expected)` is called every frame; `stop()` returning True
    ends the run early (a live source) and keeps what was done.
    """
    from agelens.imaging import encode_jpeg
    from agelens.video.draw import AnnotatedVideoWriter
    from agelens.video.output import (
        PEOPLE_COLUMNS,
        TRACK_COLUMNS,
        TableWriter,
        person_row,
        track_rows,
        write_table,
    )

    label = str(source)
    start = time.perf_counter()
    error: VideoDecodeError | None = None
    interrupted = False
    frames = 0
    with open_source(source, frames_fps=frames_fps, allow_networks=allow_networks) as video:
        info = video.info
        expected = round(info.duration_s * info.fps) if info.duration_s else None
        tracker = VideoTracker(analyzer, info.fps, options)
        rows_writer = TableWriter(out, TRACK_COLUMNS) if out is not None else None
        drawer = AnnotatedVideoWriter(draw, info.fps, audio_from=info.file) if draw else None
        pending: list[dict[str, object]] = []
        try:
            try:
                for frame in prefetched(iter(video)):
                    result = tracker.process(frame)
                    frames += 1
                    if rows_writer is not None:
                        pending.extend(track_rows(label, result, analyzer.models))
                        if frames % _ROWS_EVERY_FRAMES == 0:
                            rows_writer.write(pending)
                            pending = []
                    if drawer is not None:
                        drawer.write(result)
                    if progress is not None:
                        progress(frames, expected)
                    if stop is not None and stop():
                        break
            except VideoDecodeError as damage:
                logger.warning("%s", damage)
                error = damage
            except KeyboardInterrupt:
                logger.info("interrupted after %d frames", frames)
                interrupted = True
            if rows_writer is not None:
                rows_writer.write(pending)
        except BaseException:
            if rows_writer is not None:
                rows_writer.discard()
            if drawer is not None:
                drawer.close()
            raise
        if rows_writer is not None:
            rows_writer.close()
        if drawer is not None:
            drawer.close()
    people = tuple(tracker.people(min_frames_seen=min_frames_seen))
    crop_names: dict[int, str] = {}
    if crops is not None:
        crops.mkdir(parents=True, exist_ok=True)
        for person in people:
            face = tracker.best_crop(person.track_id)
            if face is not None and face.size:
                name = f"{person.track_id}.jpg"
                (crops / name).write_bytes(encode_jpeg(face))
                crop_names[person.track_id] = name
    if summary is not None:
        write_table(
            summary,
            PEOPLE_COLUMNS,
            [person_row(label, p, crop_names.get(p.track_id)) for p in people],
        )
    return VideoRun(
        source=label,
        frames=frames,
        fps=info.fps,
        people=people,
        seconds=time.perf_counter() - start,
        error=error,
        crops=crop_names,
        interrupted=interrupted,
        live=info.live,
    )
