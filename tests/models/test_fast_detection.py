"""Fast resizes (detector input, face chips) and the range-switching `blazeface-fast`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from agelens.models.backends import create_detector
from agelens.models.blazeface import BlazeFaceDetector, RangeSwitchingDetector
from agelens.models.crops import shrink


def _smooth(height: int, width: int) -> NDArray[np.uint8]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [128 + 100 * np.sin(xs / 37 + k) * np.cos(ys / 53 - k) for k in range(3)]
    return np.ascontiguousarray(np.stack(channels, axis=-1).astype(np.uint8))


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [
        (1367, 1920, 0.1),
        (1537, 1920, 192 / 1920),
        (400, 400, 0.32),
        (401, 399, 0.48),
        (99, 77, 1.3),
    ],
)
def test_shrink_matches_area_resizing(height: int, width: int, scale: float) -> None:
    image = _smooth(height, width)
    resized, scale_x, scale_y = shrink(image, scale)
    out_h, out_w = resized.shape[:2]
    assert resized.dtype == np.uint8
    assert abs(out_w - width * scale) <= 1
    assert abs(out_h - height * scale) <= 1
    # `scale_x`, `scale_y` map the pixels kept (all but less than one output pixel's worth at
    # the right and bottom) onto the output exactly.
    kept_w, kept_h = round(out_w / scale_x), round(out_h / scale_y)
    assert 0 <= width - kept_w < 1 / scale
    assert 0 <= height - kept_h < 1 / scale
    assert out_w / kept_w == pytest.approx(scale_x)
    assert out_h / kept_h == pytest.approx(scale_y)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    reference = cv2.resize(image[:kept_h, :kept_w], (out_w, out_h), interpolation=interpolation)
    difference = np.abs(resized.astype(np.int16) - reference.astype(np.int16))
    assert difference.mean() < 2.0


def test_shrink_is_deterministic_and_rejects_bad_scales() -> None:
    image = _smooth(300, 500)
    first, *_ = shrink(image, 0.2)
    second, *_ = shrink(image, 0.2)
    assert np.array_equal(first, second)
    with pytest.raises(ValueError, match="positive"):
        shrink(image, 0.0)


def test_fast_detector_routes_by_size_and_matches_full_range_boxes(
    astronaut: NDArray[np.uint8],
) -> None:
    fast = create_detector("blazeface-fast", threads=1)
    assert isinstance(fast, RangeSwitchingDetector)
    assert not fast.short.tiled
    assert not fast.full.tiled
    assert fast.short.views((4000, 3000)) == [(0, 0, 4000, 3000)]
    full = BlazeFaceDetector(fast.full.spec, threads=1)  # tiled, like `blazeface-full`

    # A 512-px portrait goes to the short-range model, with its box mapped onto the
    # full-range convention: close to what the full-range model draws.
    (small,) = fast.detect_many([astronaut])[0]
    (reference,) = full.detect_many([astronaut])[0]
    side = reference.box_xyxy[2] - reference.box_xyxy[0]
    assert small.box_xyxy == pytest.approx(reference.box_xyxy, abs=0.08 * side)
    (raw,) = fast.short.detect_many([astronaut])[0]
    assert small.keypoints == raw.keypoints
    assert small.score == raw.score

    # The same portrait in a 1200-px photo goes to the full-range model, untouched.
    canvas = np.full((900, 1200, 3), 90, np.uint8)
    canvas[200:712, 300:812] = astronaut
    (large,) = fast.detect_many([canvas])[0]
    assert large == fast.full.detect_many([canvas])[0][0]

    # Mixed batches keep the images' order.
    together = fast.detect_many([canvas, astronaut, np.zeros((64, 64, 3), np.uint8)])
    assert together == [(large,), (small,), ()]


def test_crop_resized_pads_black_and_averages_large_faces() -> None:
    from agelens.models.crops import crop_resized

    image = _smooth(400, 400)
    chip = crop_resized(image, (-100, -100, 300, 300), 112)  # top-left quarter is outside
    assert chip.shape == (112, 112, 3)
    assert chip.dtype == np.uint8
    assert chip[:20, :20].max() == 0
    inside = crop_resized(image, (100, 100, 300, 300), 112)
    reference = cv2.resize(image[100:300, 100:300], (112, 112), interpolation=cv2.INTER_AREA)
    assert np.abs(inside.astype(np.int16) - reference.astype(np.int16)).mean() < 2.0
    small = crop_resized(image, (10, 10, 60, 60), 112)  # enlarged bilinearly
    assert small.shape == (112, 112, 3)


def test_crop_resized_of_a_box_inside_the_image_is_its_own_array() -> None:
    """Inside the image the crop reads a view; what comes back never aliases the image."""
    from agelens.models.crops import crop_resized, shrink

    image = _smooth(400, 400)
    exact = crop_resized(image, (100, 50, 212, 162), 112)  # already 112 px: no resize
    np.testing.assert_array_equal(exact, image[50:162, 100:212])
    assert not np.shares_memory(exact, image)
    edge = crop_resized(image, (288, 288, 400, 400), 112)  # touching the right and bottom edges
    np.testing.assert_array_equal(edge, image[288:400, 288:400])
    region = crop_resized(image, (37, 20, 337, 320), 100)  # a strided view, shrunk
    expected, _, _ = shrink(np.ascontiguousarray(image[20:320, 37:337]), 100 / 300)
    np.testing.assert_array_equal(region, expected)


def test_portrait_detector_looks_again_at_128_px_only_where_96_finds_nothing(
    astronaut: NDArray[np.uint8],
) -> None:
    portrait = create_detector("blazeface-portrait", threads=1)
    fast = create_detector("blazeface-fast", threads=1)
    assert isinstance(portrait, RangeSwitchingDetector)
    assert isinstance(fast, RangeSwitchingDetector)
    assert portrait.name == "blazeface-portrait"
    assert portrait.portrait is not None
    assert portrait.portrait.input_size == 96
    assert portrait.short.input_size == 128

    # The portrait (face about a fifth of the side) is found at 96 px, its box mapped onto the
    # full-range convention like blazeface-fast's and drawn in about the same place.
    (found,) = portrait.detect_many([astronaut])[0]
    (raw,) = portrait.portrait.detect_many([astronaut])[0]
    assert found.score == raw.score
    (reference,) = fast.detect_many([astronaut])[0]
    side = reference.box_xyxy[2] - reference.box_xyxy[0]
    assert found.box_xyxy == pytest.approx(reference.box_xyxy, abs=0.08 * side)

    # Shrunk to 250 px in a 400-px image the face is too small for 96 px: the 128-px
    # short-range model looks again and finds it, exactly as blazeface-fast does.
    canvas = np.full((400, 400, 3), 90, np.uint8)
    canvas[:250, :250] = cv2.resize(astronaut, (250, 250), interpolation=cv2.INTER_AREA)
    assert portrait.portrait.detect_many([canvas]) == [()]
    (again,) = portrait.detect_many([canvas])[0]
    assert again == fast.detect_many([canvas])[0][0]

    # Large photos go to the full-range model; blank images stay empty; order is kept.
    large = np.full((900, 1200, 3), 90, np.uint8)
    large[200:712, 300:812] = astronaut
    blank = np.zeros((64, 64, 3), np.uint8)
    together = portrait.detect_many([large, canvas, blank, astronaut])
    assert together == [fast.detect_many([large])[0], (again,), (), (found,)]


def test_short_range_mapping_must_be_fitted_for_the_input_size() -> None:
    from agelens.models.registry import get_spec

    short = get_spec("blazeface-short")
    unfitted = BlazeFaceDetector(short, threads=1, tiled=False, input_size=80)
    full = BlazeFaceDetector(get_spec("blazeface-full"), threads=1, tiled=False)
    with pytest.raises(ValueError, match="no box mapping"):
        RangeSwitchingDetector(unfitted, full)


@pytest.mark.parametrize(
    "name", ["blazeface-full", "blazeface-auto", "blazeface-fast", "blazeface-portrait"]
)
def test_with_thresholds_shares_the_networks_and_leaves_the_original_alone(
    name: str, astronaut: NDArray[np.uint8]
) -> None:
    detector = create_detector(name, 1)
    (default,) = detector.detect_many([astronaut])
    lenient = detector.with_thresholds(score_threshold=0.05)  # type: ignore[attr-defined]
    (found,) = lenient.detect_many([astronaut])
    assert len(default) == 1
    assert len(found) > len(default)
    assert min(d.score for d in found) < 0.5
    assert detector.detect_many([astronaut]) == [default]
    same = detector.with_thresholds()  # type: ignore[attr-defined]
    assert same.detect_many([astronaut]) == [default]
    assert getattr(same, "full_first", None) == getattr(detector, "full_first", None)
    sessions = [
        d._session
        for d in (lenient, getattr(lenient, "short", None), getattr(lenient, "full", None))
        if isinstance(d, BlazeFaceDetector)
    ]
    originals = [
        d._session
        for d in (detector, getattr(detector, "short", None), getattr(detector, "full", None))
        if isinstance(d, BlazeFaceDetector)
    ]
    assert sessions
    assert all(a is b for a, b in zip(sessions, originals, strict=True))


def test_auto_detector_is_full_range_with_short_range_where_it_finds_nothing(
    astronaut: NDArray[np.uint8],
) -> None:
    auto = create_detector("blazeface-auto", threads=1)
    full = create_detector("blazeface-full", threads=1)
    assert isinstance(auto, RangeSwitchingDetector)
    assert auto.name == "blazeface-auto"
    assert auto.full_first
    assert not auto.short.tiled
    assert auto.full.tiled  # large photos are searched tile by tile, as blazeface-full does

    # Where the full-range model finds a face, small image or large, it is what
    # blazeface-full finds, box for box; blank images stay empty; order is kept.
    canvas = np.full((900, 1200, 3), 90, np.uint8)
    canvas[200:712, 300:812] = astronaut
    blank = np.zeros((64, 64, 3), np.uint8)
    images = [canvas, blank, astronaut]
    assert auto.detect_many(images) == full.detect_many(images)
    assert auto.max_reduction((512, 512)) == 2  # the full-range model's 192-px input
    assert auto.max_reduction((1200, 900)) == full.max_reduction((1200, 900))  # type: ignore[attr-defined]


def test_auto_detector_finds_with_short_range_what_full_range_misses(utkface_dir: Path) -> None:
    """A padded UTKFace `test` face the full-range model misses (one of its 31 there)."""
    from agelens.evaluate import pad_image
    from agelens.imaging import load_image

    auto = create_detector("blazeface-auto", threads=1)
    fast = create_detector("blazeface-fast", threads=1)
    assert isinstance(auto, RangeSwitchingDetector)
    image = pad_image(load_image(utkface_dir / "images/21_1_0_20170116215627769.jpg.chip.jpg"), 0.5)
    assert auto.full.detect_many([image]) == [()]
    (found,) = auto.detect_many([image])[0]
    # the short-range box, mapped onto the full-range convention as blazeface-fast maps it
    assert found == fast.detect_many([image])[0][0]
    height, width = image.shape[:2]
    assert 0.25 * width < (found.box_xyxy[0] + found.box_xyxy[2]) / 2 < 0.75 * width
    assert 0.25 * height < (found.box_xyxy[1] + found.box_xyxy[3]) / 2 < 0.75 * height


@pytest.mark.parametrize("name", ["blazeface-full", "blazeface-auto", "blazeface-fast"])
def test_detectors_find_the_same_faces_in_a_jpeg_decoded_reduced(
    name: str, astronaut: NDArray[np.uint8]
) -> None:
    from agelens.imaging import encode_jpeg, load_image, load_image_reduced

    detector = create_detector(name, threads=1)
    assert isinstance(detector, RangeSwitchingDetector | BlazeFaceDetector)
    # 2000x1600: tiles of 800 px, where the small portrait's face (about 100 px) is found
    canvas = np.full((1600, 2000, 3), 90, np.uint8)
    canvas[100:612, 1300:1812] = astronaut
    portrait = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    canvas[400:1424, 100:1124] = portrait
    data = encode_jpeg(canvas, quality=95)
    reduction = detector.max_reduction((2000, 1600))
    assert reduction >= 2
    reduced = load_image_reduced(data, lambda _: reduction)
    assert reduced.scale > 1
    at_full_size = detector.detect_many([load_image(data)])[0]
    found = detector.detect_reduced([reduced])[0]
    # blazeface-fast looks at the whole image only: the small portrait is beyond it
    assert len(found) == len(at_full_size) == (1 if name == "blazeface-fast" else 2)
    for face, reference in zip(
        sorted(found, key=lambda f: f.box_xyxy[0]),
        sorted(at_full_size, key=lambda f: f.box_xyxy[0]),
        strict=True,
    ):
        side = reference.box_xyxy[2] - reference.box_xyxy[0]
        assert face.box_xyxy == pytest.approx(reference.box_xyxy, abs=0.05 * side)
        for point, expected in zip(face.keypoints, reference.keypoints, strict=True):
            assert point == pytest.approx(expected, abs=0.05 * side)
    # min_face is in full-image pixels
    smaller = min(f.box_xyxy[2] - f.box_xyxy[0] for f in found)
    assert len(detector.detect_reduced([reduced], min_face=smaller + 1)[0]) == len(found) - 1
