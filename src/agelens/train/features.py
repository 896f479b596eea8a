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
    from agelens.models.faceres import FaceResEstimator

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
    #: The int8 graph of each `-qat` backbone (train/qat.py, `calibrate_int8`).
    int8_graphs: dict[str, Path] = field(default_factory=dict)

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
    int8 first (`qat.tune_for_int8`), then int8 backbones get their activation ranges and the
    `-qat` ones their int8 graph (`calibrate_int8`); all are cached too.
    """
    from agelens.models.convert.int8 import RECIPE_VERSION
    from agelens.models.embeddings import int8_graph_file, int8_ranges_file, parse_backbone
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
    graphs = {name: ranges_dir / int8_graph_file(name) for name in tuned if ranges_dir is not None}
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
    # A `-qat` backbone ships its int8 graph; its ranges only made it.
    shipped = {name: path for name, path in ranges.items() if name not in graphs}
    return replace(_load(rows, backbones, targets, shipped), int8_graphs=graphs)


def calibrate_int8(
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    faces: FeatureConfig,
    cache_root: Path,
    tuned: dict[str, Path] | None = None,
) -> Path | None:
    """The folder of the activation ranges of the int8 backbones among `faces.backbones`
    (`int8_ranges_file(name)` each), taken by the float network at the same size (for a
    `-qat` backbone its fine-tuned graph in `tuned`) on `CALIBRATION_FACES` faces of `rows` (a
    seeded sample; found as `faces` says), and of each `-qat` backbone's int8 graph built from
    them (`int8_graph_file(name)`); None when no backbone is int8. Kept in `cache_root`, so a
    resumed run reuses them."""
    import onnx

    from agelens.models.convert.int8 import CALIBRATION_FACES, RECIPE_VERSION, quantized
    from agelens.models.embeddings import int8_graph_file, int8_ranges_file, parse_backbone

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
    todo = [name for name in int8 if not (folder / int8_ranges_file(name)).is_file()]
    if todo:
        _take_ranges(dataset_dir, rows, faces, folder, todo, tuned)
    for name, source in tuned.items():
        graph = folder / int8_graph_file(name)
        if not graph.is_file():
            data = quantized(onnx.load(str(source)), folder / int8_ranges_file(name))
            write_atomically(graph, partial(Path.write_bytes, data=data))
    return folder


def _take_ranges(
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    faces: FeatureConfig,
    folder: Path,
    todo: Sequence[str],
    tuned: dict[str, Path],
) -> None:
    """`calibrate_int8`'s ranges files of the backbones `todo`, written into `folder`."""
    import onnx

    from agelens.models.convert.int8 import CALIBRATION_FACES, calibrate
    from agelens.models.embeddings import int8_ranges_file

    networks, chips, found = faceres_chips(
        dataset_dir, rows, faces, todo, count=CALIBRATION_FACES, seed=0
    )
    for name, network in networks.items():
        logger.info("int8 ranges of %s from %d faces", name, found)
        graph = onnx.load(str(tuned[name])) if name in tuned else network.float_graph()
        calibrate(graph, chips[name], folder / int8_ranges_file(name))


def faceres_chips(
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    faces: FeatureConfig,
    names: Sequence[str],
    *,
    count: int,
    seed: int,
) -> tuple[dict[str, FaceResEstimator], dict[str, NDArray[np.float32]], int]:
    """The float networks of the faceres backbones `names` (at their sizes), their chips of
    up to `count` faces of `rows` (found as `faces` says), and how many faces that is.

    The faces are a sample seeded by `seed`, not the first rows: label files are often sorted
    by age (UTKFace's first `dev` rows are all 100 or 10-11 years old), and ranges taken or
    weights tuned on one age are narrower than the faces the network will see. Raises
    ValueError when no face is found."""
    from agelens.models.backends import create_detector
    from agelens.models.embeddings import parse_backbone
    from agelens.models.faceres import FaceResEstimator
    from agelens.models.registry import get_spec

    networks = {}
    for name in names:
        model, size, _, _ = parse_backbone(name)
        networks[name] = FaceResEstimator(get_spec(model), threads=1, input_size=size)
    chips: dict[str, list[NDArray[np.float32]]] = {name: [] for name in names}
    found = 0
    sample = random.Random(seed).sample(list(rows), len(rows))
    detector = create_detector(faces.detector, 1)
    for face in iter_scored_faces(dataset_dir, sample, faces.pad, detector):
        if face is None:
            continue
        image, detection = face
        for name, network in networks.items():
            chips[name].append(network.align(image, [detection])[network.name])
        found += 1
        if found == count:
            break
    if not found:
        raise ValueError("no face was found in any labelled image: check --pad and the folder")
    return networks, {name: np.concatenate(parts) for name, parts in chips.items()}, found


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
