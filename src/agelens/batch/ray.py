"""The Ray engine of `agelens batch` (`--engine ray`; needs `pip install 'agelens[ray]'`).

Ray Data reads the list of sources, and `map_batches` sends batches of them to a pool of actors,
each holding one Analyzer (its models load once per actor, not once per batch). An actor reads,
hashes and decodes its batch with the same `SourceLoader` as the local engine and analyses it
with one batched `Analyzer.analyze_arrays` call, returning the rows (`agelens.rows`) as an Arrow
table. The driver streams the tables back and commits them through the same part store as the
local engine, so the output, the crash safety and `--resume` are the same whichever engine ran.

Without `address`, a local Ray is started with `num_cpus = workers` and one actor per CPU, and
stopped at the end. With `address` (`ray://host:10001`, or `auto`), the run joins that cluster
with `workers` actors; the paths must then be readable on its nodes (shared storage, or URLs).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from agelens.batch.core import (
    BatchOptions,
    ImageRows,
    analyze_loaded,
    create_analyzer,
    source_loader,
)
from agelens.errors import require_extra
from agelens.rows import rows_to_table

if TYPE_CHECKING:
    import pyarrow

logger = logging.getLogger(__name__)


class AnalyzerActor:
    """A Ray Data map_batches callable: Arrow batch of `path` -> Arrow table of rows.

    Images done in an earlier run (in `done` with the same content hash) give no rows.
    """

    def __init__(self, options: BatchOptions, done: dict[str, str | None]) -> None:
        self.options = options
        self.analyzer = create_analyzer(options, workers=1)
        self.loader = source_loader(self.analyzer, options, done)

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        loaded = [self.loader.load(str(path)) for path in batch.column("path").to_pylist()]
        items = analyze_loaded(self.analyzer, loaded, self.options)
        return rows_to_table([row for item in items for row in item.rows])


def iter_image_rows_ray(
    sources: Iterable[str],
    options: BatchOptions,
    *,
    done: dict[str, str | None] | None = None,
    address: str | None = None,
) -> Iterator[ImageRows]:
    """Rows per image from a Ray actor pool of `options.workers` actors, in input order.

    Images in `done` with an unchanged hash come back as `skipped` after the others. Raises
    MissingExtraError (naming `pip install 'agelens[ray]'`) when ray is not installed.
    """
    require_extra("ray", "ray")
    import ray
    import ray.data

    done = done or {}
    paths = list(sources)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            num_cpus=None if address else options.workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Ray 2.60 warns about its own defaults (use_push_based_shuffle) while building
            # the default context; nothing agelens sets, and an error under `-W error`.
            warnings.simplefilter("ignore", DeprecationWarning)
            context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True
        seen: set[str] = set()
        if paths:
            dataset = ray.data.from_items([{"path": path} for path in paths])
            mapped = dataset.map_batches(
                AnalyzerActor,
                batch_size=options.batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=options.workers),
                num_cpus=1,
                fn_constructor_kwargs={"options": options, "done": done},
            )
            tables = mapped.iter_batches(batch_size=None, batch_format="pyarrow")
            for item in _group_by_image(tables):
                seen.add(item.path)
                yield item
        for path in paths:
            if path not in seen and path in done:
                yield ImageRows(path, done[path], (), skipped=True)
    finally:
        if started_here:
            ray.shutdown()


def _group_by_image(tables: Iterable[pyarrow.Table]) -> Iterator[ImageRows]:
    """Consecutive rows of the same path are one image. The last image of a table is held
    back until the next table starts another, in case Ray cut a table between its rows."""
    current: list[dict[str, Any]] = []
    for table in tables:
        for row in table.to_pylist():
            if current and row["path"] != current[0]["path"]:
                yield ImageRows(current[0]["path"], current[0]["content_sha256"], tuple(current))
                current = []
            current.append(row)
    if current:
        yield ImageRows(current[0]["path"], current[0]["content_sha256"], tuple(current))
