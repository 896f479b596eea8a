"""The local engine of `agelens batch`: threads decode a bounded window of images ahead of
batched inference in this process."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from agelens.batch.core import BatchOptions, ImageRows, analyze_loaded, source_loader
from agelens.intake import LoadedImage

if TYPE_CHECKING:
    from agelens.pipeline import Analyzer

logger = logging.getLogger(__name__)


def iter_image_rows(
    sources: Iterable[str],
    analyzer: Analyzer,
    options: BatchOptions,
    *,
    done: dict[str, str | None] | None = None,
) -> Iterator[ImageRows]:
    """Rows for each source, in input order, decoding ahead of inference in `options.workers`
    threads. Sources in `done` with an unchanged content hash come back `skipped`.

    Memory is bounded by the read-ahead window, whatever the number of sources. Closing the
    iterator early stops the decode threads.
    """
    loader = source_loader(analyzer, options, done)
    ahead = 2 * options.batch_size + options.workers
    pool = ThreadPoolExecutor(options.workers, thread_name_prefix="agelens-decode")
    window: deque[Future[LoadedImage]] = deque()
    batch: list[LoadedImage] = []
    try:
        for source in sources:
            window.append(pool.submit(loader.load, source))
            while len(window) >= ahead:
                batch.append(window.popleft().result())
                if len(batch) >= options.batch_size:
                    yield from analyze_loaded(analyzer, batch, options)
                    batch = []
        while window:
            batch.append(window.popleft().result())
            if len(batch) >= options.batch_size:
                yield from analyze_loaded(analyzer, batch, options)
                batch = []
        if batch:
            yield from analyze_loaded(analyzer, batch, options)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        loader.close()
