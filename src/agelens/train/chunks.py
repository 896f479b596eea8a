"""Per-row results computed once, in chunks, by worker processes, and cached on disk.

`agelens train` embeds every labelled face (agelens.train.features) and `agelens finetune
--teacher` asks a teacher about every one (agelens.train.teacher): both are slow, both are
worth computing once. Their results go into a folder keyed by the hash of everything they
depend on (a frozen dataclass, also written beside them as `manifest.json`), one chunk file per
`chunk_rows` rows, each written atomically by the worker (temporary name, then rename), so an
interrupted run resumes at the first missing chunk and a cache built from anything else is
never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from agelens.evaluate import LabelledImage

logger = logging.getLogger(__name__)

Config = TypeVar("Config")


def files_digest(rows: Sequence[LabelledImage]) -> str:
    """sha256 of the rows' file names, in order: what a cache's rows are."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.file.encode("utf-8") + b"\n")
    return digest.hexdigest()


#: Field metadata of a config field left out of the cache key while it is empty, so that
#: adding such a field keeps the caches built before it valid.
KEY_WHEN_SET = {"cache_key": "when set"}
#: Field metadata of a config field never in the cache key (where a file is, not what it is).
NOT_IN_KEY = {"cache_key": "never"}


def cache_folder(root: Path, prefix: str, config: Any) -> Path:
    """The folder of one configuration's cache under `root` (`config` a dataclass)."""
    values = asdict(config)
    for item in fields(config):
        if item.metadata == NOT_IN_KEY or (item.metadata == KEY_WHEN_SET and not values[item.name]):
            del values[item.name]
    key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return root / f"{prefix}-{key[:16]}"


def compute_chunks(
    folder: Path,
    config: Config,
    rows: Sequence[LabelledImage],
    work: Callable[[Config, Sequence[LabelledImage], Path], object],
    initializer: Callable[[Config], None],
    *,
    chunk_rows: int,
    workers: int = 1,
    what: str = "computing",
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Every chunk file of `rows` in `folder` (created, with `manifest.json`), in order:
    `work(config, chunk, target)` writes the missing ones in `workers` processes, each set up
    once by `initializer(config)`. `progress(done_rows, total_rows)` follows each chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(asdict(config), indent=2) + "\n")  # type: ignore[call-overload]
    chunks = [
        (rows[start : start + chunk_rows], folder / f"chunk-{start // chunk_rows:05d}.npz")
        for start in range(0, len(rows), chunk_rows)
    ]
    todo = [(chunk, target) for chunk, target in chunks if not target.is_file()]
    done = len(rows) - sum(len(chunk) for chunk, _ in todo)
    if todo:
        logger.info("%s %d of %d rows into %s", what, len(rows) - done, len(rows), folder)
        with ProcessPoolExecutor(
            max_workers=max(1, workers), initializer=initializer, initargs=(config,)
        ) as pool:
            futures = [
                (len(chunk), pool.submit(work, config, chunk, target)) for chunk, target in todo
            ]
            for size, future in futures:
                future.result()
                done += size
                if progress is not None:
                    progress(done, len(rows))
    return [target for _, target in chunks]
