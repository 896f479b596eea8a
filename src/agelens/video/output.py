"""Track and people tables of a video, written as Parquet, CSV or JSONL (by suffix, as batch).

Column names carry their units, as in `agelens.rows`. The track table has one row per tracked
face per analysed frame (frames the detector ran on); the people table one row per track.
`age_years` ... `gender_probability` of a track row are the track's fused answer as shown in
that frame; `frame_*` columns are that frame's own estimate, when one was made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow

    from agelens.video.tracking import FrameResult, PersonSummary

#: (column name, Arrow type name) of a track file, in output order.
TRACK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("source", "string"),  # the input as given; never null
    ("frame_index", "int32"),  # 0-based, in decoding order; never null
    ("timestamp_s", "float64"),  # presentation time from the start; never null
    ("scene", "int32"),  # 0-based, counts scene cuts
    ("track_id", "int32"),  # 1-based, unique within the video; never null
    ("image_width_px", "int32"),
    ("image_height_px", "int32"),
    ("box_x1_px", "float32"),
    ("box_y1_px", "float32"),
    ("box_x2_px", "float32"),
    ("box_y2_px", "float32"),
    ("face_size_px", "float32"),  # the box's longer side
    ("detection_score", "float32"),
    ("age_years", "float32"),  # fused, as shown; null before the track's first answer
    ("age_low_years", "float32"),
    ("age_high_years", "float32"),
    ("gender", "string"),  # F | M
    ("gender_probability", "float32"),  # probability of `gender`, >= 0.5
    ("estimates", "int32"),  # estimates fused into the answer so far
    ("frame_age_years", "float32"),  # this frame's own estimate; null when none was made
    ("frame_age_low_years", "float32"),
    ("frame_age_high_years", "float32"),
    ("frame_gender_probability_male", "float32"),
    ("detector", "string"),
    ("estimator", "string"),
)

#: (column name, Arrow type name) of a people file, in output order.
PEOPLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("source", "string"),
    ("track_id", "int32"),
    ("first_frame", "int32"),
    ("last_frame", "int32"),
    ("first_seen_s", "float64"),
    ("last_seen_s", "float64"),
    ("dwell_s", "float64"),
    ("frames_seen", "int32"),  # analysed frames the person was in
    ("estimates", "int32"),
    ("age_years", "float32"),  # fused over all the track's estimates; null if never estimated
    ("age_low_years", "float32"),
    ("age_high_years", "float32"),
    ("gender", "string"),
    ("gender_probability", "float32"),
    ("crop", "string"),  # file name of the best face in --crops, when written
)

_NOT_NULL = frozenset({"source", "frame_index", "timestamp_s", "track_id"})


def track_rows(source: str, result: FrameResult, models: Mapping[str, str]) -> list[dict[str, Any]]:
    """The rows of one frame: one per tracked face, none for a frame the detector skipped."""
    if not result.detected:
        return []
    width, height = result.image_wh
    rows = []
    for face in result.faces:
        x1, y1, x2, y2 = face.box_xyxy
        own = face.frame_estimate
        rows.append(
            {
                "source": source,
                "frame_index": result.index,
                "timestamp_s": result.timestamp_s,
                "scene": result.scene,
                "track_id": face.track_id,
                "image_width_px": width,
                "image_height_px": height,
                "box_x1_px": x1,
                "box_y1_px": y1,
                "box_x2_px": x2,
                "box_y2_px": y2,
                "face_size_px": max(x2 - x1, y2 - y1),
                "detection_score": face.detection_score,
                "age_years": face.age_years,
                "age_low_years": face.age_interval[0] if face.age_interval else None,
                "age_high_years": face.age_interval[1] if face.age_interval else None,
                "gender": face.gender,
                "gender_probability": face.gender_probability,
                "estimates": face.estimates,
                "frame_age_years": own.age_years if own else None,
                "frame_age_low_years": own.age_interval[0] if own else None,
                "frame_age_high_years": own.age_interval[1] if own else None,
                "frame_gender_probability_male": own.gender_probability_male if own else None,
                "detector": models.get("detector"),
                "estimator": models.get("estimator"),
            }
        )
    return rows


def person_row(source: str, person: PersonSummary, crop: str | None = None) -> dict[str, Any]:
    """The people-file row of one person."""
    low, high = person.age_interval if person.age_interval else (None, None)
    return {
        "source": source,
        "track_id": person.track_id,
        "first_frame": person.first_frame,
        "last_frame": person.last_frame,
        "first_seen_s": person.first_seen_s,
        "last_seen_s": person.last_seen_s,
        "dwell_s": person.dwell_s,
        "frames_seen": person.frames_seen,
        "estimates": person.estimates,
        "age_years": person.age_years,
        "age_low_years": low,
        "age_high_years": high,
        "gender": person.gender,
        "gender_probability": person.gender_probability,
        "crop": crop,
    }


def schema(columns: Sequence[tuple[str, str]]) -> pyarrow.Schema:
    """The Arrow schema of a column table (TRACK_COLUMNS or PEOPLE_COLUMNS)."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "int32": pa.int32(),
        "float32": pa.float32(),
        "float64": pa.float64(),
    }
    return pa.schema(
        [pa.field(name, types[kind], nullable=name not in _NOT_NULL) for name, kind in columns]
    )


class TableWriter:
    """Streams rows to a Parquet, CSV or JSONL file (format from the suffix; BatchOutputError
    for any other), written to a temporary name and moved into place on `close()`."""

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[tuple[str, str]]) -> None:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        from agelens.batch import output_format

        self.path = Path(path)
        self.format = output_format(self.path)
        self.columns = tuple(columns)
        self._schema = schema(self.columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._handle: Any
        if self.format == "parquet":
            self._handle = pq.ParquetWriter(self._temporary, self._schema)
        elif self.format == "csv":
            self._handle = pa_csv.CSVWriter(self._temporary, self._schema)
        else:
            self._handle = self._temporary.open("w", encoding="utf-8")
        self.rows_written = 0

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows (dicts with the table's columns; missing keys are null)."""
        import pyarrow as pa

        names = [name for name, _ in self.columns]
        records = [{name: row.get(name) for name in names} for row in rows]
        if not records:
            return
        self.rows_written += len(records)
        if self.format == "jsonl":
            for record in records:
                self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            self._handle.write_table(pa.Table.from_pylist(records, schema=self._schema))

    def close(self) -> None:
        """Finish the file and move it into place."""
        self._handle.close()
        os.replace(self._temporary, self.path)

    def discard(self) -> None:
        """Drop the unfinished file."""
        self._handle.close()
        self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_table(
    path: str | os.PathLike[str],
    columns: Sequence[tuple[str, str]],
    rows: Iterable[Mapping[str, Any]],
) -> None:
    """Write all `rows` to `path` at once."""
    with TableWriter(path, columns) as writer:
        writer.write(rows)


def read_table(path: str | os.PathLike[str], columns: Sequence[tuple[str, str]]) -> pyarrow.Table:
    """A track or people file (Parquet, CSV or JSONL) as an Arrow table with `columns`."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    from agelens.batch import output_format

    target = schema(columns)
    fmt = output_format(path)
    if fmt == "parquet":
        return pq.read_table(path).select(target.names).cast(target)
    if fmt == "csv":
        options = pa_csv.ConvertOptions(column_types=target, strings_can_be_null=True)
        return pa_csv.read_csv(path, convert_options=options).select(target.names).cast(target)
    with Path(path).open(encoding="utf-8") as file:
        records = [json.loads(line) for line in file if line.strip()]
    return pa.Table.from_pylist(records, schema=target)
