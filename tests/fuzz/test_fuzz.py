"""Malformed images (tests/fuzz/malformed.py) through the library and the HTTP API: every
input gives a result or a typed error, never another exception, an HTTP 500 or a hang.
benchmarks/bench_fuzz.py runs the same generator over >= 10,000 inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from agelens.errors import AgelensError
from agelens.imaging import load_image
from agelens.pipeline import Analyzer
from agelens.server.app import create_app
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings
from tests.conftest import SHARED_DATA
from tests.fuzz.malformed import KINDS, Case, load_photos, malformed_images

SEED = 20261207
LIBRARY_CASES = 250
HTTP_CASES = 100
#: what the API may answer a malformed image with, by status
HTTP_ERROR_CODES = {
    400: {"invalid_request"},
    413: {"image_too_large", "request_too_large"},
    422: {"image_decode_error"},
}


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    photos = load_photos(SHARED_DATA / "samples")  # the astronaut alone when absent
    return list(malformed_images(SEED, LIBRARY_CASES, photos))


def test_the_generator_is_seeded_and_covers_every_kind(cases: list[Case]) -> None:
    photos = load_photos(None)
    first = [c.data for c in malformed_images(SEED, 20, photos)]
    assert first == [c.data for c in malformed_images(SEED, 20, photos)]
    assert first != [c.data for c in malformed_images(SEED + 1, 20, photos)]
    assert Counter(c.kind for c in cases).keys() == KINDS.keys()


def test_the_library_gives_results_or_typed_errors(cases: list[Case], analyzer: Analyzer) -> None:
    outcomes: Counter[str] = Counter()
    for case in cases:
        try:
            image = load_image(case.data, label=f"case {case.index}")
            result = analyzer.analyze(image)
        except AgelensError as error:
            outcomes[type(error).__name__] += 1
            continue
        # anything else propagates and fails the test, naming the case below
        assert result.image_wh == (image.shape[1], image.shape[0]), case.detail
        outcomes["result"] += 1
    assert outcomes["result"] > LIBRARY_CASES // 4
    assert outcomes["ImageDecodeError"] > 0
    assert outcomes["ImageTooLargeError"] > 0


def test_the_library_given_the_bytes_gives_results_or_typed_errors(
    cases: list[Case], analyzer: Analyzer
) -> None:
    """The encoded bytes, as `agelens analyze`, `agelens batch` and the service now pass them:
    large JPEGs are decoded reduced (`Analyzer.decode`) and again, larger, for small faces."""
    outcomes: Counter[str] = Counter()
    for case in cases:
        try:
            result = analyzer.analyze(case.data)
        except AgelensError as error:
            outcomes[type(error).__name__] += 1
            continue
        assert result.image_wh[0] > 0, case.detail
        outcomes["result"] += 1
    assert outcomes["result"] > LIBRARY_CASES // 4
    assert outcomes["ImageDecodeError"] > 0
    assert outcomes["ImageTooLargeError"] > 0


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(rate_limit_per_minute=0, data_dir=tmp_path_factory.mktemp("data"))
    pool = ModelPool(
        settings.detector, settings.estimator, threads=2, max_pixels=settings.max_pixels
    )
    pool.load_defaults()
    with TestClient(create_app(settings, pool=pool)) as client:
        yield client


@pytest.mark.parametrize("return_image", [False, True], ids=["json", "drawn"])
def test_the_api_answers_200_or_a_typed_4xx(
    cases: list[Case], fuzz_client: TestClient, return_image: bool
) -> None:
    statuses: Counter[int] = Counter()
    for case in cases[:HTTP_CASES]:
        response = fuzz_client.post(
            "/v1/analyze",
            params={"return_image": str(return_image).lower()},
            files={"image": (f"case-{case.index}", case.data, "application/octet-stream")},
        )
        statuses[response.status_code] += 1
        body = response.json()
        if response.status_code == 200:
            assert "faces" in body, case.detail
            continue
        assert response.status_code in HTTP_ERROR_CODES, (case.index, case.detail, body)
        assert body["error"]["code"] in HTTP_ERROR_CODES[response.status_code], case.detail
    assert statuses[200] > 0
    assert statuses[422] > 0
    assert statuses[413] > 0
