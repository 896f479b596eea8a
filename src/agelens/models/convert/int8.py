"""Static int8 versions of the faceres classifiers, built at load from ranges shipped with heads.

Static QDQ quantization (ONNX Runtime's `quantize_static`: int8 weights per output channel,
uint8 activations, MinMax ranges) makes the 192-px faceres network about 3x faster on a CPU
with VNNI (8.9 -> 2.9 ms a face, batch 16, one thread, 2026-12-07) after ONNX Runtime's
`quant_pre_process` (batch norms folded first; without it 4.4 ms). The activation ranges are
what calibration learns; they are stored as ONNX Runtime's calibration cache (a JSON file of
about 22 KB), which `agelens train` takes on a seeded sample of its training faces and ships
in the heads folder. Quantizing from it takes about half a second and gives the same graph as
calibrating, so agelens builds the int8 graph from the float one at load and caches it under
`$AGELENS_HOME/derived`, instead of shipping a second copy of the network.

Where int8 runs: uint8 x int8 products are exact with VNNI (`vpdpbusd` accumulates in 32 bits),
but on x86 CPUs without it ONNX Runtime pairs them in 16 bits (`vpmaddubsw`), which saturates,
so the same graph can give other numbers there. 7-bit weights (`reduce_range`) avoid that but
cost accuracy (faceres's own age error on 343 UTKFace `dev` faces: 5.067 float, 5.062 int8,
5.388 7-bit), and uint8 weights are slower than float here (7.0 ms). So int8 runs only where it
is exact (`int8_is_exact`: x86-64 with AVX-512 VNNI or AVX-VNNI); elsewhere the same heads read
the float network, whose features differ by the quantization error only (measured in
docs/speed.md). `AGELENS_INT8=0` forces the float network, `AGELENS_INT8=1` int8 anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from agelens.files import write_atomically
from agelens.models.runtime import import_onnxruntime

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

#: Calibration faces `agelens train` takes for the ranges (a seeded sample of its faces).
CALIBRATION_FACES = 256
_BATCH = 16
#: Bumped when how ranges are taken or the graph is built changes, so that ranges and graphs
#: cached by an older recipe are not reused.
RECIPE_VERSION = 2
#: Days after which an int8 graph in `$AGELENS_HOME/derived` that no load has read is deleted
#: (when another graph of the same network is built).
STALE_AFTER_DAYS = 30
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def int8_is_exact(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU runs uint8 x int8 convolutions without 16-bit saturation (VNNI)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    present = _cpu_flags() if flags is None else set(flags)
    return any(flag in present for flag in _VNNI_FLAGS)


def int8_enabled() -> bool:
    """Whether int8 graphs run: `AGELENS_INT8` (0/1) if set, else `int8_is_exact()`."""
    setting = os.environ.get("AGELENS_INT8", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting:
        raise ValueError(f"AGELENS_INT8 must be 0 or 1, not {setting!r}")
    return int8_is_exact()


def _prepared(model: onnx.ModelProto, folder: Path) -> Path:
    """The float graph after ONNX Runtime's quantization pre-processing, saved in `folder`."""
    import onnx

    import_onnxruntime()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = folder / "float.onnx", folder / "prepared.onnx"
    onnx.save(model, str(source))
    # With ONNX's shape inference alone (skip_symbolic_shape) the faceres graph quantized
    # wrongly: embedding cosine 0.76 to the float one's instead of 0.994 on 72 UTKFace faces.
    # The symbolic inference needs sympy (a dependency of agelens for this).
    quant_pre_process(str(source), str(target))
    return target


def _quantize(
    prepared: Path, target: Path, ranges: Path, chips: NDArray[np.float32] | None
) -> None:
    import onnx

    import_onnxruntime()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        """The chips in batches, as calibration reads them."""

        def __init__(self, input_name: str, chips: NDArray[np.float32]) -> None:
            self._feeds = iter(
                [{input_name: chips[i : i + _BATCH]} for i in range(0, len(chips), _BATCH)]
            )

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            return next(self._feeds, None)

    reader = None
    if chips is not None:
        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        reader = Batches(input_name, chips)
    quantize_static(
        str(prepared),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibration_cache_path=str(ranges),
    )


def calibrate(model: onnx.ModelProto, chips: NDArray[np.float32], ranges: Path) -> None:
    """Write the activation ranges of `model` on `chips` (normalised network inputs) to
    `ranges` (ONNX Runtime's calibration cache), atomically.

    ONNX Runtime writes the tensors in an order that changes from process to process (a set's,
    under Python's hash seed), so the file is rewritten with sorted keys: the same faces give
    the same bytes, hence the same sha256 in a card and the same feature cache. The order does
    not change the int8 graph built from it."""
    if len(chips) == 0:
        raise ValueError("int8 calibration needs at least one face")
    with tempfile.TemporaryDirectory(prefix="agelens-int8-") as work:
        folder = Path(work)
        cache = folder / "ranges.json"
        _quantize(_prepared(model, folder), folder / "int8.onnx", cache, chips)
        canonical = json.dumps(json.loads(cache.read_text(encoding="utf-8")), sort_keys=True)
        write_atomically(ranges, lambda path: path.write_text(canonical, encoding="utf-8"))


def _range_names(ranges: Path) -> set[str]:
    try:
        data = json.loads(ranges.read_text(encoding="utf-8"))
        return set(data["data"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{ranges} is not an int8 ranges file: {error}") from error


def quantized(model: onnx.ModelProto, ranges: Path) -> bytes:
    """The int8 graph of `model` with the activation ranges in `ranges` (see `calibrate`).

    Raises ValueError when the ranges were not taken on this graph (their tensors are not
    the pre-processed graph's: another network, or another ONNX Runtime's pre-processing).
    """
    import onnx

    names = _range_names(ranges)
    with tempfile.TemporaryDirectory(prefix="agelens-int8-") as work:
        folder = Path(work)
        prepared = _prepared(model, folder)
        graph = onnx.load(str(prepared)).graph
        tensors = {name for node in graph.node for name in node.output}
        tensors.update(i.name for i in graph.input)
        unknown = names - tensors
        if unknown:
            raise ValueError(
                f"{ranges.name} holds ranges of {len(unknown)} tensors this graph does not "
                f"have (e.g. {sorted(unknown)[0]!r}): ranges of another network or ONNX Runtime"
            )
        # ONNX Runtime reads the cache from a path it may not write to: work on a copy.
        cache = folder / "ranges.json"
        cache.write_bytes(ranges.read_bytes())
        _quantize(prepared, folder / "int8.onnx", cache, None)
        return (folder / "int8.onnx").read_bytes()


def cached_quantized(model: onnx.ModelProto, ranges: Path, cache_dir: Path, label: str) -> bytes:
    """`quantized(model, ranges)`, kept in `cache_dir` under a name that changes with the
    float graph, the ranges, ONNX Runtime's version and this recipe, so a stale graph is never
    read. Works without the cache (logged) when `cache_dir` cannot be written."""
    import onnx

    onnxruntime = import_onnxruntime()
    key = hashlib.sha256()
    key.update(model.SerializeToString())
    key.update(ranges.read_bytes())
    key.update(f"{onnxruntime.__version__}/{onnx.__version__}/{RECIPE_VERSION}".encode())
    path = cache_dir / f"{label}-int8-{key.hexdigest()[:16]}.onnx"
    try:
        data = path.read_bytes()
    except OSError:
        pass
    else:
        with contextlib.suppress(OSError):  # marks it in use (see prune_stale_graphs)
            os.utime(path)
        return data
    data = quantized(model, ranges)
    try:
        write_atomically(path, lambda target: target.write_bytes(data))
    except OSError as error:
        logger.warning(
            "could not keep the int8 graph in %s (%s); built in memory", cache_dir, error
        )
    else:
        prune_stale_graphs(cache_dir, label, keep=path)
    return data


def prune_stale_graphs(
    cache_dir: Path, label: str, *, keep: Path, days: float = STALE_AFTER_DAYS
) -> list[Path]:
    """Delete `label`'s other int8 graphs in `cache_dir` that no load has read for `days`
    (a load touches the graph it reads): those of earlier heads, ranges or ONNX Runtime
    versions. A graph still in use by another installation sharing the folder is read, and
    so kept, unless that installation has not run for `days`; it is then rebuilt in a few
    seconds. Returns what was deleted."""
    cutoff = time.time() - days * 86400
    deleted = []
    for old in cache_dir.glob(f"{label}-int8-*.onnx"):
        if old == keep:
            continue
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
                deleted.append(old)
                logger.info("deleted %s, unused for %g days", old, days)
    return deleted
