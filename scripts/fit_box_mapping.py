"""Fit the mapping from short-range BlazeFace boxes onto the full-range convention.

The estimators' crops were tuned on full-range boxes; short-range boxes are drawn smaller and
lower (`RangeSwitchingDetector.SHORT_TO_FULL_BOX`). This script measures, on padded UTKFace
`dev` faces found by both models (the scored face of each image), the median ratio of the box
sides and the median vertical offset of the centres, for the short-range model at each input
size asked for. It prints the numbers to put in `blazeface.py`:

    python scripts/fit_box_mapping.py --rows 2000 --sizes 128 96

Reads ../shared/data/utkface (never the `test` rows); exits cleanly when it is absent.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from agelens.evaluate import LabelledImage, iter_scored_faces, read_labels
from agelens.models.blazeface import BlazeFaceDetector
from agelens.models.registry import get_spec

logger = logging.getLogger("fit_box_mapping")

UTKFACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface"


def scored_boxes(
    data: Path, rows: list[LabelledImage], pad: float, detector: BlazeFaceDetector
) -> list[tuple[float, float, float, float] | None]:
    """The scored face's box of each row's padded image, or None where nothing was found."""
    return [
        None if found is None else found[1].box_xyxy
        for found in iter_scored_faces(data, rows, pad, detector)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=UTKFACE)
    parser.add_argument("--rows", type=int, default=2000, help="dev rows sampled (seeded)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 96])
    parser.add_argument("--pad", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.data / "labels.csv").is_file():
        logger.info("no labelled data at %s: nothing to fit", args.data)
        return 0
    rows = read_labels(args.data / "labels.csv", split="dev", limit=args.rows)
    full = scored_boxes(
        args.data,
        rows,
        args.pad,
        BlazeFaceDetector(get_spec("blazeface-full"), threads=1, tiled=False),
    )
    for size in args.sizes:
        short_detector = BlazeFaceDetector(
            get_spec("blazeface-short"), threads=1, tiled=False, input_size=size
        )
        short = scored_boxes(args.data, rows, args.pad, short_detector)
        ratios, shifts = [], []
        for a, b in zip(short, full, strict=True):
            if a is None or b is None:
                continue
            side_short = np.sqrt((a[2] - a[0]) * (a[3] - a[1]))
            side_full = np.sqrt((b[2] - b[0]) * (b[3] - b[1]))
            ratios.append(side_short / side_full)
            corrected_height = (a[3] - a[1]) * side_full / side_short
            shifts.append(((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) / corrected_height)
        logger.info(
            "short-range at %d px: %d faces found by both; side ratio %.3f (factor 1 / ratio), "
            "upward shift %.4f of the corrected height",
            size,
            len(ratios),
            float(np.median(ratios)),
            float(np.median(shifts)),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
