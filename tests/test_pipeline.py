"""The Analyzer end to end, on real faces with the real default models."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

import agelens
from agelens.imaging import load_image
from agelens.pipeline import Analyzer, pinning_initializer, worker_cores
from agelens.types import ImageResult
from tests.conftest import DecodeSpy


def test_astronaut_is_one_woman_about_42(analyzer: Analyzer, astronaut: NDArray[np.uint8]) -> None:
    result = analyzer.analyze(astronaut)
    assert len(result.faces) == 1
    face = result.faces[0]
    assert face.gender == "F"
    assert 32 <= face.age_years <= 52
    low, high = face.age_interval
    assert low <= face.age_years <= high
    assert 0.5 <= face.gender_probability <= 1.0
    # The face is in the upper middle of the portrait.
    x1, y1, x2, y2 = face.box_xyxy
    assert 150 < (x1 + x2) / 2 < 300
    assert 50 < (y1 + y2) / 2 < 200
    assert result.image_wh == (512, 512)


@pytest.mark.parametrize(
    ("name", "count", "gender"),
    [("sample1.jpg", 3, "F"), ("sample4.jpg", 4, "F"), ("man_beard.jpg", 1, "M")],
)
def test_samples_faces_and_gender(
    analyzer: Analyzer, samples_dir: Path, name: str, count: int, gender: str
) -> None:
    result = analyzer.analyze(samples_dir / name)
    assert len(result.faces) == count
    assert [f.gender for f in result.faces] == [gender] * count
    assert all(18 <= f.age_years <= 70 for f in result.faces)


def test_messi_player_is_found(analyzer: Analyzer, samples_dir: Path) -> None:
    result = analyzer.analyze(samples_dir / "messi5.jpg")
    centres = [
        ((f.box_xyxy[0] + f.box_xyxy[2]) / 2, (f.box_xyxy[1] + f.box_xyxy[3]) / 2)
        for f in result.faces
    ]
    assert any(205 < x < 270 and 80 < y < 140 for x, y in centres)
    assert all(
        f.gender == "M" for f in result.faces if 205 < (f.box_xyxy[0] + f.box_xyxy[2]) / 2 < 270
    )


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((480, 640, 3), np.uint8),
        np.full((300, 300, 3), 255, np.uint8),
        np.full((4000, 3000, 3), 128, np.uint8),
        np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8),
    ],
    ids=["black", "white", "grey-4000px", "noise"],
)
def test_no_face_is_invented(analyzer: Analyzer, image: NDArray[np.uint8]) -> None:
    result = analyzer.analyze(image)
    assert result.faces == ()
    assert result.image_wh == (image.shape[1], image.shape[0])


def _portrait(astronaut: NDArray[np.uint8], side: int) -> NDArray[np.uint8]:
    """Head and shoulders from the astronaut portrait, resized to `side` pixels square."""
    return np.asarray(Image.fromarray(astronaut[0:330, 60:390]).resize((side, side)))


@pytest.mark.parametrize(
    ("canvas_wh", "side"),
    [((4000, 3000), 1000), ((6000, 800), 700), ((800, 6000), 700), ((4000, 4000), 800)],
    ids=["4000x3000", "panorama", "tall-strip", "4000-square"],
)
def test_faces_at_the_edges_of_large_photos(
    analyzer: Analyzer, astronaut: NDArray[np.uint8], canvas_wh: tuple[int, int], side: int
) -> None:
    """Portraits pasted against the ends or corners of big photos are all found, in place."""
    face = _portrait(astronaut, side)
    width, height = canvas_wh
    canvas = np.full((height, width, 3), 90, np.uint8)
    corners = [(0, 0), (width - side, 0), (0, height - side), (width - side, height - side)]
    corners = [c for c in dict.fromkeys(corners) if c == (0, 0) or max(c) >= side]
    if width < 2 * side or height < 2 * side:  # a strip: one portrait at each end
        corners = [(0, 0), (width - side, height - side)]
    for x, y in corners:
        canvas[y : y + side, x : x + side] = face
    result = analyzer.analyze(canvas)
    assert len(result.faces) == len(corners)
    for x, y in corners:
        # The face sits in the portrait where it sits in the original: centre ~(166, 123)/330.
        centre = (x + side * 166 / 330, y + side * 123 / 330)
        assert any(
            abs((f.box_xyxy[0] + f.box_xyxy[2]) / 2 - centre[0]) < side / 6
            and abs((f.box_xyxy[1] + f.box_xyxy[3]) / 2 - centre[1]) < side / 6
            for f in result.faces
        ), (x, y, result.faces)
    assert all(f.gender == "F" for f in result.faces)


def test_batch_equals_single_runs(
    analyzer: Analyzer, astronaut: NDArray[np.uint8], samples_dir: Path
) -> None:
    sources: list[object] = [
        astronaut,
        samples_dir / "sample1.jpg",
        np.zeros((100, 100, 3), np.uint8),
    ]
    together = analyzer.analyze_many(sources)  # type: ignore[arg-type]
    alone = [analyzer.analyze(s) for s in sources]  # type: ignore[arg-type]
    for a, b in zip(together, alone, strict=True):
        assert len(a.faces) == len(b.faces)
        for fa, fb in zip(a.faces, b.faces, strict=True):
            assert fa.age_years == pytest.approx(fb.age_years, abs=1e-3)
            assert fa.gender_probability == pytest.approx(fb.gender_probability, abs=1e-4)
            assert fa.box_xyxy == pytest.approx(fb.box_xyxy, abs=1e-3)


def test_workers_give_the_same_results(analyzer: Analyzer, samples_dir: Path) -> None:
    images = [load_image(p) for p in sorted(samples_dir.glob("sample*.jpg"))]
    parallel = Analyzer(threads=1, workers=2)
    try:
        together = parallel.analyze_arrays(images)
    finally:
        parallel.close()
    alone = analyzer.analyze_arrays(images)
    assert [len(r.faces) for r in together] == [len(r.faces) for r in alone]
    for a, b in zip(together, alone, strict=True):
        for fa, fb in zip(a.faces, b.faces, strict=True):
            assert fa.age_years == pytest.approx(fb.age_years, abs=1e-3)
            assert fa.gender == fb.gender


def test_inputs_of_every_kind_agree(
    analyzer: Analyzer, astronaut: NDArray[np.uint8], tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, format="PNG")
    path = tmp_path / "astronaut.png"
    path.write_bytes(buffer.getvalue())
    results = [
        analyzer.analyze(astronaut),
        analyzer.analyze(buffer.getvalue()),
        analyzer.analyze(str(path)),
        analyzer.analyze(path),
        analyzer.analyze(Image.fromarray(astronaut)),
    ]
    ages = [r.faces[0].age_years for r in results]
    assert max(ages) - min(ages) < 1e-3


def test_exif_rotation_reports_boxes_upright(
    analyzer: Analyzer, astronaut: NDArray[np.uint8]
) -> None:
    """A portrait stored sideways with EXIF orientation 6 is analysed upright."""
    stored = Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90)  # what a camera stores
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    result = analyzer.analyze(buffer.getvalue())
    assert len(result.faces) == 1
    upright = analyzer.analyze(astronaut).faces[0]
    assert result.faces[0].box_xyxy == pytest.approx(upright.box_xyxy, abs=12)


def test_min_face_and_max_faces(analyzer: Analyzer, samples_dir: Path) -> None:
    everything = analyzer.analyze(samples_dir / "sample4.jpg")
    assert len(analyzer.analyze(samples_dir / "sample4.jpg", max_faces=2).faces) == 2
    assert analyzer.analyze(samples_dir / "sample4.jpg", min_face=5000).faces == ()
    top = analyzer.analyze(samples_dir / "sample4.jpg", max_faces=1).faces[0]
    assert top.detection_score == max(f.detection_score for f in everything.faces)


def test_result_is_frozen_and_serialisable(
    analyzer: Analyzer, astronaut: NDArray[np.uint8]
) -> None:
    result = analyzer.analyze(astronaut)
    with pytest.raises(AttributeError):
        result.faces = ()  # type: ignore[misc]
    payload = result.to_dict()
    assert list(payload) == ["source", "image_wh", "faces", "timings_ms", "models"]
    assert set(payload["faces"][0]) == {
        "box_xyxy",
        "detection_score",
        "keypoints",
        "age_years",
        "age_interval",
        "gender",
        "gender_probability",
    }
    assert len(payload["faces"][0]["keypoints"]) == 6
    assert set(payload["timings_ms"]) >= {"decode", "detect", "align", "estimate"}


def test_module_level_analyze(astronaut: NDArray[np.uint8]) -> None:
    result = agelens.analyze(astronaut)
    assert isinstance(result, ImageResult)
    assert len(result.faces) == 1


@pytest.mark.parametrize(
    ("allowed", "workers", "expected"),
    [
        ([0, 1], 2, [{0}, {1}]),
        ([5, 4, 7, 6], 2, [{4, 5}, {6, 7}]),
        ([0, 1, 2], 2, [{0}, {1}]),
        ([0, 1], 1, [{0, 1}]),
        ([0], 2, None),  # fewer cores than workers: left to the scheduler
    ],
)
def test_worker_cores(allowed: list[int], workers: int, expected: list[set[int]] | None) -> None:
    assert worker_cores(allowed, workers) == expected


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs Linux and at least two cores",
)
def test_worker_threads_are_pinned_one_core_each() -> None:
    pin = pinning_initializer(2)
    assert pin is not None
    seen: list[set[int]] = []

    def worker() -> None:
        pin()
        seen.append(os.sched_getaffinity(0))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shares = worker_cores(sorted(os.sched_getaffinity(0)), 2)
    assert shares is not None
    assert sorted(seen, key=min) == [set(share) for share in shares]
    assert len(os.sched_getaffinity(0)) >= 2  # the calling thread is not pinned
    assert pinning_initializer(len(os.sched_getaffinity(0)) + 1) is None


def _assert_same_faces(got: ImageResult, expected: ImageResult, max_age_gap: float) -> None:
    assert got.image_wh == expected.image_wh
    assert len(got.faces) == len(expected.faces)
    by_left = sorted(got.faces, key=lambda f: f.box_xyxy[0])
    for face, reference in zip(
        by_left, sorted(expected.faces, key=lambda f: f.box_xyxy[0]), strict=True
    ):
        side = reference.box_xyxy[2] - reference.box_xyxy[0]
        assert face.box_xyxy == pytest.approx(reference.box_xyxy, abs=0.08 * side)
        assert face.age_years == pytest.approx(reference.age_years, abs=max_age_gap)
        assert face.gender == reference.gender


def test_large_jpeg_is_detected_reduced_and_reported_in_full_image_pixels(
    analyzer: Analyzer, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = DecodeSpy(monkeypatch)
    path = samples_dir / "sample4.jpg"
    from_file = analyzer.analyze(path)
    assert spy.scales[0] > 1  # decoded reduced for the detector
    assert from_file.image_wh == (1920, 1448)
    assert from_file.timings_ms["decode"] > 0
    # The same faces as from the whole decoded array; ages move with the boxes (a pixel or
    # two), by at most a few years on these faces.
    _assert_same_faces(from_file, analyzer.analyze_arrays([load_image(path)])[0], 4.0)


def test_small_faces_in_a_reduced_jpeg_are_cut_from_a_sharper_decode(
    analyzer: Analyzer, astronaut: NDArray[np.uint8], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4000x3000 photo stored sideways (EXIF orientation 6) with a 1000-px portrait: found
    at 1/4 or 1/8, its face (about 300 px) cut from the full-size decode, boxes upright."""
    upright = np.full((3000, 4000, 3), 90, np.uint8)
    upright[1200:2200, 2500:3500] = _portrait(astronaut, 1000)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=92)
    spy = DecodeSpy(monkeypatch)
    result = analyzer.analyze(buffer.getvalue())
    assert spy.scales[0] >= 4
    assert spy.scales[1:] == [1]
    _assert_same_faces(result, analyzer.analyze(load_image(buffer.getvalue())), 1.0)


def test_small_jpegs_and_arrays_are_decoded_whole(
    analyzer: Analyzer, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = DecodeSpy(monkeypatch)
    path = samples_dir / "man_beard.jpg"  # 320 px
    from_file = analyzer.analyze(path)
    assert spy.scales == [1]
    from_array = analyzer.analyze(load_image(path))
    assert spy.scales == [1]
    assert from_file.faces == from_array.faces
