"""Video: every person tracked, one steady age and gender per person.

`track(source)` yields a FrameResult per frame (tracked faces with their fused answers);
`summarize(results)` gives one PersonSummary per person. Needs the `video` extra
(`pip install 'agelens[video]'`: PyAV and supervision). Nothing is imported from PyAV or
supervision until a video is opened.
"""

from __future__ import annotations

from agelens.video.sources import SourceInfo, VideoFrame, VideoSource, open_source
from agelens.video.tracking import (
    FrameResult,
    PersonSummary,
    TrackedFace,
    TrackOptions,
    VideoTracker,
    create_video_analyzer,
    summarize,
    track,
)

__all__ = [
    "FrameResult",
    "PersonSummary",
    "SourceInfo",
    "TrackOptions",
    "TrackedFace",
    "VideoFrame",
    "VideoSource",
    "VideoTracker",
    "create_video_analyzer",
    "open_source",
    "summarize",
    "track",
]
