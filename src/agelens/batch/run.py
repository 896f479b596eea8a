"""`run_batch`: the whole `agelens batch` command, on the local or the Ray engine, committed
through the part store so that a crash loses nothing and `--resume` continues."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agelens.batch.core import (
    BatchOptions,
    BatchSummary,
    Engine,
    ImageRows,
    PartStore,
    create_analyzer,
    output_format,
)
from agelens.batch.local import iter_image_rows
from agelens.errors import (
    BatchOutputError,
    require_extra,
)
from agelens.intake import check_inputs, iter_sources

if TYPE_CHECKING:
    from agelens.pipeline import Analyzer

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the run


def run_batch(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    options: BatchOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    engine: Engine = "local",
    address: str | None = None,
    analyzer: Analyzer | None = None,
    progress: Callable[[ImageRows], None] | None = None,
) -> BatchSummary:
    """Analyse every image the inputs name into OUT (format by suffix), resumably.

    `analyzer` (local engine only) replaces the one built from `options`. `progress` is called
    once per source, in the main thread, skipped ones included. Raises BatchInputError (an input
    does not exist), BatchOutputError (OUT exists without resume/overwrite, unknown suffix,
    settings differ from the run being resumed), ModelNotFetchedError / UnknownModelError, and
    MissingExtraError for `engine="ray"` without ray. KeyboardInterrupt commits the images
    finished so far before it propagates; resume then continues from there.
    """
    options = options or BatchOptions()
    started = time.perf_counter()
    out_path = Path(os.path.expanduser(os.fspath(out)))
    fmt = output_format(out_path)
    if resume and overwrite:
        raise BatchOutputError("--resume and --overwrite exclude each other; pass one")
    check_inputs(inputs)
    store = PartStore(out_path)
    if not resume and not overwrite and (out_path.exists() or store.folder.exists()):
        existing = out_path if out_path.exists() else store.folder
        raise BatchOutputError(
            f"{existing} exists; pass --resume to continue (or update) that run, or "
            "--overwrite to start again"
        )
    if engine == "ray":
        require_extra("ray", "ray")
    elif engine != "local":
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    if analyzer is None:
        # On the Ray engine this loads the models once on the driver too: missing models fail
        # here, before a cluster is started, and the settings get the estimator's version.
        analyzer = create_analyzer(options, workers=options.workers if engine == "local" else 1)
    settings = {
        "detector": analyzer.models["detector"],
        "estimator": analyzer.models["estimator"],
        "min_face": options.min_face,
        "max_faces": options.max_faces,
        "max_pixels": options.max_pixels,
    }
    if overwrite:
        store.remove()
        with contextlib.suppress(FileNotFoundError):
            out_path.unlink()
    if resume and out_path.exists() and not store.folder.exists():
        store.seed_from_output(fmt, settings)
    store.open(settings)
    done = store.index() if resume else {}
    sources = iter_sources(inputs)
    if engine == "ray":
        from agelens.batch.ray import iter_image_rows_ray

        items = iter_image_rows_ray(sources, options, done=done, address=address)
    else:
        items = iter_image_rows(sources, analyzer, options, done=done)
    counts = _commit_all(items, store, options, progress)
    store.merge(fmt)
    store.remove()
    return dataclasses.replace(counts, output=out_path, seconds=time.perf_counter() - started)


def _commit_all(
    items: Iterator[ImageRows],
    store: PartStore,
    options: BatchOptions,
    progress: Callable[[ImageRows], None] | None,
) -> BatchSummary:
    images = faces = no_face = errors = skipped = 0
    pending: list[dict[str, Any]] = []
    pending_images = 0
    last_commit = time.monotonic()
    try:
        for item in items:
            if item.skipped:
                skipped += 1
            else:
                images += 1
                faces += item.face_count
                no_face += item.status == "no_face"
                errors += item.status == "error"
                pending.extend(item.rows)
                pending_images += 1
            if pending_images >= options.chunk_images or (
                pending and time.monotonic() - last_commit >= options.chunk_seconds
            ):
                store.commit(pending)
                pending, pending_images, last_commit = [], 0, time.monotonic()
            if progress is not None:
                progress(item)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
        if pending:  # whole images only, so they are safe to keep even when the run failed
            store.commit(pending)
    return BatchSummary(Path(), images, faces, no_face, errors, skipped, 0.0)


def count_sources(inputs: Sequence[str | os.PathLike[str]]) -> int:
    """How many sources the inputs name (one pass over folders and manifests, for progress)."""
    return sum(1 for _ in iter_sources(inputs))
