"""Pure functions for boxes, anchors, suppression and alignment. No state, no I/O.

Boxes are float arrays `(..., 4)` as `x1, y1, x2, y2`; points are `(..., 2)` as `x, y`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]


def generate_anchors(
    input_hw: tuple[int, int], strides: Sequence[int], anchors_per_cell: Sequence[int]
) -> FloatArray:
    """Anchor centres `(A, 2)` in [0, 1] for BlazeFace-style SSD heads (fixed anchor size 1).

    Row-major over each feature map, `anchors_per_cell[i]` anchors per cell of the map at
    `strides[i]`, in the order MediaPipe's SsdAnchorsCalculator emits them.
    """
    if len(strides) != len(anchors_per_cell):
        raise ValueError("strides and anchors_per_cell must have the same length")
    height, width = input_hw
    centres: list[FloatArray] = []
    for stride, per_cell in zip(strides, anchors_per_cell, strict=True):
        rows, cols = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(
            (np.arange(rows, dtype=np.float32) + 0.5) / rows,
            (np.arange(cols, dtype=np.float32) + 0.5) / cols,
            indexing="ij",
        )
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0))
    if not centres:
        return np.zeros((0, 2), dtype=np.float32)
    return np.concatenate(centres).astype(np.float32)


def decode_blazeface(
    raw: FloatArray, anchors: FloatArray, input_hw: tuple[int, int]
) -> tuple[FloatArray, FloatArray]:
    """Decode BlazeFace regressors `(A, 16)` into boxes `(A, 4)` and keypoints `(A, 6, 2)`.

    Both are in normalised input coordinates ([0, 1] over the network input).
    """
    height, width = input_hw
    scale = np.array([width, height], dtype=np.float32)
    centre = raw[:, 0:2] / scale + anchors
    size = raw[:, 2:4] / scale
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) / scale + anchors[:, None, :]
    return boxes.astype(np.float32), keypoints.astype(np.float32)


def box_area(boxes: FloatArray) -> FloatArray:
    """Area of each box; degenerate boxes have area 0."""
    widths = np.clip(boxes[..., 2] - boxes[..., 0], 0, None)
    heights = np.clip(boxes[..., 3] - boxes[..., 1], 0, None)
    area: FloatArray = np.asarray(widths * heights, dtype=np.float32)
    return area


def iou(box: FloatArray, boxes: FloatArray) -> FloatArray:
    """Intersection over union of one box `(4,)` with each of `boxes` `(K, 4)`."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    union = box_area(box) + box_area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def weighted_nms(
    boxes: FloatArray,
    scores: FloatArray,
    keypoints: FloatArray,
    iou_threshold: float = 0.3,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """MediaPipe's weighted non-maximum suppression.

    Each kept detection is the score-weighted mean of every box and keypoint set that overlaps
    the best remaining one by more than `iou_threshold`; its score is the best one's. This
    steadies the boxes compared with plain NMS. Returns (boxes, scores, keypoints), best first.
    """
    count = len(scores)
    if not count:
        return (
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, *keypoints.shape[1:]), np.float32),
        )
    # Boxes and keypoints side by side, so each kept face is one weighted sum, and the IoU of
    # the best box with the rest written out on columns: this runs for every image, and this
    # form costs under half of the per-round `iou` and separate sums (0.04 vs 0.10 ms for the
    # ~11 candidates of a padded UTKFace face).
    order = np.argsort(-scores, kind="stable")
    values = np.concatenate([boxes, keypoints.reshape(count, -1)], axis=1)[order]
    scores = scores[order]
    x1, y1, x2, y2 = values[:, 0], values[:, 1], values[:, 2], values[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    kept: list[FloatArray] = []
    kept_scores: list[float] = []
    remaining = np.arange(count)
    while remaining.size:
        best = remaining[0]
        inter_w = np.minimum(x2[remaining], x2[best]) - np.maximum(x1[remaining], x1[best])
        inter_h = np.minimum(y2[remaining], y2[best]) - np.maximum(y1[remaining], y1[best])
        inter = np.maximum(inter_w, 0) * np.maximum(inter_h, 0)
        union = areas[best] + areas[remaining] - inter
        # IoU > threshold, without dividing by an empty union
        in_group = inter > iou_threshold * np.maximum(union, 1e-12)
        in_group[0] = True  # the best box always leads its group, even when degenerate
        group = remaining[in_group]
        weights = scores[group]
        kept.append(weights @ values[group] / weights.sum())
        kept_scores.append(float(scores[best]))
        remaining = remaining[~in_group]
    merged = np.asarray(kept, dtype=np.float32)
    return (
        merged[:, :4],
        np.asarray(kept_scores, dtype=np.float32),
        merged[:, 4:].reshape(-1, *keypoints.shape[1:]),
    )


def letterbox_transform(image_hw: tuple[int, int], target: int) -> tuple[float, float, float]:
    """Scale and padding that fit an image into a `target` square, centred, aspect kept.

    Returns (scale, pad_x, pad_y) such that `input_xy = image_xy * scale + pad`. The whole image
    stays inside the square, so faces at the edges of very wide or tall photos are not cut off.
    """
    height, width = image_hw
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = target / max(height, width)
    return scale, (target - width * scale) / 2, (target - height * scale) / 2


def detection_views(
    image_wh: tuple[int, int],
    min_tile: int,
    *,
    max_aspect: float = 1.5,
    max_views: int = 32,
) -> list[tuple[int, int, int, int]]:
    """Regions `(x, y, width, height)` a square-input detector should look at.

    Always the whole image, letterboxed. A detector with a small input (BlazeFace: 128 or 192
    px) sees a face only if it spans roughly a tenth of its input, so faces in large photos and
    panoramas vanish when the whole image is shrunk. Hence a pyramid of square tiles, each
    level overlapping by half (so every face up to half a tile's side lies wholly inside one
    tile) and half the side of the level before: the first level has the short side (for
    panoramas, more than `max_aspect` times wider than tall or the reverse) or half of it.
    Levels stop when tiles would be smaller than `min_tile` pixels, or when a level would
    bring the total above `max_views`.
    """
    width, height = image_wh
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    views = [(0, 0, width, height)]
    short, long = min(width, height), max(width, height)
    side = short if long > short * max_aspect else short // 2
    while side >= max(min_tile, 1):
        level = [
            (x, y, side, side)
            for y in _tile_starts(height, side)
            for x in _tile_starts(width, side)
        ]
        if len(views) + len(level) > max_views:
            break
        views.extend(level)
        side //= 2
    return views


def _tile_starts(length: int, side: int) -> list[int]:
    """Starts of tiles of `side` overlapping by half along `length`, the last flush with the end."""
    if side >= length:
        return [0]
    stride = max(1, side // 2)
    return list(dict.fromkeys([*range(0, length - side, stride), length - side]))


def square_box(
    box: Sequence[float] | FloatArray, factor: float = 1.0, shift_y: float = 0.0
) -> FloatArray:
    """The square with the box's centre and side `factor * max(width, height)`, its centre
    moved down by `shift_y` of the box's height (estimators trained on lower-sitting boxes)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * factor
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 + shift_y * (y2 - y1)
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def crop_transform(box: Sequence[float] | FloatArray, size: int) -> FloatArray:
    """The 2x3 affine matrix mapping an axis-aligned box onto a `size` x `size` chip."""
    x1, y1, x2, y2 = (float(v) for v in box)
    sx, sy = size / max(x2 - x1, 1e-6), size / max(y2 - y1, 1e-6)
    return np.array([[sx, 0.0, -x1 * sx], [0.0, sy, -y1 * sy]], dtype=np.float32)


def similarity_transform(source: FloatArray, target: FloatArray) -> FloatArray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping `source` points
    onto `target` points (Umeyama, without reflection). Returns a 2x3 matrix.

    Needs at least two distinct points; raises ValueError otherwise.
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError("need two matching (K, 2) point sets with K >= 2")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("source points are all the same point")
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign)) / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def clip_boxes(boxes: FloatArray, image_wh: tuple[int, int]) -> FloatArray:
    """Boxes clipped to the image rectangle [0, w] x [0, h]."""
    width, height = image_wh
    clipped = boxes.copy()
    clipped[..., 0::2] = np.clip(clipped[..., 0::2], 0, width)
    clipped[..., 1::2] = np.clip(clipped[..., 1::2], 0, height)
    return clipped
