"""Whole against reduced JPEG decoding on the path every door takes (the service's routes and
jobs, `agelens batch`): `agelens.intake.decode_for_analysis` then `Analyzer.analyze_decoded`.

For each photo, in turn and `--repeats` times (interleaved, so a busy machine slows both
alike), the same encoded bytes go through:

- whole: decoded at full size (`max_scale` None: what the service, jobs and `agelens batch`
  did before 2026-12-07, and still do for an image drawn on, sent back or cropped);
- reduced: decoded at the scale the detector allows (`Analyzer.max_decode_scale()`), and again,
  larger, only for a face too small in it.

Photos: the `samples/` JPEGs (1920-px group photos and small portraits) and, as phone photos,
each of them enlarged to a 4032-px long side (12 MP) and saved as JPEG quality 90. Prints
CPU milliseconds an image (the process's CPU time, one ONNX Runtime thread: less sensitive to
other processes than wall time), the ratio whole / reduced per set, and whether both paths found
the same number of faces.

    AGELENS_HOME=/tmp/agelens-home python benchmarks/bench_decoding.py --repeats 5
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path

from PIL import Image

from agelens.intake import IntakeOptions, decode_for_analysis
from agelens.models.backends import DEFAULT_DETECTOR, DEFAULT_ESTIMATOR
from agelens.pipeline import Analyzer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLES = REPO_ROOT.parent / "shared" / "data" / "samples"
PHONE_SIDE = 4032
logger = logging.getLogger("bench_decoding")


def phone_photo(data: bytes) -> bytes:
    """The photo enlarged to a `PHONE_SIDE` long side, as JPEG quality 90."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    factor = PHONE_SIDE / max(rgb.size)
    size = (round(rgb.width * factor), round(rgb.height * factor))
    buffer = io.BytesIO()
    rgb.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def cpu_ms(analyzer: Analyzer, data: bytes, reduced: bool) -> tuple[float, int]:
    """(CPU milliseconds, faces found) of decoding and analysing `data` one way."""
    limits = IntakeOptions()
    max_scale = analyzer.max_decode_scale() if reduced else None
    start = time.process_time()
    decoded = decode_for_analysis(data, "photo", limits, max_scale)
    (result,) = analyzer.analyze_decoded([decoded])
    return (time.process_time() - start) * 1000, len(result.faces)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-dir", type=Path, default=DEFAULT_SAMPLES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detector", default=DEFAULT_DETECTOR)
    parser.add_argument("--estimator", default=DEFAULT_ESTIMATOR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    paths = sorted(args.samples_dir.glob("*.jpg"))
    if not paths:
        logger.info("%s has no JPEGs (shared data absent): nothing to measure", args.samples_dir)
        return 0
    analyzer = Analyzer(args.detector, args.estimator, threads=1)
    sets = {
        "samples": {p.name: p.read_bytes() for p in paths},
        f"samples enlarged to {PHONE_SIDE} px": {
            p.name: phone_photo(p.read_bytes()) for p in paths
        },
    }
    print(
        f"{analyzer.detector.name} + {analyzer.estimator.version()}, 1 thread, "
        f"{args.repeats} repeats, CPU ms an image (decode + detect + estimate)"
    )
    print("| set | photo | whole | reduced | whole / reduced | faces whole / reduced |")
    print("|---|---|---|---|---|---|")
    for set_name, photos in sets.items():
        for data in photos.values():  # warm-up: first calls at each shape
            cpu_ms(analyzer, data, True)
            cpu_ms(analyzer, data, False)
        totals = {False: 0.0, True: 0.0}
        for name, data in photos.items():
            best = {False: float("inf"), True: float("inf")}
            faces = {False: 0, True: 0}
            for _ in range(args.repeats):
                for reduced in (False, True):
                    ms, faces[reduced] = cpu_ms(analyzer, data, reduced)
                    best[reduced] = min(best[reduced], ms)
            totals[False] += best[False]
            totals[True] += best[True]
            print(
                f"| {set_name} | {name} | {best[False]:.1f} | {best[True]:.1f} | "
                f"{best[False] / best[True]:.2f}x | {faces[False]} / {faces[True]} |"
            )
        count = len(photos)
        print(
            f"| {set_name} | **mean** | {totals[False] / count:.1f} | "
            f"{totals[True] / count:.1f} | **{totals[False] / totals[True]:.2f}x** | |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
