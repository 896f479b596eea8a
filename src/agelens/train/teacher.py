"""Teacher targets for distillation: what a stronger estimator says about each training face.

`agelens finetune --teacher NAME` trains the student on a mix of the labels and a teacher's
answers. The teacher is any estimator agelens can create by name or folder (e.g.
`heads-utkface`, the `accurate` preset's four-network heads). For each labelled row it is run
on the face `agelens eval` would score (the padded image, the detector, the largest face
nearest the centre), and gives:

- `age`: its age estimate (years);
- `sigma`: its uncertainty, the half-width of its 80% age interval over 1.2816 (the 80%
  quantile of a standard normal), so the student learns a Gaussian of the teacher's own width;
- `male`: its P(male).

Teachers are slow (the heads run four networks on each face and its mirror), so targets are
computed once, in chunks of rows written atomically (temporary name, then rename) into a
folder keyed by everything they depend on: an interrupted run resumes at the first missing
chunk, and targets made with another teacher, detector, pad or data are never reused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from agelens.evaluate import LabelledImage, iter_scored_faces
from agelens.files import write_atomically
from agelens.train.chunks import cache_folder, compute_chunks, files_digest

if TYPE_CHECKING:
    from agelens.models.base import Detector, Estimator

logger = logging.getLogger(__name__)

CHUNK_ROWS = 256
#: z of the normal distribution's 90% quantile: an 80% central interval is mean +/- 1.2816 sd.
Z80 = 1.2816
#: Faces estimated in one network run.
ESTIMATE_BATCH = 32


@dataclass(frozen=True, slots=True)
class TeacherConfig:
    """What a set of targets is computed from; any change gives a different folder."""

    dataset_dir: str
    teacher: str
    teacher_version: str
    pad: float
    detector: str
    files_sha256: str


@dataclass(frozen=True, slots=True)
class TeacherTargets:
    """Per labelled row, in label order: `found` (the teacher saw a face), and where found the
    teacher's `age`, `sigma` (years) and `male` (P(male)); NaN where not found. `models` is
    the teacher's `Estimator.version()` (its models and sources)."""

    found: NDArray[np.bool_]
    age: NDArray[np.float32]
    sigma: NDArray[np.float32]
    male: NDArray[np.float32]
    models: str = ""

    def select(self, index: NDArray[np.int64]) -> TeacherTargets:
        """The targets of rows `index`."""
        return TeacherTargets(
            self.found[index], self.age[index], self.sigma[index], self.male[index], self.models
        )


def teacher_version(name: str) -> str:
    """The teacher's model names and sources (`Estimator.version()`): what the targets' folder
    is keyed by. Loads the teacher once, in this process."""
    from agelens.models.backends import create_estimator

    return create_estimator(name, 1).version()


@dataclass(frozen=True, slots=True)
class _Worker:
    """What each worker process labels with, built once by `_init_worker`."""

    detector: Detector
    estimator: Estimator


_worker: _Worker | None = None


def _init_worker(config: TeacherConfig) -> None:
    from agelens.models.backends import create_detector, create_estimator

    global _worker
    _worker = _Worker(create_detector(config.detector, 1), create_estimator(config.teacher, 1))


def _label_chunk(
    config: TeacherConfig, rows: Sequence[LabelledImage], target: Path
) -> tuple[Path, int]:
    """The teacher's targets of one chunk of rows, written to `target` atomically."""
    from agelens.models.base import Chips, concat_chips

    if _worker is None:
        raise RuntimeError("_label_chunk runs in a worker process set up by _init_worker")
    detector, estimator = _worker.detector, _worker.estimator
    found = np.zeros(len(rows), dtype=bool)
    age = np.full(len(rows), np.nan, np.float32)
    sigma = np.full(len(rows), np.nan, np.float32)
    male = np.full(len(rows), np.nan, np.float32)
    pending: list[tuple[int, Chips]] = []

    def flush() -> None:
        if not pending:
            return
        estimates = estimator.estimate(concat_chips([chips for _, chips in pending]))
        for (position, _), estimate in zip(pending, estimates, strict=True):
            low, high = estimate.age_interval
            age[position] = estimate.age_years
            sigma[position] = max(0.5, (high - low) / 2) / Z80
            male[position] = estimate.gender_probability_male
            found[position] = True
        pending.clear()

    scored = iter_scored_faces(Path(config.dataset_dir), rows, config.pad, detector)
    for position, face in enumerate(scored):
        if face is None:
            continue
        image, detection = face
        pending.append((position, estimator.align(image, [detection])))
        if len(pending) >= ESTIMATE_BATCH:
            flush()
    flush()

    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, found=found, age=age, sigma=sigma, male=male)

    write_atomically(target, write)
    return target, int(found.sum())


def teacher_targets(
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    *,
    teacher: str,
    cache_root: Path,
    pad: float,
    detector: str,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherTargets:
    """The teacher's targets of every row, from the cache when computed before.

    `progress(done_rows, total_rows)` is called after each chunk; `workers` processes run
    one teacher each. UnknownModelError (or ModelNotFetchedError) when the teacher cannot be
    created.
    """
    config = TeacherConfig(
        dataset_dir=str(dataset_dir.resolve()),
        teacher=teacher,
        teacher_version=teacher_version(teacher),
        pad=float(pad),
        detector=detector,
        files_sha256=files_digest(rows),
    )
    targets = compute_chunks(
        cache_folder(cache_root, "teacher", config),
        config,
        rows,
        _label_chunk,
        _init_worker,
        chunk_rows=CHUNK_ROWS,
        workers=workers,
        what=f"teacher {teacher}: labelling",
        progress=progress,
    )
    if not targets:
        empty = np.zeros(0, np.float32)
        return TeacherTargets(np.zeros(0, bool), empty, empty, empty, config.teacher_version)
    parts = [np.load(target) for target in targets]
    try:
        return TeacherTargets(
            found=np.concatenate([p["found"] for p in parts]),
            age=np.concatenate([p["age"] for p in parts]),
            sigma=np.concatenate([p["sigma"] for p in parts]),
            male=np.concatenate([p["male"] for p in parts]),
            models=config.teacher_version,
        )
    finally:
        for part in parts:
            part.close()
