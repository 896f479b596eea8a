"""Pure geometry: anchors, decoding, areas, IoU, suppression, letterboxing, crops, alignment."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from agelens.geometry import (
    box_area,
    clip_boxes,
    crop_transform,
    decode_blazeface,
    detection_views,
    generate_anchors,
    iou,
    letterbox_transform,
    similarity_transform,
    square_box,
    weighted_nms,
)

FloatArray = npt.NDArray[np.float32]


def f32(values: object) -> FloatArray:
    return np.asarray(values, dtype=np.float32)


def apply_affine(matrix: FloatArray, points: FloatArray) -> FloatArray:
    """Map `(K, 2)` points through a 2x3 affine matrix."""
    points64 = np.asarray(points, dtype=np.float64)
    return points64 @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


# --- generate_anchors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_hw", "strides", "per_cell", "count", "first", "last"),
    [
        pytest.param(
            (192, 192), (4,), (1,), 2304, (0.5 / 48, 0.5 / 48), (47.5 / 48, 47.5 / 48), id="full"
        ),
        pytest.param(
            (128, 128), (8, 16), (2, 6), 896, (1 / 32, 1 / 32), (7.5 / 8, 7.5 / 8), id="short"
        ),
        # 100 px at stride 16 is a 7-cell map (ceil), as MediaPipe sizes it
        pytest.param(
            (100, 100), (16,), (1,), 49, (0.5 / 7, 0.5 / 7), (6.5 / 7, 6.5 / 7), id="ceil"
        ),
        pytest.param((64, 128), (16,), (1,), 32, (0.5 / 8, 0.5 / 4), (7.5 / 8, 3.5 / 4), id="wide"),
        pytest.param((128, 128), (), (), 0, None, None, id="empty"),
    ],
)
def test_generate_anchors(
    input_hw: tuple[int, int],
    strides: tuple[int, ...],
    per_cell: tuple[int, ...],
    count: int,
    first: tuple[float, float] | None,
    last: tuple[float, float] | None,
) -> None:
    anchors = generate_anchors(input_hw, strides, per_cell)
    assert anchors.shape == (count, 2)
    assert anchors.dtype == np.float32
    if count:
        np.testing.assert_allclose(anchors[0], first, atol=1e-6)
        np.testing.assert_allclose(anchors[-1], last, atol=1e-6)
        assert anchors.min() > 0
        assert anchors.max() < 1


def test_generate_anchors_order_is_row_major_with_repeats() -> None:
    anchors = generate_anchors((64, 128), (16,), (2,))
    # two anchors per cell, then the next cell to the right (x changes first)
    np.testing.assert_allclose(anchors[:4], [[1 / 16, 1 / 8]] * 2 + [[3 / 16, 1 / 8]] * 2)
    # the second row starts after 8 cells of 2 anchors
    np.testing.assert_allclose(anchors[16], [1 / 16, 3 / 8])


@pytest.mark.parametrize(
    ("strides", "per_cell"),
    [((8, 16), (2,)), ((8,), (2, 6)), ((), (1,))],
    ids=["fewer-counts", "fewer-strides", "empty-strides"],
)
def test_generate_anchors_rejects_mismatched_lengths(
    strides: tuple[int, ...], per_cell: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="same length"):
        generate_anchors((128, 128), strides, per_cell)


# --- decode_blazeface -------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 5], ids=["empty", "one", "five"])
def test_decode_zero_regressors_gives_empty_boxes_at_anchor_centres(count: int) -> None:
    anchors = generate_anchors((128, 128), (8, 16), (2, 6))[:count]
    boxes, keypoints = decode_blazeface(np.zeros((count, 16), np.float32), anchors, (128, 128))
    assert boxes.shape == (count, 4)
    assert keypoints.shape == (count, 6, 2)
    assert boxes.dtype == keypoints.dtype == np.float32
    np.testing.assert_allclose(boxes, np.concatenate([anchors, anchors], axis=1))
    np.testing.assert_allclose(keypoints, np.repeat(anchors[:, None, :], 6, axis=1))
    np.testing.assert_array_equal(box_area(boxes), np.zeros(count))


@pytest.mark.parametrize(
    ("input_hw", "raw_head", "box", "first_keypoint"),
    [
        pytest.param(
            (128, 128),
            [12.8, -6.4, 25.6, 12.8, 64.0, 0.0],
            [0.5, 0.35, 0.7, 0.45],
            [1.0, 0.45],
            id="square",
        ),
        # x offsets are divided by the width, y offsets by the height
        pytest.param(
            (100, 200),
            [20.0, 10.0, 40.0, 20.0, 0.0, -10.0],
            [0.5, 0.45, 0.7, 0.65],
            [0.5, 0.35],
            id="non-square",
        ),
    ],
)
def test_decode_known_offset(
    input_hw: tuple[int, int],
    raw_head: list[float],
    box: list[float],
    first_keypoint: list[float],
) -> None:
    anchors = f32([[0.5, 0.45]])
    raw = np.zeros((1, 16), np.float32)
    raw[0, : len(raw_head)] = raw_head
    boxes, keypoints = decode_blazeface(raw, anchors, input_hw)
    np.testing.assert_allclose(boxes[0], box, atol=1e-6)
    np.testing.assert_allclose(keypoints[0, 0], first_keypoint, atol=1e-6)
    np.testing.assert_allclose(keypoints[0, 1:], np.repeat(anchors, 5, axis=0), atol=1e-6)


# --- box_area ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        pytest.param([0, 0, 1, 1], 1.0, id="unit"),
        pytest.param([[0, 0, 2, 3], [1, 1, 4, 2]], [6.0, 3.0], id="batch"),
        pytest.param([2, 2, 2, 5], 0.0, id="zero-width"),
        pytest.param([3, 3, 1, 1], 0.0, id="inverted"),
        pytest.param(np.zeros((0, 4)), np.zeros((0,)), id="empty"),
        pytest.param(np.ones((2, 3, 4)), np.zeros((2, 3)), id="nested-degenerate"),
    ],
)
def test_box_area(boxes: object, expected: object) -> None:
    area = box_area(f32(boxes))
    assert area.dtype == np.float32
    np.testing.assert_allclose(area, f32(expected))


# --- iou --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "boxes", "expected"),
    [
        pytest.param([0, 0, 2, 2], [[0, 0, 2, 2]], [1.0], id="identical"),
        pytest.param([0, 0, 2, 2], [[3, 3, 5, 5]], [0.0], id="disjoint"),
        pytest.param([0, 0, 2, 2], [[2, 0, 4, 2]], [0.0], id="touching"),
        # shifted by half its width: intersection 2, union 6
        pytest.param([0, 0, 2, 2], [[1, 0, 3, 2]], [1 / 3], id="half-shifted"),
        pytest.param([0, 0, 2, 2], [[0, 0, 1, 2]], [0.5], id="contains-half"),
        pytest.param(
            [0, 0, 2, 2], [[0, 0, 2, 2], [5, 5, 6, 6], [1, 0, 3, 2]], [1.0, 0.0, 1 / 3], id="many"
        ),
        pytest.param([1, 1, 1, 1], [[1, 1, 1, 1]], [0.0], id="both-degenerate"),
        pytest.param([0, 0, 2, 2], [[1, 1, 1, 1]], [0.0], id="degenerate-inside"),
        pytest.param([0, 0, 2, 2], np.zeros((0, 4)), np.zeros((0,)), id="empty"),
    ],
)
def test_iou(box: object, boxes: object, expected: object) -> None:
    overlaps = iou(f32(box), f32(boxes))
    assert overlaps.dtype == np.float32
    assert overlaps.shape == (len(f32(boxes)),)
    np.testing.assert_allclose(overlaps, f32(expected), atol=1e-6)


# --- weighted_nms -----------------------------------------------------------------------------


def keypoints_at(boxes: FloatArray) -> FloatArray:
    """One keypoint set per box: its six keypoints all at the box's top-left corner."""
    return np.repeat(boxes[:, None, :2], 6, axis=1).astype(np.float32)


@pytest.mark.parametrize(
    ("boxes", "scores", "threshold", "expected_boxes", "expected_scores"),
    [
        pytest.param(np.zeros((0, 4)), np.zeros((0,)), 0.3, np.zeros((0, 4)), [], id="empty"),
        pytest.param([[0, 0, 10, 10]], [0.7], 0.3, [[0, 0, 10, 10]], [0.7], id="single"),
        # IoU 81/119: merged into the score-weighted mean, the best score kept
        pytest.param(
            [[1, 1, 11, 11], [0, 0, 10, 10]],
            [0.25, 0.75],
            0.3,
            [[0.25, 0.25, 10.25, 10.25]],
            [0.75],
            id="overlapping-merge",
        ),
        pytest.param(
            [[0, 0, 10, 10], [50, 50, 60, 60]],
            [0.6, 0.9],
            0.3,
            [[50, 50, 60, 60], [0, 0, 10, 10]],
            [0.9, 0.6],
            id="far-apart-best-first",
        ),
        # IoU exactly 0.5: merged only when it is strictly above the threshold
        pytest.param(
            [[0, 0, 2, 2], [0, 0, 1, 2]],
            [0.8, 0.2],
            0.5,
            [[0, 0, 2, 2], [0, 0, 1, 2]],
            [0.8, 0.2],
            id="at-threshold-kept-apart",
        ),
        pytest.param(
            [[0, 0, 2, 2], [0, 0, 1, 2]],
            [0.8, 0.2],
            0.49,
            [[0, 0, 1.8, 2]],
            [0.8],
            id="below-threshold-merged",
        ),
        # a zero-area box overlaps nothing, not even itself, yet is still returned once
        pytest.param(
            [[5, 5, 5, 5], [0, 0, 2, 2]],
            [0.9, 0.5],
            0.3,
            [[5, 5, 5, 5], [0, 0, 2, 2]],
            [0.9, 0.5],
            id="degenerate",
        ),
    ],
)
def test_weighted_nms(
    boxes: object,
    scores: object,
    threshold: float,
    expected_boxes: object,
    expected_scores: object,
) -> None:
    boxes_in = f32(boxes).reshape(-1, 4)
    scores_in = f32(scores)
    kept_boxes, kept_scores, kept_points = weighted_nms(
        boxes_in, scores_in, keypoints_at(boxes_in), iou_threshold=threshold
    )
    expected = f32(expected_boxes).reshape(-1, 4)
    assert kept_boxes.shape == expected.shape
    assert kept_scores.shape == (len(expected),)
    assert kept_points.shape == (len(expected), 6, 2)
    assert kept_boxes.dtype == kept_scores.dtype == kept_points.dtype == np.float32
    np.testing.assert_allclose(kept_boxes, expected, atol=1e-5)
    np.testing.assert_allclose(kept_scores, f32(expected_scores), atol=1e-6)
    # keypoints are averaged with the same weights as the boxes
    np.testing.assert_allclose(kept_points, keypoints_at(expected), atol=1e-5)


def test_weighted_nms_empty_keeps_keypoint_shape() -> None:
    boxes, scores, points = weighted_nms(
        np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 3, 2), np.float32)
    )
    assert (boxes.shape, scores.shape, points.shape) == ((0, 4), (0,), (0, 3, 2))


# --- letterbox_transform ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_hw", "target", "expected"),
    [
        pytest.param((100, 100), 128, (1.28, 0.0, 0.0), id="square"),
        pytest.param((100, 200), 128, (0.64, 0.0, 32.0), id="wide"),
        pytest.param((200, 100), 128, (0.64, 32.0, 0.0), id="tall"),
        pytest.param((1, 1), 192, (192.0, 0.0, 0.0), id="one-pixel"),
    ],
)
def test_letterbox_transform(
    image_hw: tuple[int, int], target: int, expected: tuple[float, float, float]
) -> None:
    assert letterbox_transform(image_hw, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    "image_hw", [(0, 0), (0, 100), (100, 0), (-5, 10)], ids=["empty", "no-rows", "no-cols", "neg"]
)
def test_letterbox_transform_rejects_invalid_size(image_hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        letterbox_transform(image_hw, 128)


@pytest.mark.parametrize(
    "image_hw",
    [(100, 100), (480, 640), (640, 480), (1, 4000), (4000, 1), (3, 7)],
    ids=["square", "landscape", "portrait", "very-wide", "very-tall", "odd"],
)
@pytest.mark.parametrize("target", [128, 192])
def test_letterbox_keeps_whole_image_inside_the_square(
    image_hw: tuple[int, int], target: int
) -> None:
    height, width = image_hw
    scale, pad_x, pad_y = letterbox_transform(image_hw, target)
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    mapped = corners * scale + np.array([pad_x, pad_y])
    assert mapped.min() >= -1e-9
    assert mapped.max() <= target + 1e-9
    # centred, and the longer side fills the square
    assert mapped.mean(axis=0) == pytest.approx([target / 2, target / 2])
    assert max(width, height) * scale == pytest.approx(target)


# --- square_box -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "factor", "expected"),
    [
        pytest.param([0, 0, 4, 2], 1.0, [0, -1, 4, 3], id="wide"),
        pytest.param([0, 0, 2, 4], 1.0, [-1, 0, 3, 4], id="tall"),
        pytest.param([0, 0, 4, 2], 1.5, [-1, -2, 5, 4], id="enlarged"),
        pytest.param([1, 1, 3, 3], 0.5, [1.5, 1.5, 2.5, 2.5], id="shrunk"),
        pytest.param([3, 3, 3, 3], 2.0, [3, 3, 3, 3], id="degenerate"),
    ],
)
def test_square_box(box: list[float], factor: float, expected: list[float]) -> None:
    for given in (box, f32(box), tuple(box)):
        square = square_box(given, factor)
        assert square.dtype == np.float32
        np.testing.assert_allclose(square, expected, atol=1e-6)
        assert square[2] - square[0] == pytest.approx(square[3] - square[1])


@pytest.mark.parametrize(
    ("box", "factor", "shift_y", "expected"),
    [
        pytest.param([0, 0, 4, 2], 1.0, 0.0, [0, -1, 4, 3], id="no-shift"),
        pytest.param([0, 0, 4, 2], 1.0, 0.5, [0, 0, 4, 4], id="half-height-down"),
        pytest.param([0, 0, 2, 4], 1.5, -0.25, [-2, -2, 4, 4], id="up-and-enlarged"),
        pytest.param([3, 3, 3, 3], 2.0, 1.0, [3, 3, 3, 3], id="degenerate"),
    ],
)
def test_square_box_shift(
    box: list[float], factor: float, shift_y: float, expected: list[float]
) -> None:
    """The shift moves the centre by a share of the box's height, then the square is cut."""
    np.testing.assert_allclose(square_box(box, factor, shift_y), expected, atol=1e-6)


# --- crop_transform ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "size"),
    [
        pytest.param([10, 20, 30, 60], 64, id="tall"),
        pytest.param([0, 0, 112, 112], 112, id="identity"),
        pytest.param([-5.5, 3.25, 20.5, 9.75], 32, id="fractional"),
    ],
)
def test_crop_transform_maps_box_corners_to_chip_corners(box: list[float], size: int) -> None:
    matrix = crop_transform(box, size)
    assert matrix.shape == (2, 3)
    assert matrix.dtype == np.float32
    x1, y1, x2, y2 = box
    corners = apply_affine(matrix, f32([[x1, y1], [x2, y2], [(x1 + x2) / 2, (y1 + y2) / 2]]))
    np.testing.assert_allclose(corners, [[0, 0], [size, size], [size / 2, size / 2]], atol=1e-3)


@pytest.mark.parametrize(
    "box", [[5, 5, 5, 5], [5, 5, 5, 9], [7, 1, 2, 8]], ids=["point", "zero-width", "inverted"]
)
def test_crop_transform_degenerate_box_stays_finite(box: list[float]) -> None:
    assert np.isfinite(crop_transform(box, 64)).all()


# --- similarity_transform ---------------------------------------------------------------------

# The five ArcFace reference points (eyes, nose tip, mouth corners) of a 112 px chip.
FIVE_POINTS = f32(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> FloatArray:
    angle = math.radians(angle_deg)
    rotation = scale * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    return np.hstack([rotation, np.array(shift)[:, None]]).astype(np.float32)


@pytest.mark.parametrize(
    ("angle_deg", "scale", "shift", "points"),
    [
        pytest.param(0.0, 1.0, (0.0, 0.0), FIVE_POINTS, id="identity"),
        pytest.param(30.0, 1.7, (5.0, -3.0), FIVE_POINTS, id="rotate-scale-shift"),
        pytest.param(-135.0, 0.4, (-20.0, 80.0), FIVE_POINTS, id="large-rotation"),
        pytest.param(90.0, 2.0, (1.0, 2.0), FIVE_POINTS[:2], id="two-points"),
    ],
)
def test_similarity_transform_recovers_known_transform(
    angle_deg: float, scale: float, shift: tuple[float, float], points: FloatArray
) -> None:
    expected = similarity(angle_deg, scale, shift)
    target = apply_affine(expected, points).astype(np.float32)
    matrix = similarity_transform(points, target)
    assert matrix.shape == (2, 3)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, expected, atol=1e-4)


def test_similarity_transform_never_reflects() -> None:
    mirrored = FIVE_POINTS * f32([-1.0, 1.0])
    matrix = similarity_transform(FIVE_POINTS, mirrored).astype(np.float64)
    linear = matrix[:, :2]
    # a rotation times a positive scale: [[a, -b], [b, a]] with a positive determinant
    assert linear[0, 0] == pytest.approx(linear[1, 1], abs=1e-5)
    assert linear[0, 1] == pytest.approx(-linear[1, 0], abs=1e-5)
    assert np.linalg.det(linear) >= 0


@pytest.mark.parametrize(
    ("source", "target"),
    [
        pytest.param(np.zeros((0, 2)), np.zeros((0, 2)), id="empty"),
        pytest.param([[1, 2]], [[3, 4]], id="one-point"),
        pytest.param([[1, 2], [1, 2], [1, 2]], [[0, 0], [1, 1], [2, 0]], id="identical-points"),
        pytest.param(FIVE_POINTS, FIVE_POINTS[:4], id="count-mismatch"),
        pytest.param(np.zeros((3, 3)), np.zeros((3, 3)), id="three-d"),
        pytest.param(np.zeros(4), np.zeros(4), id="flat"),
    ],
)
def test_similarity_transform_rejects_degenerate_input(source: object, target: object) -> None:
    with pytest.raises(ValueError, match="point"):
        similarity_transform(f32(source), f32(target))


# --- clip_boxes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes", "image_wh", "expected"),
    [
        pytest.param([[1, 2, 3, 4]], (10, 10), [[1, 2, 3, 4]], id="inside"),
        pytest.param([[-5, -1, 15, 30]], (10, 20), [[0, 0, 10, 20]], id="beyond-every-side"),
        pytest.param([[12, 25, 14, 30]], (10, 20), [[10, 20, 10, 20]], id="fully-outside"),
        pytest.param(
            [[[-1, -1, 5, 5]], [[5, 5, 11, 21]]],
            (10, 20),
            [[[0, 0, 5, 5]], [[5, 5, 10, 20]]],
            id="nested",
        ),
        pytest.param(np.zeros((0, 4)), (10, 10), np.zeros((0, 4)), id="empty"),
    ],
)
def test_clip_boxes(boxes: object, image_wh: tuple[int, int], expected: object) -> None:
    original = f32(boxes)
    given = original.copy()
    clipped = clip_boxes(given, image_wh)
    assert clipped.shape == original.shape
    np.testing.assert_allclose(clipped, f32(expected))
    np.testing.assert_array_equal(given, original)  # the input is left alone


@pytest.mark.parametrize(
    ("image_wh", "min_tile", "expected"),
    [
        ((640, 480), 768, [(0, 0, 640, 480)]),
        ((1920, 1280), 768, [(0, 0, 1920, 1280)]),  # tiles of 640 would be below min_tile
        ((1, 1), 1, [(0, 0, 1, 1)]),
        (
            (1000, 400),  # a panorama: square tiles of the short side, overlapping by half
            400,
            [
                (0, 0, 1000, 400),
                (0, 0, 400, 400),
                (200, 0, 400, 400),
                (400, 0, 400, 400),
                (600, 0, 400, 400),
            ],
        ),
        (
            (300, 700),
            300,
            [
                (0, 0, 300, 700),
                (0, 0, 300, 300),
                (0, 150, 300, 300),
                (0, 300, 300, 300),
                (0, 400, 300, 300),
            ],
        ),
        (
            (1600, 1200),  # a large photo: one level of 600-px tiles
            500,
            [(0, 0, 1600, 1200)]
            + [(x, y, 600, 600) for y in (0, 300, 600) for x in (0, 300, 600, 900, 1000)],
        ),
    ],
)
def test_detection_views(
    image_wh: tuple[int, int], min_tile: int, expected: list[tuple[int, int, int, int]]
) -> None:
    views = detection_views(image_wh, min_tile)
    assert views == expected
    width, height = image_wh
    for x, y, w, h in views:
        assert x >= 0
        assert y >= 0
        assert x + w <= width
        assert y + h <= height


def test_detection_views_cap_and_corners() -> None:
    views = detection_views((6000, 4000), 100, max_views=32)
    assert len(views) <= 32
    # Every corner of the image is inside some tile of the finest level.
    tiles = views[1:]
    for cx, cy in [(0, 0), (5999, 0), (0, 3999), (5999, 3999)]:
        assert any(x <= cx < x + w and y <= cy < y + h for x, y, w, h in tiles)


def test_detection_views_rejects_empty_images() -> None:
    with pytest.raises(ValueError, match="positive"):
        detection_views((0, 10), 100)
