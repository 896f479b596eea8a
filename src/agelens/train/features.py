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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from agelens.evaluate import LabelledImage, iter_scored_faces
from agelens.train.chunks import cache_folder, compute_chunks, files_digest

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


@dataclass(frozen=True, slots=True)
class Features:
    """Cached embeddings of the rows where a face was found, in label order.

    `embeddings[name]` and `mirrored[name]` are `(n, dim)` float32 per backbone.
    """

    rows: tuple[LabelledImage, ...]
    embeddings: dict[str, NDArray[np.float32]]
    mirrored: dict[str, NDArray[np.float32]]

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
    _worker = _Worker(
        create_detector(config.detector, 1),
        tuple(create_backbone(name, threads=1) for name in config.backbones),
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
    temporary = target.with_suffix(".tmp.npz")
    np.savez(temporary, found=found, **arrays)  # type: ignore[arg-type]
    os.replace(temporary, target)
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
    be decoded or holds no face are left out (logged).
    """
    config = FeatureConfig(
        dataset_dir=str(dataset_dir.resolve()),
        backbones=tuple(backbones),
        pad=float(pad),
        detector=detector,
        files_sha256=files_digest(rows),
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
    return _load(rows, backbones, targets)


def _load(
    rows: Sequence[LabelledImage], backbones: Sequence[str], targets: Sequence[Path]
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
    )
