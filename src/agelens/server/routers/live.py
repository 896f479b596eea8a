"""`/v1/live`: a WebSocket the web page streams its camera through, frame by frame, to be
tracked like a video (one steady age and gender per person).

Protocol (JSON text messages, frames as binary):

1. The client sends `{"type": "start", "api_key": KEY, "fps": 5}` (`api_key` only where the
   server has keys; `fps` the rate it means to send at). The server answers
   `{"type": "ready"}`, or closes with code 4401 (no or bad key), 4429 (rate limited) or 4503
   (models or the `video` extra missing) and the reason.
2. The client sends frames as binary JPEG or PNG (at most the server's body limit). For each
   frame it tracks, the server answers `{"type": "frame", "index", "image_wh", "faces": [...],
   "people": [...], "dropped"}`; a frame it cannot decode gets `{"type": "error", "message"}`.

Frames are dropped, never queued: the server keeps only the newest frame that arrived while
it was busy (`dropped` counts the others), and the page sends a frame only when the answer to
the previous one is back. One tracker per connection; nothing is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from agelens.errors import AgelensError, MissingExtraError, require_extra
from agelens.intake import IntakeOptions, decode_image
from agelens.server.deps import ServiceDep, check_presented_key
from agelens.server.errors import ApiError, UnauthorizedError
from agelens.server.service import Service

logger = logging.getLogger(__name__)

router = APIRouter()

#: Close codes (4000-4999 are the application's): HTTP's status plus 4000.
CLOSE_UNAUTHORIZED, CLOSE_RATE_LIMITED, CLOSE_UNAVAILABLE, CLOSE_BAD_START = 4401, 4429, 4503, 4400
#: Seconds the client has to send its start message.
START_TIMEOUT_S = 10.0


def _face_json(face: Any) -> dict[str, Any]:
    return {
        "track_id": face.track_id,
        "box_xyxy": [round(v, 1) for v in face.box_xyxy],
        "label": face.label(),
        "gender": face.gender,
        "gender_probability": None
        if face.gender_probability is None
        else round(face.gender_probability, 3),
        "age_years": None if face.age_years is None else round(face.age_years, 1),
        "age_interval": None
        if face.age_interval is None
        else [round(face.age_interval[0], 1), round(face.age_interval[1], 1)],
    }


def _person_json(person: Any) -> dict[str, Any]:
    return {
        "track_id": person.track_id,
        "gender": person.gender,
        "age_years": None if person.age_years is None else round(person.age_years, 1),
        "age_interval": None
        if person.age_interval is None
        else [round(person.age_interval[0], 1), round(person.age_interval[1], 1)],
        "first_seen_s": round(person.first_seen_s, 2),
        "last_seen_s": round(person.last_seen_s, 2),
    }


def _decode(data: bytes, max_pixels: int) -> Any:
    return decode_image(data, "<frame>", IntakeOptions(max_pixels=max_pixels))


async def _start(websocket: WebSocket, service: Service) -> float | None:
    """Check the start message; the frame rate the client announced, or None after closing."""
    try:
        text = await asyncio.wait_for(websocket.receive_text(), START_TIMEOUT_S)
        start = json.loads(text)
        if not isinstance(start, dict) or start.get("type") != "start":
            raise ValueError('the first message must be {"type": "start", ...}')
        fps = float(start.get("fps", 5))
        if not 0 < fps <= 60:
            raise ValueError("fps must be above 0 and at most 60")
    except (TimeoutError, ValueError, TypeError, KeyError) as error:
        await websocket.close(CLOSE_BAD_START, f"bad start: {error}"[:120])
        return None
    client = websocket.client.host if websocket.client else "unknown"
    try:
        check_presented_key(service, start.get("api_key"), client)
    except UnauthorizedError as error:
        await websocket.close(CLOSE_UNAUTHORIZED, str(error))
        return None
    except ApiError:
        await websocket.close(CLOSE_RATE_LIMITED, "too many requests; retry in a minute")
        return None
    if not service.pool.ready:
        await websocket.close(CLOSE_UNAVAILABLE, "the models are not loaded")
        return None
    try:
        require_extra("supervision", "video")
    except MissingExtraError as error:
        await websocket.close(CLOSE_UNAVAILABLE, str(error)[:120])
        return None
    return fps


@router.websocket("/v1/live")
async def live(websocket: WebSocket, service: ServiceDep) -> None:
    """Track the faces of a stream of camera frames (see the module's docstring)."""
    from agelens.video.sources import VideoFrame
    from agelens.video.tracking import TrackOptions, VideoTracker

    await websocket.accept()
    fps = await _start(websocket, service)
    if fps is None:
        return
    settings = service.settings
    analyzer = service.pool.analyzer(settings.detector, settings.estimator)
    # About three estimates a second whatever the client's rate, so a person's first answer
    # (after three estimates) comes within a second or so. A camera has no scene cuts, and at
    # a few frames a second (fewer when the server is busy) a person moving between frames
    # would look like one.
    options = TrackOptions(estimate_every=max(1, round(fps / 3)), scene_cut=None)
    tracker = VideoTracker(analyzer, fps, options)
    await websocket.send_json({"type": "ready"})
    newest: list[bytes] = []  # at most one: the newest frame not yet tracked
    dropped = 0
    arrived = anyio.Event()
    closed = False

    async def receive() -> None:
        nonlocal dropped, arrived, closed
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    continue  # text after the start: nothing to do
                if newest:
                    dropped += 1
                    newest.clear()
                newest.append(data)
                arrived.set()
        finally:
            closed = True
            arrived.set()

    start_s = time.monotonic()
    index = 0
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(receive)
        try:
            while True:
                await arrived.wait()
                arrived = anyio.Event()
                if closed:
                    break
                if not newest:
                    continue
                data = newest.pop()
                if len(data) > settings.max_body_bytes:
                    await websocket.send_json(
                        {"type": "error", "message": "the frame is over the body limit"}
                    )
                    continue
                try:
                    image = await anyio.to_thread.run_sync(_decode, data, settings.max_pixels)
                except AgelensError as error:
                    await websocket.send_json({"type": "error", "message": str(error)})
                    continue
                frame = VideoFrame(index, time.monotonic() - start_s, image)
                result = await anyio.to_thread.run_sync(tracker.process, frame)
                index += 1
                await websocket.send_json(
                    {
                        "type": "frame",
                        "index": result.index,
                        "image_wh": list(result.image_wh),
                        "faces": [_face_json(f) for f in result.faces],
                        "people": [_person_json(p) for p in tracker.people()],
                        "dropped": dropped,
                    }
                )
        except WebSocketDisconnect:
            pass
        finally:
            tasks.cancel_scope.cancel()
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close()
