"""`/v1/live`: camera frames over a WebSocket, tracked with the real models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from starlette.websockets import WebSocketDisconnect

from tests.server.conftest import ClientFactory, jpeg_bytes

pytest.importorskip("supervision", reason="the video extra is not installed")


def frames_of(astronaut: NDArray[np.uint8], count: int) -> list[bytes]:
    """The astronaut, panning by a few pixels a frame (a steady camera)."""
    return [jpeg_bytes(np.roll(astronaut, 3 * i, axis=1)) for i in range(count)]


def test_frames_are_tracked_with_one_steady_person(
    make_client: ClientFactory, astronaut: NDArray[np.uint8]
) -> None:
    client = make_client()
    answers: list[dict[str, Any]] = []
    with client.websocket_connect("/v1/live") as socket:
        socket.send_json({"type": "start", "fps": 5})
        assert socket.receive_json() == {"type": "ready"}
        for frame in frames_of(astronaut, 6):
            socket.send_bytes(frame)
            answers.append(socket.receive_json())
    assert [a["index"] for a in answers] == list(range(6))
    assert all(a["image_wh"] == [512, 512] for a in answers)
    ids = {face["track_id"] for a in answers for face in a["faces"]}
    assert ids == {1}
    last = answers[-1]
    face = last["faces"][0]
    assert face["gender"] == "F"
    assert 20 < face["age_years"] < 60
    assert face["label"].startswith("#1 F ")
    assert [p["track_id"] for p in last["people"]] == [1]
    assert answers[0]["faces"][0]["label"] == "#1"  # no answer before three estimates


def test_a_frame_that_is_not_an_image_gets_an_error_and_the_stream_goes_on(
    make_client: ClientFactory, astronaut: NDArray[np.uint8]
) -> None:
    client = make_client()
    with client.websocket_connect("/v1/live") as socket:
        socket.send_json({"type": "start"})
        assert socket.receive_json()["type"] == "ready"
        socket.send_bytes(b"not an image")
        assert socket.receive_json()["type"] == "error"
        socket.send_bytes(frames_of(astronaut, 1)[0])
        assert socket.receive_json()["type"] == "frame"


@pytest.mark.parametrize(
    ("start", "code"),
    [
        ({"type": "start"}, 4401),
        ({"type": "start", "api_key": "wrong"}, 4401),
        ({"type": "hello"}, 4400),
        ({"type": "start", "fps": 0, "api_key": "secret"}, 4400),
    ],
)
def test_a_bad_start_or_key_closes_the_socket(
    make_client: ClientFactory, start: dict[str, Any], code: int
) -> None:
    client = make_client(api_keys=["secret"])
    with client.websocket_connect("/v1/live") as socket:
        socket.send_json(start)
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
    assert closed.value.code == code


def test_the_right_key_opens_the_stream(make_client: ClientFactory) -> None:
    client = make_client(api_keys=["secret"])
    with client.websocket_connect("/v1/live") as socket:
        socket.send_json({"type": "start", "api_key": "secret"})
        assert socket.receive_json() == {"type": "ready"}


def test_frames_sent_while_busy_are_dropped_not_queued(
    make_client: ClientFactory, astronaut: NDArray[np.uint8]
) -> None:
    client = make_client()
    with client.websocket_connect("/v1/live") as socket:
        socket.send_json({"type": "start", "fps": 10})
        socket.receive_json()
        for frame in frames_of(astronaut, 8):
            socket.send_bytes(frame)
        answers = [socket.receive_json()]
        while answers[-1]["index"] + 1 + answers[-1]["dropped"] < 8:
            answers.append(socket.receive_json())
    assert answers[-1]["dropped"] > 0
    assert len(answers) < 8
