"""Micro-batching: concurrent requests share runs, a full queue answers 503 at once."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from agelens.imaging import DecodedImage
from agelens.server.engine import AnalysisOptions, MicroBatcher, ModelPool
from agelens.server.errors import OverloadedError
from agelens.types import ImageResult

DEFAULT = AnalysisOptions("blazeface-full", "ensemble")


class Recorder:
    """A stand-in for ModelPool.run that records the batches it is given (plumbing only)."""

    def __init__(self, delay: float = 0.0, fail_for: AnalysisOptions | None = None) -> None:
        self.batches: list[tuple[AnalysisOptions, int]] = []
        self.delay = delay
        self.fail_for = fail_for
        self.lock = threading.Lock()

    def __call__(
        self, options: AnalysisOptions, images: Sequence[DecodedImage]
    ) -> list[ImageResult]:
        with self.lock:
            self.batches.append((options, len(images)))
        time.sleep(self.delay)
        if options == self.fail_for:
            raise RuntimeError("model exploded")
        return [ImageResult(faces=(), image_wh=img.image.full_wh) for img in images]


def _image(width: int) -> DecodedImage:
    return DecodedImage.whole(np.zeros((4, width, 3), np.uint8), f"{width}px", 0.0)


async def _with_batcher(batcher: MicroBatcher, work: object) -> object:
    await batcher.start()
    try:
        return await work  # type: ignore[misc]
    finally:
        await batcher.stop()


def test_concurrent_requests_share_one_run() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, window_ms=50, max_images=16, queue_size=64, workers=1)

    async def many() -> list[ImageResult]:
        return list(
            await asyncio.gather(*(batcher.submit(DEFAULT, _image(w)) for w in range(1, 9)))
        )

    results = asyncio.run(_with_batcher(batcher, many()))  # type: ignore[arg-type]
    assert [r.image_wh[0] for r in results] == list(range(1, 9))  # each gets its own result
    assert recorder.batches == [(DEFAULT, 8)]


def test_batches_are_capped_and_grouped_by_options() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, window_ms=30, max_images=4, queue_size=64, workers=1)
    other = AnalysisOptions("blazeface-short", "faceapi", max_faces=2)

    async def mixed() -> None:
        jobs = [batcher.submit(DEFAULT, _image(1)) for _ in range(6)]
        jobs += [batcher.submit(other, _image(2)) for _ in range(2)]
        await asyncio.gather(*jobs)

    asyncio.run(_with_batcher(batcher, mixed()))  # type: ignore[arg-type]
    assert all(size <= 4 for _, size in recorder.batches)
    assert sum(size for options, size in recorder.batches if options == DEFAULT) == 6
    assert sum(size for options, size in recorder.batches if options == other) == 2
    assert len(recorder.batches) < 8


def test_a_failing_group_fails_only_its_requests() -> None:
    broken = AnalysisOptions("blazeface-short", "cydral")
    recorder = Recorder(fail_for=broken)
    batcher = MicroBatcher(recorder, window_ms=30, max_images=16, queue_size=64, workers=1)

    async def both() -> list[object]:
        return list(
            await asyncio.gather(
                batcher.submit(DEFAULT, _image(3)),
                batcher.submit(broken, _image(3)),
                return_exceptions=True,
            )
        )

    good, bad = asyncio.run(_with_batcher(batcher, both()))  # type: ignore[misc]
    assert isinstance(good, ImageResult)
    assert isinstance(bad, RuntimeError)


def test_a_full_queue_refuses_at_once() -> None:
    recorder = Recorder(delay=0.3)
    batcher = MicroBatcher(recorder, window_ms=0, max_images=1, queue_size=2, workers=1)

    async def flood() -> list[object]:
        tasks = [asyncio.create_task(batcher.submit(DEFAULT, _image(1))) for _ in range(8)]
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    start = time.perf_counter()
    outcomes = asyncio.run(_with_batcher(batcher, flood()))  # type: ignore[arg-type]
    overloaded = [o for o in outcomes if isinstance(o, OverloadedError)]
    assert overloaded, outcomes
    assert overloaded[0].headers["Retry-After"] == "1"
    assert sum(isinstance(o, ImageResult) for o in outcomes) >= 2
    assert time.perf_counter() - start < 8 * 0.3  # the refused ones did not wait


class SlowPool(ModelPool):
    """The real pool with a slow run, to fill the queue through HTTP."""

    def run(self, options: AnalysisOptions, images: Sequence[DecodedImage]) -> list[ImageResult]:
        time.sleep(0.25)
        return super().run(options, images)


def test_overload_answers_503_with_retry_after(
    model_pool: ModelPool, astronaut_jpeg: bytes
) -> None:
    from agelens.server.app import create_app
    from agelens.server.settings import Settings

    pool = SlowPool("blazeface-full", "ensemble", threads=1, max_pixels=10**8)
    pool._detectors = dict(model_pool._detectors)  # share the loaded models
    pool._estimators = dict(model_pool._estimators)
    pool.load_defaults()
    app = create_app(
        Settings(queue_size=2, batch_max_images=1, batch_window_ms=0, rate_limit_per_minute=0),
        pool=pool,
    )
    payload = {"image_base64": base64.b64encode(astronaut_jpeg).decode()}

    async def flood() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                requests = [client.post("/v1/analyze", json=payload) for _ in range(10)]
                return list(await asyncio.gather(*requests))

    responses = asyncio.run(flood())
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses
    assert 503 in statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.headers["retry-after"] == "1"
    assert set(statuses) <= {200, 503}


@pytest.mark.parametrize(("detector", "estimator"), [("yolo", "ensemble"), ("blazeface-full", "x")])
def test_pool_refuses_unknown_names(model_pool: ModelPool, detector: str, estimator: str) -> None:
    from agelens.server.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="unknown"):
        model_pool.analyzer(detector, estimator)
