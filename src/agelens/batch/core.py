"""What both engines of `agelens batch` share: options, analysis of loaded images, crops, and
the crash-safe part store that output is committed through (see the package's docstring for
how it survives a crash and how `--resume` works). Sources and their loading are
`agelens.intake`'s, the same as every other door's."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agelens.errors import BatchOutputError
from agelens.files import write_atomically
from agelens.imaging import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from agelens.intake import IntakeOptions, LoadedImage, SourceLoader, run_isolated
from agelens.models.backends import DEFAULT_DETECTOR, DEFAULT_ESTIMATOR
from agelens.rows import COLUMN_NAMES, error_row, result_rows, rows_to_table

if TYPE_CHECKING:
    import pyarrow

    from agelens.models.base import RGBImage
    from agelens.pipeline import Analyzer

logger = logging.getLogger(__name__)

OutputFormat = Literal["parquet", "csv", "jsonl"]
Engine = Literal["local", "ray"]

_OUTPUT_SUFFIXES: dict[str, OutputFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_SETTINGS_FILE = "settings.json"


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How a batch run analyses and commits. Defaults suit a laptop.

    `workers`: decode threads and inference groups (local engine) or Ray actors. `threads`:
    ONNX Runtime threads per model per worker. `chunk_images` / `chunk_seconds`: a part is
    committed after that many images or seconds, whichever comes first (what a crash can cost).
    `url_allow_networks`: networks exempt from the public-address rule for manifest URLs.
    """

    detector: str = DEFAULT_DETECTOR
    estimator: str = DEFAULT_ESTIMATOR
    min_face: float = 0.0
    max_faces: int | None = None
    batch_size: int = 16
    workers: int = 1
    threads: int | None = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    crops_dir: Path | None = None
    chunk_images: int = 500
    chunk_seconds: float = 60.0
    url_timeout_seconds: float = 30.0
    url_allow_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("batch_size", "workers", "chunk_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    def intake_options(self) -> IntakeOptions:
        """The limits and URL rules sources are read with (`agelens.intake`)."""
        return IntakeOptions(
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            url_timeout_seconds=self.url_timeout_seconds,
            url_allow_networks=self.url_allow_networks,
        )


@dataclass(frozen=True, slots=True)
class ImageRows:
    """The rows of one input image, or `skipped=True` (done in an earlier run, no rows)."""

    path: str
    content_sha256: str | None
    rows: tuple[dict[str, Any], ...]
    skipped: bool = False

    @property
    def status(self) -> str:
        """`skipped`, or the rows' status: `face`, `no_face` or `error`."""
        return "skipped" if self.skipped else str(self.rows[0]["status"])

    @property
    def face_count(self) -> int:
        """Faces found in the image (0 for no_face, error and skipped)."""
        return sum(1 for row in self.rows if row["status"] == "face")


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What a `run_batch` call did. `images` counts the images analysed in this call (not the
    `skipped` ones done before); `no_face_images` and `error_images` are among them."""

    output: Path
    images: int
    faces: int
    no_face_images: int
    error_images: int
    skipped_images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Images analysed per second of wall time (0 when nothing was analysed)."""
        return self.images / self.seconds if self.images and self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------- analysis


def create_analyzer(options: BatchOptions, *, workers: int | None = None) -> Analyzer:
    """The Analyzer a batch run uses (models load here; ModelNotFetchedError when missing)."""
    from agelens.pipeline import Analyzer

    return Analyzer(
        options.detector,
        options.estimator,
        threads=options.threads,
        workers=workers or options.workers,
        max_pixels=options.max_pixels,
    )


def source_loader(
    analyzer: Analyzer, options: BatchOptions, done: dict[str, str | None] | None
) -> SourceLoader:
    """The loader of a batch run: JPEGs decoded at the size `analyzer` needs (reduced for
    large photos, `Analyzer.decode`), whole when face crops are saved (cut from the full
    image)."""
    max_scale = analyzer.max_decode_scale() if options.crops_dir is None else None
    return SourceLoader(options.intake_options(), done, max_scale=max_scale)


def analyze_loaded(
    analyzer: Analyzer, loaded: Sequence[LoadedImage], options: BatchOptions
) -> list[ImageRows]:
    """Rows for loaded sources, in order: one batched network run for all decoded images.

    If the batched run fails, each image is run alone so that only the culprit gets an error
    row. Face crops are saved when `options.crops_dir` is set.
    """
    decoded = [item for item in loaded if item.image is not None]
    results = run_isolated(
        lambda images: analyzer.analyze_decoded(
            images, min_face=options.min_face, max_faces=options.max_faces
        ),
        [item.for_analysis() for item in decoded],
    )
    outcomes: dict[int, Any] = {
        id(item): result for item, result in zip(decoded, results, strict=True)
    }
    output = []
    for item in loaded:
        if item.skipped:
            output.append(ImageRows(item.path, item.content_sha256, (), skipped=True))
        elif item.error is not None:
            row = error_row(item.path, item.content_sha256, item.error)
            output.append(ImageRows(item.path, item.content_sha256, (row,)))
        else:
            outcome = outcomes[id(item)]
            if isinstance(outcome, Exception):
                rows = [error_row(item.path, item.content_sha256, outcome)]
            else:
                rows = result_rows(item.path, item.content_sha256, outcome)
                if options.crops_dir is not None and item.image is not None:
                    save_crops(options.crops_dir, item.content_sha256 or "", item.image, rows)
            output.append(ImageRows(item.path, item.content_sha256, tuple(rows)))
    return output


def crop_name(content_sha256: str, face_index: int) -> str:
    """File name of a face crop: the same image content always gives the same names."""
    return f"{content_sha256}_{face_index}.jpg"


def save_crops(
    folder: Path, content_sha256: str, image: RGBImage, rows: Sequence[dict[str, Any]]
) -> None:
    """Save each face row's box (clipped to the image) as a JPEG in `folder`, atomically."""
    from agelens.imaging import encode_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    height, width = image.shape[:2]
    for row in rows:
        if row["status"] != "face":
            continue
        x1 = min(max(int(row["box_x1_px"]), 0), width - 1)
        y1 = min(max(int(row["box_y1_px"]), 0), height - 1)
        x2 = min(max(round(row["box_x2_px"]), x1 + 1), width)
        y2 = min(max(round(row["box_y2_px"]), y1 + 1), height)
        target = folder / crop_name(content_sha256, int(row["face_index"]))
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_bytes(encode_jpeg(image[y1:y2, x1:x2]))
        os.replace(temporary, target)


# ----------------------------------------------------------------------------- output


def output_format(out: str | os.PathLike[str]) -> OutputFormat:
    """The format OUT's suffix names; BatchOutputError for any other suffix."""
    suffix = Path(out).suffix.lower()
    if suffix not in _OUTPUT_SUFFIXES:
        raise BatchOutputError(
            f"{out}: cannot tell the output format from the suffix {suffix!r}; end the file "
            "name in .parquet, .csv or .jsonl"
        )
    return _OUTPUT_SUFFIXES[suffix]


def parts_folder(out: str | os.PathLike[str]) -> Path:
    """Where the committed parts of OUT live until the final merge: `OUT.parts/`."""
    path = Path(out)
    return path.with_name(path.name + ".parts")


def read_output(path: str | os.PathLike[str]) -> pyarrow.Table:
    """A batch output (Parquet, CSV or JSONL) as an Arrow table with the rows' schema."""
    import pyarrow as pa

    return pa.Table.from_batches(list(_iter_output_batches(Path(path))), schema=_schema())


def _schema() -> pyarrow.Schema:
    from agelens.rows import arrow_schema

    return arrow_schema()


def _iter_output_batches(path: Path) -> Iterator[pyarrow.RecordBatch]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    schema = _schema()
    fmt = output_format(path)
    if fmt == "parquet":
        yield from (b.cast(schema) for b in pq.ParquetFile(path).iter_batches(batch_size=8192))
    elif fmt == "csv":
        options = pa_csv.ConvertOptions(
            column_types=schema, strings_can_be_null=True, include_columns=list(COLUMN_NAMES)
        )
        with pa_csv.open_csv(path, convert_options=options) as reader:
            for record_batch in reader:
                yield record_batch.cast(schema)
    else:
        with path.open(encoding="utf-8") as file:
            chunk: list[dict[str, Any]] = []
            for line in file:
                if line.strip():
                    chunk.append(json.loads(line))
                if len(chunk) >= 8192:
                    yield from pa.Table.from_pylist(chunk, schema=schema).to_batches()
                    chunk = []
            if chunk:
                yield from pa.Table.from_pylist(chunk, schema=schema).to_batches()


class _OutputWriter:
    """Writes Arrow tables to a Parquet, CSV or JSONL file, streaming."""

    def __init__(self, path: Path, fmt: OutputFormat) -> None:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        self.fmt = fmt
        self._parquet: Any = None
        self._csv: Any = None
        self._jsonl: Any = None
        if fmt == "parquet":
            self._parquet = pq.ParquetWriter(path, _schema())
        elif fmt == "csv":
            self._csv = pa_csv.CSVWriter(path, _schema())
        else:
            self._jsonl = path.open("w", encoding="utf-8")

    def write(self, table: pyarrow.Table) -> None:
        if self._parquet is not None:
            self._parquet.write_table(table)
        elif self._csv is not None:
            self._csv.write_table(table)
        else:
            for row in table.to_pylist():
                self._jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for handle in (self._parquet, self._csv, self._jsonl):
            if handle is not None:
                handle.close()


class PartStore:
    """The committed parts of one output, in `OUT.parts/` (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.folder = parts_folder(out)

    def part_files(self) -> list[Path]:
        """Committed parts, in commit order (temporary files are not parts)."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("part-*.parquet"))

    def open(self, settings: dict[str, Any]) -> None:
        """Create the folder (or check an existing one was made with the same settings), and
        remove temporary files a killed run left behind."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".*.tmp"):
            leftover.unlink()
        settings_path = self.folder / _SETTINGS_FILE
        if settings_path.is_file():
            recorded = json.loads(settings_path.read_text())
            differences = [
                f"{key} {recorded.get(key)!r} (now {value!r})"
                for key, value in settings.items()
                if recorded.get(key) != value
            ]
            if differences:
                raise BatchOutputError(
                    f"{self.folder} was made with other settings: {'; '.join(differences)}. "
                    "Resume with the same --detector/--estimator/--min-face/--max-faces, or "
                    "start again with --overwrite"
                )
        else:
            write_atomically(
                settings_path, lambda p: p.write_text(json.dumps(settings, indent=2) + "\n")
            )

    def seed_from_output(self, fmt: OutputFormat, settings: dict[str, Any]) -> None:
        """Turn a finished OUT back into part 0, so that resuming it adds only new images."""
        import pyarrow.parquet as pq

        models = {"detector": settings["detector"], "estimator": settings["estimator"]}
        for batch in _iter_output_batches(self.out):
            for column, expected in models.items():
                found = {v for v in batch.column(column).to_pylist() if v is not None}
                if found - {expected}:
                    raise BatchOutputError(
                        f"{self.out} holds rows made with {column} {sorted(found)[0]!r}, not "
                        f"{expected!r}; resume with the same models, or use --overwrite"
                    )

        def write(temporary: Path) -> None:
            with pq.ParquetWriter(temporary, _schema()) as writer:
                for batch in _iter_output_batches(self.out):
                    writer.write_batch(batch)

        self.open(settings)
        write_atomically(self.folder / "part-000000.parquet", write)

    def index(self) -> dict[str, str | None]:
        """path -> content hash of every committed image (the last part holding it wins)."""
        import pyarrow.parquet as pq

        done: dict[str, str | None] = {}
        for part in self.part_files():
            table = pq.read_table(part, columns=["path", "content_sha256"])
            done.update(
                zip(
                    table.column("path").to_pylist(),
                    table.column("content_sha256").to_pylist(),
                    strict=True,
                )
            )
        return done

    def commit(self, rows: Sequence[dict[str, Any]]) -> Path:
        """Write rows (whole images only) as the next part, atomically."""
        import pyarrow.parquet as pq

        existing = self.part_files()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        target = self.folder / f"part-{number:06d}.parquet"
        table = rows_to_table(rows)
        write_atomically(target, lambda p: pq.write_table(table, p))
        return target

    def merge(self, fmt: OutputFormat) -> None:
        """Write every committed image once (its rows from the last part holding it) into OUT,
        atomically, in part order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self.part_files()
        last_part: dict[str, int] = {}
        for number, part in enumerate(parts):
            paths = pq.read_table(part, columns=["path"]).column("path").to_pylist()
            last_part.update(dict.fromkeys(paths, number))

        def write(temporary: Path) -> None:
            writer = _OutputWriter(temporary, fmt)
            try:
                if not parts:
                    writer.write(rows_to_table([]))
                for number, part in enumerate(parts):
                    table = pq.read_table(part, schema=_schema())
                    keep = [last_part[p] == number for p in table.column("path").to_pylist()]
                    writer.write(table.filter(pa.array(keep, type=pa.bool_())))
            finally:
                writer.close()

        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.out, write)

    def remove(self) -> None:
        """Delete the parts folder (after a merge, or for --overwrite)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
