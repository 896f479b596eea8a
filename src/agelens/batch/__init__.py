"""Resumable batch analysis of photo collections: the engine behind `agelens batch`.

Inputs are folders (searched recursively for image files), glob patterns, manifests (`.csv` or
`.txt` listing paths or http(s) URLs), zips (their image files, `photos.zip/NAME`) and single
files or URLs. They are streamed, never listed in memory as a whole: `iter_sources` yields one
path at a time.

Each image becomes rows as `agelens.rows` defines them (one per face, one `no_face` row, or one
`error` row). A bad image never stops the run.

How the output is made, and why it survives a crash
----------------------------------------------------
Results are not written into OUT directly. They are committed, a few hundred images at a time,
as Parquet part files in the folder `OUT.parts/` (`part-000000.parquet`, ...). A part is written
under a temporary name, flushed to disk with fsync and then renamed, so a part file either exists
whole or not at all, whenever the process dies (SIGKILL included). A part only ever holds whole
images: all the rows of an image are committed together. `OUT.parts/settings.json` records the
models and options the rows were made with.

When every input is done, the parts are merged, in order, into a temporary file beside OUT (in
the format its suffix names: `.parquet`, `.csv` or `.jsonl`), which is then renamed to OUT, and
only then is `OUT.parts/` removed. The merge keeps, for each path, the rows of the last part that
holds it; so an image is in the output exactly once even if it was committed twice (a crash
between a rename and the bookkeeping after it) or re-analysed because its content changed.

`--resume` (`resume=True`) reads the `path` and `content_sha256` columns of the committed parts
and skips every image whose path is there with the same content hash (it is read and hashed
again, which is cheap; it is not decoded). An image whose bytes changed is analysed again and
its new rows replace the old ones. URLs are skipped by URL alone (hashing them would mean
fetching them). Resuming a finished run (OUT exists, no parts folder) first turns OUT back into
a part, so a folder that gained photos is brought up to date by analysing only the new ones.
Without `resume` or `overwrite`, an existing OUT or `OUT.parts/` is an error. Resuming with other
models or options than the parts were made with is refused.

Overlap and memory
------------------
The local engine reads and decodes images in `workers` threads (Pillow, OpenCV, hashlib and
ONNX Runtime release the GIL) a bounded window ahead of inference, which runs batched through
`Analyzer.analyze_arrays` (itself split into `workers` groups run side by side). At most about
`2 * batch_size + workers` decoded images and one uncommitted chunk of rows are held at a time,
whatever the size of the collection. The Ray engine (`agelens.batch.ray`) feeds the same
functions from Ray Data actors and commits through the same part store.

Library API
-----------
- `run_batch(inputs, out, options=..., resume=..., engine=...) -> BatchSummary`: the whole
  command, with a `progress` callback per image.
- `iter_image_rows(sources, analyzer, options)`: rows per image (`ImageRows`) for an iterable of
  paths or URLs, in input order, without any file output (for the jobs API and notebooks).
- `iter_sources(inputs)`, `read_output(path)`, `output_format(path)`.

Sources (`iter_sources`, `check_inputs`, manifests) and loading (`SourceLoader`, `LoadedImage`)
are `agelens.intake`'s, shared with every other door, and re-exported here.

Modules: `core` (options, analysis of loaded images, the part store: what both engines
share), `local` (the threaded engine), `ray` (the Ray engine, imported only when asked for)
and `run` (`run_batch`). Every public name is importable from `agelens.batch` itself.
"""

from agelens.batch.core import (
    BatchOptions,
    BatchSummary,
    Engine,
    ImageRows,
    OutputFormat,
    PartStore,
    analyze_loaded,
    create_analyzer,
    crop_name,
    output_format,
    parts_folder,
    read_output,
    save_crops,
)
from agelens.batch.local import iter_image_rows
from agelens.batch.run import count_sources, run_batch

# Sources and loading are agelens.intake's (every door reads through it); kept importable here.
from agelens.intake import (
    IMAGE_SUFFIXES,
    MANIFEST_PATH_COLUMNS,
    MANIFEST_SUFFIXES,
    LoadedImage,
    SourceLoader,
    check_inputs,
    is_url,
    iter_manifest,
    iter_sources,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST_PATH_COLUMNS",
    "MANIFEST_SUFFIXES",
    "BatchOptions",
    "BatchSummary",
    "Engine",
    "ImageRows",
    "LoadedImage",
    "OutputFormat",
    "PartStore",
    "SourceLoader",
    "analyze_loaded",
    "check_inputs",
    "count_sources",
    "create_analyzer",
    "crop_name",
    "is_url",
    "iter_image_rows",
    "iter_manifest",
    "iter_sources",
    "output_format",
    "parts_folder",
    "read_output",
    "run_batch",
    "save_crops",
]
