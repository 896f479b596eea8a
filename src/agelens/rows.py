"""Flat result rows: the table that `agelens batch`, the jobs API and `agelens report` share.

One row per face, plus one row for an image with no face (`status="no_face"`) and one for an
image that could not be analysed (`status="error"`, with the error's type and message). Column
names carry their units; the order of COLUMNS is the order written to CSV and Parquet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from agelens.types import ImageResult

if TYPE_CHECKING:
    import pyarrow

Status = Literal["face", "no_face", "error"]

#: (column name, Arrow type name) in output order. Nullable unless said otherwise: a no-face or
#: error row leaves the face columns empty.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("path", "string"),  # the input as given (file path or URL); never null
    ("content_sha256", "string"),  # sha256 of the input's bytes; null when they could not be read
    ("status", "string"),  # face | no_face | error; never null
    ("error_type", "string"),  # e.g. ImageDecodeError
    ("error_message", "string"),
    ("image_width_px", "int32"),
    ("image_height_px", "int32"),
    ("face_index", "int32"),  # 0-based, best detection first
    ("faces_in_image", "int32"),
    ("box_x1_px", "float32"),
    ("box_y1_px", "float32"),
    ("box_x2_px", "float32"),
    ("box_y2_px", "float32"),
    ("face_size_px", "float32"),  # the box's longer side
    ("detection_score", "float32"),
    ("age_years", "float32"),
    ("age_low_years", "float32"),
    ("age_high_years", "float32"),
    ("gender", "string"),  # F | M
    ("gender_probability", "float32"),  # probability of `gender`, >= 0.5
    ("detector", "string"),
    ("estimator", "string"),  # estimator version: model names and pinned sources
)

COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data` (the content hash of a row's image)."""
    return hashlib.sha256(data).hexdigest()


def _empty_row(path: str, content_sha256: str | None, status: Status) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    row.update(path=path, content_sha256=content_sha256, status=status)
    return row


def result_rows(path: str, content_sha256: str | None, result: ImageResult) -> list[dict[str, Any]]:
    """The rows of one analysed image: one per face, or one `no_face` row."""
    width, height = result.image_wh
    common = {
        "image_width_px": width,
        "image_height_px": height,
        "faces_in_image": len(result.faces),
        "detector": result.models.get("detector"),
        "estimator": result.models.get("estimator"),
    }
    if not result.faces:
        row = _empty_row(path, content_sha256, "no_face")
        row.update(common)
        return [row]
    rows = []
    for index, face in enumerate(result.faces):
        x1, y1, x2, y2 = face.box_xyxy
        row = _empty_row(path, content_sha256, "face")
        row.update(common)
        row.update(
            face_index=index,
            box_x1_px=x1,
            box_y1_px=y1,
            box_x2_px=x2,
            box_y2_px=y2,
            face_size_px=max(x2 - x1, y2 - y1),
            detection_score=face.detection_score,
            age_years=face.age_years,
            age_low_years=face.age_interval[0],
            age_high_years=face.age_interval[1],
            gender=face.gender,
            gender_probability=face.gender_probability,
        )
        rows.append(row)
    return rows


def error_row(
    path: str, content_sha256: str | None, error: BaseException | tuple[str, str]
) -> dict[str, Any]:
    """The one row of an image that could not be analysed. `error` is the exception, or its
    (type name, message) when it crossed a process boundary."""
    error_type, message = (
        (type(error).__name__, str(error)) if isinstance(error, BaseException) else error
    )
    row = _empty_row(path, content_sha256, "error")
    row.update(error_type=error_type, error_message=message)
    return row


def arrow_schema() -> pyarrow.Schema:
    """The Arrow schema of COLUMNS (pyarrow is imported only here and in callers)."""
    import pyarrow as pa

    types = {"string": pa.string(), "int32": pa.int32(), "float32": pa.float32()}
    return pa.schema(
        [
            pa.field(name, types[kind], nullable=name not in ("path", "status"))
            for name, kind in COLUMNS
        ]
    )


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pyarrow.Table:
    """An Arrow table with exactly COLUMNS, in order, from row dicts."""
    import pyarrow as pa

    rows = list(rows)
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in COLUMN_NAMES} for row in rows], schema=arrow_schema()
    )
