"""The flat result rows shared by batch, the jobs API and reports."""

from __future__ import annotations

from agelens.errors import ImageDecodeError
from agelens.rows import COLUMN_NAMES, error_row, result_rows, rows_to_table, sha256_bytes
from agelens.types import Face, ImageResult


def _face(x1: float, age: float) -> Face:
    return Face(
        box_xyxy=(x1, 10.0, x1 + 50.0, 70.0),
        detection_score=0.9,
        keypoints=(),
        age_years=age,
        age_interval=(age - 5, age + 5),
        gender="F",
        gender_probability=0.8,
    )


def test_one_row_per_face_with_units_and_models() -> None:
    result = ImageResult(
        faces=(_face(0, 30), _face(100, 40)),
        image_wh=(640, 480),
        models={"detector": "d", "estimator": "e (pkg@1)"},
    )
    rows = result_rows("a.jpg", sha256_bytes(b"x"), result)
    assert [r["face_index"] for r in rows] == [0, 1]
    assert rows[1]["box_x1_px"] == 100
    assert rows[0]["face_size_px"] == 60
    assert rows[0]["faces_in_image"] == 2
    assert rows[0]["estimator"] == "e (pkg@1)"
    assert all(set(r) == set(COLUMN_NAMES) for r in rows)


def test_no_face_and_error_rows() -> None:
    [row] = result_rows("b.jpg", "h", ImageResult(faces=(), image_wh=(10, 20)))
    assert row["status"] == "no_face"
    assert row["face_index"] is None
    assert row["image_height_px"] == 20
    err = error_row("c.jpg", None, ImageDecodeError("truncated JPEG"))
    assert (err["status"], err["error_type"], err["error_message"]) == (
        "error",
        "ImageDecodeError",
        "truncated JPEG",
    )
    assert error_row("d.jpg", None, ("OSError", "gone"))["error_type"] == "OSError"


def test_table_has_every_column_in_order() -> None:
    rows = [*result_rows("a.jpg", "h", ImageResult(faces=(_face(0, 30),), image_wh=(9, 9)))]
    rows.append(error_row("c.jpg", None, ValueError("bad")))
    table = rows_to_table(rows)
    assert tuple(table.column_names) == COLUMN_NAMES
    assert table.num_rows == 2
    assert table.column("age_years").to_pylist()[1] is None
