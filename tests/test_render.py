"""Drawing boxes and labels, legible from thumbnails to very large photos."""

from __future__ import annotations

import numpy as np
import pytest

from agelens.render import draw_result, face_label
from agelens.types import Face, ImageResult


def _face(box: tuple[float, float, float, float], gender: str = "F") -> Face:
    return Face(
        box_xyxy=box,
        detection_score=0.9,
        keypoints=(),
        age_years=34.2,
        age_interval=(29.4, 41.0),
        gender=gender,
        gender_probability=0.9,  # type: ignore[arg-type]
    )


def test_label_text() -> None:
    assert face_label(_face((0, 0, 10, 10))) == "F 34 (29–41)"


@pytest.mark.parametrize("size", [200, 1200, 6000])
def test_labels_scale_with_the_image(size: int) -> None:
    image = np.zeros((size, size, 3), np.uint8)
    side = size / 4
    faces = (
        _face((size / 2, size / 2, size / 2 + side, size / 2 + side)),
        _face((0, 0, side, side), "M"),
    )
    drawn = draw_result(image, ImageResult(faces=faces, image_wh=(size, size)))
    assert drawn.shape == image.shape
    assert drawn.dtype == np.uint8
    assert not np.shares_memory(drawn, image)
    assert image.max() == 0
    # The label of the first face sits above its box: count label pixels there.
    label_band = drawn[
        int(size / 2 - size / 8) : int(size / 2), int(size / 2) : int(size / 2 + side)
    ]
    painted_share = (label_band.sum(axis=2) > 0).mean()
    assert painted_share > 0.05
    # The text height grows with the image, so labels stay readable on large photos.
    rows_with_label = np.where(
        (drawn[: int(size / 2), int(size / 2) :].sum(axis=2) > 0).any(axis=1)
    )[0]
    assert rows_with_label.size >= max(12, size / 80)


def test_no_faces_leaves_the_image_unchanged() -> None:
    image = np.full((50, 80, 3), 7, np.uint8)
    assert np.array_equal(draw_result(image, ImageResult(faces=(), image_wh=(80, 50))), image)
