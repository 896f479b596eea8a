"""The embedding cache `agelens train` learns from: every labelled face embedded once.

Backbone networks are frozen, so embedding each image once (and its mirror) and training small
heads on the cached vectors makes training minutes instead of hours on a CPU. The cache is a
folder of chunk files written atomically (temporary name, then rename), so an interrupted run
resumes at the first missing chunk; `manifest.json` records what the cache was built from and
a cache built from anything else is never reused.

Faces are found the way `agelens eval` finds them: the image padded by `pad`, the detector run,
and the largest face nearest the centre kept.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from agelens.evaluate import LabelledImage, iter_scored_faces
from agelens.files import write_atomically
from agelens.models.fetch import sha256_file
from agelens.train.chunks import (
    KEY_WHEN_SET,
    NOT_IN_KEY,
    cache_folder,
    compute_chunks,
    files_digest,
)

if TYPE_CHECKING:
    from agelens.models.base import Detector
    from agelens.models.embeddings import Backbone

logger = logging.getLogger(__name__)

CHUNK_ROWS = 256


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """What a cache is built from; any change gives a different cache folder."""

    dataset_dir: str
    backbones: tuple[str, ...]
    pad: float
    detector: str
    files_sha256: str
    #: sha256 of each int8 backbone's ranges file (`calibrate_int8`), and their folder.
    int8_ranges: tuple[str, ...] = field(default=(), metadata=KEY_WHEN_SET)
    ranges_dir: str = field(default="", metadata=NOT_IN_KEY)
    #: how the int8 graphs are built from the ranges (`RECIPE_VERSION`): the same ranges give
    #: other features under another recipe. 0 without int8 backbones.
    int8_recipe: int = field(default=0, metadata=KEY_WHEN_SET)
    #: sha256 of each `-qat` backbone's fine-tuned float graph (train/qat.py).
    tuned_weights: tuple[str, ...] = field(default=(), metadata=KEY_WHEN_SET)


@dataclass(frozen=True, slots=True)
class RangesConfig:
    """What int8 activation ranges are taken on; any change gives a different folder: the
    faces (as the float features of the int8 backbones would be cached), how many of them,
    and the recipe."""

    faces: FeatureConfig
    count: int
    recipe: int


@dataclass(frozen=True, slots=True)
class Features:
    """Cached embeddings of the rows where a face was found, in label order.

    `embeddings[name]` and `mirrored[name]` are `(n, dim)` float32 per backbone.
    """

    rows: tuple[LabelledImage, ...]
    embeddings: dict[str, NDArray[np.float32]]
    mirrored: dict[str, NDArray[np.float32]]
    #: The activation ranges file of each int8 backbone (`calibrate_int8`).
    int8_ranges: dict[str, Path] = field(default_factory=dict)
    #: The fine-tuned float graph of each `-qat` backbone (train/qat.py).
    tuned_weights: dict[str, Path] = field(default_factory=dict)

    def matrix(self, names: Sequence[str], *, mirrored: bool = False) -> NDArray[np.float32]:
        """The backbones' features side by side, `(n, sum of dims)`."""
        source = self.mirrored if mirrored else self.embeddings
        return np.concatenate([source[name] for name in names], axis=1)


@dataclass(frozen=True, slots=True)
class _Worker:
    """The detector and backbones of one worker process, built once by `_init_worker`."""

    detector: Detector
    backbones: tuple[Backbone, ...]


_worker: _Worker | None = None


def _init_worker(config: FeatureConfig) -> None:
    from agelens.models.backends import create_detector
    from agelens.models.embeddings import create_backbone

    global _worker
    ranges = Path(config.ranges_dir) if config.ranges_dir else None
    _worker = _Worker(
        create_detector(config.detector, 1),
        tuple(create_backbone(name, threads=1, folder=ranges) for name in config.backbones),
    )


def _embed_chunk(
    config: FeatureConfig, rows: Sequence[LabelledImage], target: Path
) -> tuple[Path, int]:
    """Embed one chunk of rows and write it to `target` atomically; (target, faces found)."""
    if _worker is None:
        raise RuntimeError("_embed_chunk runs in a worker process set up by _init_worker")
    detector, backbones = _worker.detector, _worker.backbones
    found = np.zeros(len(rows), dtype=bool)
    columns: dict[str, list[NDArray[np.float32]]] = {}
    scored = iter_scored_faces(Path(config.dataset_dir), rows, config.pad, detector)
    for position, face in enumerate(scored):
        if face is None:
            continue
        image, detection = face
        found[position] = True
        for backbone in backbones:
            chips = backbone.align(image, [detection])
            columns.setdefault(backbone.name, []).append(backbone.embed(chips))
            columns.setdefault(f"{backbone.name}__mirrored", []).append(
                backbone.embed(chips, mirrored=True)
            )
    arrays = {key: np.concatenate(values).astype(np.float32) for key, values in columns.items()}

    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, found=found, **arrays)  # type: ignore[arg-type]

    write_atomically(target, write)
    return target, int(found.sum())


def build_features(
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    *,
    backbones: Sequence[str],
    cache_root: Path,
    pad: float = 0.0,
    detector: str = "blazeface-full",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Features:
    """Embeddings of every row with a face, from the cache when it is there.

    `progress(done_rows, total_rows)` is called after each chunk. Rows whose image could not
    be decoded or holds no face are left out (logged). `-qat` backbones are fine-tuned for
    int8 first (`qat.tune_for_int8`), then int8 backbones get their activation ranges
    (`calibrate_int8`); both are cached too.
    """
    from agelens.models.convert.int8 import RECIPE_VERSION
    from agelens.models.embeddings import int8_ranges_file, parse_backbone, tuned_weights_file
    from agelens.train.qat import tune_for_int8

    faces = FeatureConfig(
        dataset_dir=str(dataset_dir.resolve()),
        backbones=tuple(backbones),
        pad=float(pad),
        detector=detector,
        files_sha256=files_digest(rows),
    )
    tuned = tune_for_int8(dataset_dir, rows, faces, cache_root)
    faces = replace(faces, tuned_weights=tuple(sha256_file(path) for path in tuned.values()))
    ranges_dir = calibrate_int8(dataset_dir, rows, faces, cache_root, tuned)
    ranges = {
        name: ranges_dir / int8_ranges_file(name)
        for name in backbones
        if ranges_dir is not None and parse_backbone(name).int8
    }
    weights = {
        name: ranges_dir / tuned_weights_file(name) for name in tuned if ranges_dir is not None
    }
    config = replace(
        faces,
        int8_ranges=tuple(sha256_file(path) for path in ranges.values()),
        ranges_dir=str(ranges_dir.resolve()) if ranges_dir is not None else "",
        int8_recipe=RECIPE_VERSION if ranges else 0,
    )
    targets = compute_chunks(
        cache_folder(cache_root, "features", config),
        config,
        rows,
        _embed_chunk,
        _init_worker,
        chunk_rows=CHUNK_ROWS,
        workers=workers,
        what="embedding",
        progress=progress,
    )
    return replace(_load(rows, backbones, targets, ranges), tuned_weights=weights)


def calibrate_int8(
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    faces: FeatureConfig,
    cache_root: Path,
    tuned: dict[str, Path] | None = None,
) -> Path | None:
    """The folder of the activation ranges of the int8 backbones among `faces.backbones`
    (`int8_ranges_file(name)` each), taken by the float network at the same size (for a
    `-qat` backbone its fine-tuned graph in `tuned`, copied into the folder as
    `tuned_weights_file(name)`) on `CALIBRATION_FACES` faces of `rows` (a seeded sample; found
    as `faces` says); None when no backbone is int8. Kept in `cache_root`, so a resumed run
    reuses them."""
    from agelens.models.backends import create_detector
    from agelens.models.convert.int8 import CALIBRATION_FACES, RECIPE_VERSION, calibrate
    from agelens.models.embeddings import int8_ranges_file, parse_backbone, tuned_weights_file
    from agelens.models.faceres import FaceResEstimator
    from agelens.models.registry import get_spec

    tuned = tuned or {}
    int8 = [name for name in faces.backbones if parse_backbone(name).int8]
    if not int8:
        return None
    missing = sorted(name for name in int8 if parse_backbone(name).tuned and name not in tuned)
    if missing:
        raise ValueError(f"{', '.join(missing)} need fine-tuned weights (train/qat.py)")
    config = RangesConfig(
        replace(faces, backbones=tuple(int8)), count=CALIBRATION_FACES, recipe=RECIPE_VERSION
    )
    folder = cache_folder(cache_root, "int8-ranges", config)
    for name, source in tuned.items():
        copy = folder / tuned_weights_file(name)
        if not copy.is_file():
            write_atomically(copy, partial(shutil.copyfile, source))
    todo = [name for name in int8 if not (folder / int8_ranges_file(name)).is_file()]
    if not todo:
        return folder
    networks = {}
    for name in todo:
        model, size, _, is_tuned = parse_backbone(name)
        weights = folder / tuned_weights_file(name) if is_tuned else None
        networks[name] = FaceResEstimator(
            get_spec(model), threads=1, input_size=size, weights=weights
        )
    chips: dict[str, list[NDArray[np.float32]]] = {name: [] for name in todo}
    found = 0
    # A seeded sample, not the first rows: label files are often sorted by age (UTKFace's
    # first `dev` rows are all 100 or 10-11 years old), and ranges taken on one age are
    # narrower than the faces the network will see.
    sample = random.Random(0).sample(list(rows), len(rows))
    detector = create_detector(faces.detector, 1)
    for face in iter_scored_faces(dataset_dir, sample, faces.pad, detector):
        if face is None:
            continue
        image, detection = face
        for name, network in networks.items():
            chips[name].append(network.align(image, [detection])[network.name])
        found += 1
        if found == CALIBRATION_FACES:
            break
    if not found:
        raise ValueError("no face was found in any labelled image: check --pad and the folder")
    for name, network in networks.items():
        logger.info("int8 ranges of %s from %d faces", name, found)
        calibrate(
            network.float_graph(), np.concatenate(chips[name]), folder / int8_ranges_file(name)
        )
    return folder


def _load(
    rows: Sequence[LabelledImage],
    backbones: Sequence[str],
    targets: Sequence[Path],
    int8_ranges: dict[str, Path],
) -> Features:
    kept: list[LabelledImage] = []
    embeddings: dict[str, list[NDArray[np.float32]]] = {name: [] for name in backbones}
    mirrored: dict[str, list[NDArray[np.float32]]] = {name: [] for name in backbones}
    for number, target in enumerate(targets):
        with np.load(target) as data:
            found = data["found"]
            chunk = rows[number * CHUNK_ROWS : number * CHUNK_ROWS + len(found)]
            kept.extend(row for row, hit in zip(chunk, found, strict=True) if hit)
            if found.any():
                for name in backbones:
                    embeddings[name].append(data[name])
                    mirrored[name].append(data[f"{name}__mirrored"])
    missing = len(rows) - len(kept)
    if missing:
        logger.info("%d of %d rows had no usable face and are left out", missing, len(rows))
    if not kept:
        raise ValueError("no face was found in any labelled image: check --pad and the folder")
    return Features(
        rows=tuple(kept),
        embeddings={name: np.concatenate(parts) for name, parts in embeddings.items()},
        mirrored={name: np.concatenate(parts) for name, parts in mirrored.items()},
        int8_ranges=int8_ranges,
    )
