"""Frames per second of `agelens video` on a 720p clip with five faces, against running
`analyze` on every frame, in the same run.

    python benchmarks/bench_video.py                       # default preset, 150 frames
    python benchmarks/bench_video.py --preset fastest --frames 300 --rounds 3

The clip is built first (as the tests build theirs, from five UTKFace test-split faces moving
over a plain wall with camera shake, light changes and noise; 1280x720 at 30 fps, H.264) and
is not timed. Then, in each round, in turn:

- `video --detect-every 1` and `video --detect-every 3`: what `agelens video CLIP --out
  tracks.parquet` does (decode in a thread, detect, track, estimate when due, fuse, write the
  track rows), with the default `--estimate-every 10`;
- the baseline: decode every frame and `Analyzer.analyze_arrays` it (detect and estimate every
  face of every frame), as a per-frame tool would.

Each figure is frames / wall-clock seconds including decoding; the best round of each counts
(load from other users of a shared machine only ever slows a round down). Ratios are against
the baseline of the same run. Skips cleanly (exit 0) without the shared UTKFace folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the clip builder lives with the tests

from agelens.pipeline import Analyzer  # noqa: E402
from agelens.video.run import run_video  # noqa: E402
from agelens.video.sources import open_source, prefetched  # noqa: E402
from agelens.video.tracking import TrackOptions, create_video_analyzer  # noqa: E402

logger = logging.getLogger("bench_video")


def build_clip(folder: Path, frames: int, utkface: Path, analyzer: Analyzer) -> Path:
    """A 1280x720, 30 fps clip of five people drifting slowly across a wall (faces the
    detector finds on a plain background, as in the tests)."""
    import numpy as np
    from PIL import Image
    from tests.video.clips import Appearance, background, compose, encode, utkface_people

    def found(face: np.ndarray) -> bool:
        # at the clip's frame size and face size, so the detector takes the path it takes
        # on the frames (on a small canvas blazeface-auto asks the short-range model too)
        canvas = np.full((720, 1280, 3), 128, np.uint8)
        canvas[250:470, 530:750] = np.asarray(Image.fromarray(face).resize((220, 220)))
        return len(analyzer.detector.detect_many([canvas])[0]) == 1

    people = utkface_people(utkface, 5, usable=found)
    size = (1280, 720)
    starts = [(80, 80), (480, 60), (880, 90), (240, 400), (700, 420)]
    appearances = [
        Appearance(
            person,
            lambda f, x=x, y=y, i=i: (x + 60 * f / frames, y + 20 * (i % 2) * f / frames, 220.0),
        )
        for i, (person, (x, y)) in enumerate(zip(people, starts, strict=True))
    ]
    wall = background(size, seed=5)
    images, _tiles = compose(size, frames, appearances, lambda _: wall)
    return encode(folder / "bench720p.mp4", images, 30)


def time_tracking(clip: Path, analyzer: Analyzer, detect_every: int, out: Path) -> float:
    start = time.perf_counter()
    run = run_video(clip, analyzer, options=TrackOptions(detect_every=detect_every), out=out)
    seconds = time.perf_counter() - start
    logger.info("detect every %d: %d people", detect_every, len(run.people))
    return run.frames / seconds


def time_per_frame_analyze(clip: Path, analyzer: Analyzer) -> float:
    start = time.perf_counter()
    frames = 0
    with open_source(clip) as video:
        for frame in prefetched(iter(video)):
            analyzer.analyze_arrays([frame.image])
            frames += 1
    return frames / (time.perf_counter() - start)


def main() -> None:
    """Build the clip, time each configuration in rounds, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, help="default: balanced")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--utkface", type=Path, default=REPO_ROOT.parent / "shared/data/utkface")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not (arguments.utkface / "labels.csv").is_file():
        print(f"skipped: {arguments.utkface} is absent")
        return
    analyzer = create_video_analyzer(arguments.preset, threads=arguments.threads)
    figures: dict[str, list[float]] = {"detect_every_1": [], "detect_every_3": [], "analyze": []}
    with tempfile.TemporaryDirectory() as folder:
        clip = build_clip(Path(folder), arguments.frames, arguments.utkface, analyzer)
        out = Path(folder) / "tracks.parquet"
        time_tracking(clip, analyzer, 1, out)  # warm-up: sessions, caches
        for round_index in range(arguments.rounds):
            figures["detect_every_1"].append(time_tracking(clip, analyzer, 1, out))
            figures["detect_every_3"].append(time_tracking(clip, analyzer, 3, out))
            figures["analyze"].append(time_per_frame_analyze(clip, analyzer))
            logger.info("round %d: %s", round_index + 1, {k: v[-1] for k, v in figures.items()})
    best = {name: max(values) for name, values in figures.items()}
    report = {
        "clip": f"1280x720, 30 fps, {arguments.frames} frames, 5 faces of 220 px",
        "preset": arguments.preset or "balanced",
        "models": analyzer.models,
        "frames_per_second": {k: round(v, 1) for k, v in best.items()},
        "every_round": {k: [round(v, 1) for v in values] for k, values in figures.items()},
        "ratio_to_per_frame_analyze": {
            k: round(best[k] / best["analyze"], 2) for k in ("detect_every_1", "detect_every_3")
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
