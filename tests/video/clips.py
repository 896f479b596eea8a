"""Test clips built at test time from real photos: no video ships with the repository.

Each clip is composed frame by frame from real faces (UTKFace chips, whose true age and gender
are known, and the astronaut photo) moving over a plain background: the camera pans, a face
zooms, people enter and leave, a face is covered for a few frames, and a scene cuts to other
people. The clip records, for every frame, where each person's face is (or that it is hidden),
so tests can tell which track is whom. Clips are encoded with FFmpeg through PyAV and take a
second or two to build; nothing is written into the repository.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

RGB = NDArray[np.uint8]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Person:
    """A real face with its known age and gender (`age`/`gender` are None when unknown)."""

    name: str
    face: RGB
    age: float | None
    gender: str | None


@dataclass(frozen=True)
class Appearance:
    """One person on screen: `place(frame)` gives the (x, y, side) of the person's square tile
    in that frame, or None when the person is not on screen; frames in `hidden` are covered by
    an occluder (the tile is drawn, then painted over)."""

    person: Person
    place: Callable[[int], tuple[float, float, float] | None]
    hidden: range = range(0)


@dataclass
class Clip:
    """A built clip and its truth: `tiles[frame][person name]` is the tile box (x1, y1, x2,
    y2) of every person visible (on screen, if only in part, and not covered) in that frame."""

    path: Path
    fps: int
    size: tuple[int, int]
    frame_count: int
    people: tuple[Person, ...]
    cuts: tuple[int, ...] = ()
    tiles: list[dict[str, Box]] = field(default_factory=list)

    def person_at(self, frame: int, point: tuple[float, float]) -> str | None:
        """The name of the person whose tile holds `point` in `frame`, or None."""
        x, y = point
        for name, (x1, y1, x2, y2) in self.tiles[frame].items():
            if x1 <= x <= x2 and y1 <= y <= y2:
                return name
        return None


def utkface_people(
    utkface_dir: Path,
    count: int,
    *,
    seed: int = 15,
    usable: Callable[[RGB], bool] = lambda _: True,
) -> list[Person]:
    """`count` adults from UTKFace's test split, drawn with a fixed seed, women and men
    alternating, skipping faces `usable` refuses (e.g. faces the detector does not find: the
    clips test tracking, not detection). Their chips are tight crops; the clips give them
    room around the face."""
    with (utkface_dir / "labels.csv").open(newline="") as file:
        rows = [r for r in csv.DictReader(file) if r["split"] == "test"]
    rows = [r for r in rows if 18 <= int(r["age"]) <= 70]
    rng = random.Random(seed)
    rng.shuffle(rows)
    candidates = {g: iter([r for r in rows if r["gender"] == g]) for g in ("F", "M")}
    people: list[Person] = []
    while len(people) < count:
        row = next(candidates["FM"[len(people) % 2]])
        face = np.asarray(Image.open(utkface_dir / row["file"]).convert("RGB"))
        if usable(face):
            name = Path(row["file"]).name.split(".")[0]
            people.append(Person(name, face, float(row["age"]), row["gender"]))
    return people


def background(size: tuple[int, int], seed: int) -> RGB:
    """A soft two-colour gradient with a little noise (like a wall, and faceless)."""
    width, height = size
    rng = np.random.default_rng(seed)
    top, bottom = rng.integers(40, 200, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    image = top * (1 - ramp) + bottom * ramp
    image = np.broadcast_to(image, (height, width, 3)) + rng.normal(0, 4, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def compose(
    size: tuple[int, int],
    frame_count: int,
    appearances: Sequence[Appearance],
    backgrounds: Callable[[int], RGB],
    *,
    seed: int = 0,
) -> tuple[list[RGB], list[dict[str, Box]]]:
    """The frames of a clip and, per frame, the visible people's tile boxes.

    Like a handheld camera filming people who move a little, every frame is a little
    different: each face tilts by up to 6 degrees and shakes by up to 3 px and 5% in size, the
    light changes by up to 8%, and sensor noise (sigma 5) is added.
    Without it, consecutive frames would be near copies and per-frame estimates would hardly
    vary, which is not what real video gives.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    frames, tiles = [], []
    for index in range(frame_count):
        canvas = Image.fromarray(backgrounds(index))
        visible: dict[str, Box] = {}
        for appearance in appearances:
            place = appearance.place(index)
            if place is None:
                continue
            x, y, side = place
            x, y = x + rng.uniform(-3, 3), y + rng.uniform(-3, 3)
            side *= 1 + rng.uniform(-0.05, 0.05)
            tile = (
                Image.fromarray(appearance.person.face)
                .rotate(rng.uniform(-6, 6), Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
                .resize((round(side), round(side)), Image.Resampling.BILINEAR)
            )
            canvas.paste(tile, (round(x), round(y)))
            box = (x, y, x + side, y + side)
            if index in appearance.hidden:
                canvas.paste((128, 128, 128), tuple(round(v) for v in box))
            elif x < width and y < height and x + side > 0 and y + side > 0:
                visible[appearance.person.name] = box
        light = rng.uniform(0.92, 1.08)
        noisy = np.asarray(canvas, dtype=np.float32) * light + rng.normal(0, 5, (height, width, 3))
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
        tiles.append(visible)
    return frames, tiles


def encode(
    path: Path,
    frames: Sequence[RGB],
    fps: int,
    *,
    codec: str = "libx264",
    audio: bool = False,
) -> Path:
    """Write `frames` (RGB) to `path` with PyAV; the container follows the suffix. With
    `audio`, a quiet 440 Hz tone track of the same length is muxed in too."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "20"}
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=16000)
            sound.layout = "mono"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            samples = round(16000 * len(frames) / fps)
            tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    tone[None, start : start + 1024], format="fltp", layout="mono"
                )
                chunk.sample_rate = 16000
                chunk.pts = start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return path


def _linear(
    start: tuple[float, float, float], end: tuple[float, float, float], first: int, last: int
) -> Callable[[int], tuple[float, float, float] | None]:
    """A tile moving (and scaling) in a straight line from `start` at frame `first` to `end`
    at frame `last`, on screen only in between."""

    def place(frame: int) -> tuple[float, float, float] | None:
        if not first <= frame <= last:
            return None
        t = (frame - first) / max(last - first, 1)
        x, y, side = (a + (b - a) * t for a, b in zip(start, end, strict=True))
        return x, y, side

    return place


def _walk_out(frame: int) -> tuple[float, float, float] | None:
    return (40.0, 200.0 + max(0, frame - 30) * 9.0, 140.0) if frame <= 50 else None


def crowd_clip(folder: Path, people: Sequence[Person], *, suffix: str = ".mp4") -> Clip:
    """Four people over 60 frames at 15 fps (640x360): the camera pans right to left across
    the first, the second zooms in (150 -> 190 px), the third walks in from the right edge, the
    fourth walks out at the bottom; the first is covered for frames 25-29. No paths cross."""
    size, fps, count = (640, 360), 15, 60
    first, second, third, fourth = people[:4]
    appearances = [
        Appearance(first, _linear((150, 40, 150), (60, 40, 150), 0, count - 1), range(25, 30)),
        Appearance(second, _linear((330, 30, 150), (300, 20, 190), 0, count - 1)),
        # Walks in from beyond the right edge, then stays where it stopped.
        Appearance(third, lambda f: (max(500.0, 660.0 - 9 * f), 190.0, 140.0)),
        # Stands still, then walks out at the bottom from frame 30 and is gone after 50.
        Appearance(fourth, _walk_out),
    ]
    wall = background(size, seed=1)
    frames, tiles = compose(size, count, appearances, lambda _: wall)
    path = encode(folder / f"crowd{suffix}", frames, fps, codec=_codec_for(suffix))
    return Clip(path, fps, size, count, tuple(people[:4]), (), tiles)


def cut_clip(folder: Path, people: Sequence[Person]) -> Clip:
    """Two people for 30 frames, then a cut to a different room with two others for 30."""
    size, fps, count = (640, 360), 15, 60
    a, b, c, d = people[:4]

    def scene(person: Person, x0: float, x1: float, first: int, last: int) -> Appearance:
        return Appearance(person, _linear((x0, 80, 160), (x1, 90, 160), first, last))

    appearances = [
        scene(a, 80, 110, 0, 29),
        scene(b, 380, 350, 0, 29),
        scene(c, 60, 90, 30, 59),
        scene(d, 420, 400, 30, 59),
    ]
    rooms = (background(size, seed=2), background(size, seed=3))
    frames, tiles = compose(size, count, appearances, lambda f: rooms[f >= 30])
    path = encode(folder / "cut.mp4", frames, fps, audio=True)
    return Clip(path, fps, size, count, (a, b, c, d), (30,), tiles)


def astronaut_clip(folder: Path, astronaut: RGB) -> Clip:
    """A slow zoom and pan over the astronaut photo (one person, about 42), 30 frames."""
    size, fps, count = (480, 270), 15, 30
    width = astronaut.shape[1]
    photo = Image.fromarray(astronaut)
    frames = []
    for index in range(count):
        t = index / (count - 1)
        crop_w = width * (1.0 - 0.3 * t)
        crop_h = crop_w * size[1] / size[0]
        left = (width - crop_w) * (0.3 + 0.2 * t)
        top = 0.0
        region = (left, top, left + crop_w, top + crop_h)
        frames.append(np.asarray(photo.resize(size, Image.Resampling.BILINEAR, region)))
    path = encode(folder / "astronaut.mp4", frames, fps)
    person = Person("astronaut", astronaut, 42.0, "F")
    return Clip(path, fps, size, count, (person,), (), [])


def _codec_for(suffix: str) -> str:
    return {".webm": "libvpx-vp9", ".avi": "mpeg4", ".mkv": "libx264", ".mov": "libx264"}.get(
        suffix, "libx264"
    )


def truncated_copy(clip: Path, target: Path, keep: float = 0.5) -> Path:
    """The first `keep` share of the clip's bytes: an MP4 cut off mid-stream."""
    data = clip.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def corrupted_copy(clip: Path, target: Path, *, start: float = 0.5, end: float = 0.8) -> Path:
    """The clip with random bytes (seeded) written over the share of its length between
    `start` and `end`: the header and the first frames stay intact."""
    data = bytearray(clip.read_bytes())
    rng = random.Random(0)
    for position in range(int(len(data) * start), int(len(data) * end)):
        data[position] = rng.randrange(256)
    target.write_bytes(bytes(data))
    return target
