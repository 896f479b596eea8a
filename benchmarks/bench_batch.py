"""Throughput of `agelens batch` (agelens.batch.run_batch) by engine and worker count.

Runs the same UTKFace `test` images (labels.csv split == test; `--limit` of them, the first ones
in file order), each padded by `--pad` (default 50%, as `agelens eval --pad` and bench_speed.py
do: UTKFace's tight crops hide faces from the full-range detector) and saved once as JPEG files
in a temporary folder before anything is timed, through the local engine with 1 and 2 workers
and through the Ray engine with 1 and 2 actors (one local Ray with `--ray-cpus` CPUs, started
once, so its start-up is not timed), each writing Parquet to a temporary folder. Figures are
printed as ratios against the local engine with 1 worker measured in the same run, the only
comparison a shared machine supports.

Two rates per configuration: end to end (the whole `run_batch` call: model loading, Ray actors
starting, the final merge) and net of start-up: (N - n) / (T(N) - T(n)), where T(n) is the time
of a run of the same configuration on only the first n = `--startup-images` images (which costs
the same start-up and merge). Net is the rate a long run approaches.

    AGELENS_HOME=/tmp/agelens-home python benchmarks/bench_batch.py --limit 500
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agelens.batch import BatchOptions, BatchSummary, run_batch
from agelens.evaluate import pad_image
from agelens.imaging import encode_jpeg, load_image

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_UTKFACE = REPO_ROOT.parent / "shared" / "data" / "utkface"
logger = logging.getLogger("bench_batch")


def _padded_test_images(
    utkface_dir: Path, limit: int | None, pad: float, folder: Path
) -> list[str]:
    with (utkface_dir / "labels.csv").open() as file:
        rows = [r for r in csv.DictReader(file) if r["split"] == "test"]
    paths = []
    for index, row in enumerate(rows[:limit]):
        target = folder / f"{index:05d}.jpg"
        image = pad_image(load_image(utkface_dir / row["file"]), pad)
        target.write_bytes(encode_jpeg(image, quality=95))
        paths.append(str(target))
    return paths


def _timed_run(
    images: list[str], options: BatchOptions, engine: str, out: Path
) -> tuple[float, BatchSummary]:
    start = time.perf_counter()
    summary = run_batch(
        images, out, options=options, engine="ray" if engine == "ray" else "local", overwrite=True
    )
    return time.perf_counter() - start, summary


def _measure(
    name: str,
    images: list[str],
    startup_images: int,
    options: BatchOptions,
    engine: str,
    folder: Path,
) -> dict[str, Any]:
    logger.info("%s: %d images, then %d", name, startup_images, len(images))
    short_seconds, _ = _timed_run(images[:startup_images], options, engine, folder / "short.pq")
    seconds, summary = _timed_run(images, options, engine, folder / f"{name}.parquet")
    return {
        "config": name,
        "images": summary.images,
        "faces": summary.faces,
        "errors": summary.error_images,
        "seconds": seconds,
        "startup_run_seconds": short_seconds,
        "images_per_second": summary.images / seconds,
        "net_images_per_second": (len(images) - startup_images) / (seconds - short_seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utkface-dir", type=Path, default=DEFAULT_UTKFACE)
    parser.add_argument("--limit", type=int, default=None, help="first N test images (all 4,646)")
    parser.add_argument("--pad", type=float, default=0.5, help="border, fraction of the size")
    parser.add_argument("--detector", default="blazeface-full")
    parser.add_argument("--estimator", default="ensemble")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--startup-images", type=int, default=32)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="local engine only")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not (args.utkface_dir / "labels.csv").is_file():
        print(f"{args.utkface_dir} is absent; nothing to measure")
        return 0
    configs = [("local-1w", "local", 1), ("local-2w", "local", 2)]
    if not args.no_ray:
        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        configs += [("ray-1a", "ray", 1), ("ray-2a", "ray", 2)]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "images").mkdir()
        images = _padded_test_images(
            args.utkface_dir, args.limit, args.pad, Path(folder) / "images"
        )
        for name, engine, workers in configs:
            options = BatchOptions(
                detector=args.detector,
                estimator=args.estimator,
                batch_size=args.batch_size,
                workers=workers,
                threads=1,
            )
            results.append(
                _measure(name, images, args.startup_images, options, engine, Path(folder))
            )
    baseline = results[0]
    print(
        f"{len(images)} UTKFace test images padded {args.pad:.0%}, "
        f"{args.detector}:{args.estimator}, batch {args.batch_size}, threads=1"
    )
    print(f"{'config':<10} {'img/s':>7} {'ratio':>6} {'net':>7} {'ratio':>6} {'faces':>6}")
    for r in results:
        r["ratio"] = r["images_per_second"] / baseline["images_per_second"]
        r["net_ratio"] = r["net_images_per_second"] / baseline["net_images_per_second"]
        print(
            f"{r['config']:<10} {r['images_per_second']:7.1f} {r['ratio']:5.2f}x "
            f"{r['net_images_per_second']:7.1f} {r['net_ratio']:5.2f}x {r['faces']:6d}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
