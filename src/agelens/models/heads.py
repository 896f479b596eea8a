"""Estimators agelens trained itself: small heads over registry backbones' embeddings.

A trained model is a folder written by `agelens train`:

- `card.json`: name, backbones, calibration, metrics, training data and command, licence
  notes, and the sha256 of `head.onnx` (checked at load);
- `head.onnx`: features -> age probabilities (ages 0..100) and a gender logit;
- `MODEL_CARD.md`: the same card for people.

Shipped models live in `agelens/trained/NAME/`; models a user trains go to
`$AGELENS_HOME/trained/NAME/` (or any folder, passed by path).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agelens.errors import ModelNotFetchedError, UnknownModelError
from agelens.models.base import Chips, RGBImage
from agelens.models.distribution import estimates
from agelens.models.embeddings import Backbone, create_backbone, embed_pair
from agelens.models.fetch import sha256_file
from agelens.models.runtime import create_session
from agelens.paths import agelens_home
from agelens.types import AgeGenderEstimate, Detection

CARD_FILE = "card.json"
HEAD_FILE = "head.onnx"
#: The model folders agelens writes: heads (`agelens train`) and fine-tuned Cydral age
#: networks (`agelens finetune`, agelens.models.finetuned).
TRAINED_KINDS = ("agelens-heads", "agelens-finetuned")
AGE_YEARS = np.arange(101, dtype=np.float64)


def shipped_dir() -> Path:
    """Folder of the trained models that ship inside the package."""
    return Path(__file__).resolve().parent.parent / "trained"


def user_dir() -> Path:
    """Folder where `agelens train` installs models by default."""
    return agelens_home() / "trained"


def card_kind(folder: Path) -> str | None:
    """The `kind` of the folder's card (one of TRAINED_KINDS), or None when it has no card
    agelens can read."""
    try:
        card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = card.get("kind") if isinstance(card, dict) else None
    return kind if kind in TRAINED_KINDS else None


def trained_folders() -> dict[str, Path]:
    """Every trained or fine-tuned model found, by name: shipped ones, then the user's (which
    may not shadow a shipped name)."""
    found: dict[str, Path] = {}
    for root in (shipped_dir(), user_dir()):
        if root.is_dir():
            for card in sorted(root.glob(f"*/{CARD_FILE}")):
                if card_kind(card.parent) is not None:
                    found.setdefault(card.parent.name, card.parent)
    return found


def find_trained(name_or_path: str) -> Path | None:
    """The folder of a trained model given its name or a path to its folder, else None."""
    path = Path(name_or_path).expanduser()
    if (path / CARD_FILE).is_file():
        return path
    return trained_folders().get(name_or_path)


def read_card(folder: Path, kind: str = "agelens-heads") -> dict[str, Any]:
    """The model card of a folder holding a model of `kind` (one of TRAINED_KINDS);
    UnknownModelError for any other folder."""
    card: dict[str, Any] = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    if card.get("kind") != kind:
        what = "trained" if kind == "agelens-heads" else "fine-tuned"
        raise UnknownModelError(f"{folder} does not hold an agelens {what} model")
    return card


def verify_card_files(folder: Path, files: dict[str, str], remedy: str) -> None:
    """Every file a trained model's card lists must be in `folder` with the card's sha256;
    ModelNotFetchedError ending with `remedy` otherwise."""
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ModelNotFetchedError(f"{path} is missing; {remedy}")
        if sha256_file(path) != expected:
            raise ModelNotFetchedError(
                f"{path} does not match the sha256 in its card ({expected[:16]}…); {remedy}"
            )


def sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))


def piecewise(
    x: NDArray[np.float64], knots_x: Sequence[float], knots_y: Sequence[float]
) -> NDArray[np.float64]:
    """Linear interpolation through the knots, continued with slope 1 beyond both ends."""
    xs, ys = np.asarray(knots_x), np.asarray(knots_y)
    inside = np.interp(x, xs, ys)
    below = ys[0] + (x - xs[0])
    above = ys[-1] + (x - xs[-1])
    return np.asarray(np.where(x < xs[0], below, np.where(x > xs[-1], above, inside)))


@dataclass(frozen=True, slots=True)
class HeadsCalibration:
    """Post-hoc maps fitted on out-of-fold predictions by `agelens train`.

    age: piecewise linear from the raw expected age (`age_knots_x`) to the reported age
    (`age_knots_y`), slope 1 beyond the ends. gender: P(male) = sigmoid(a * logit + b).
    interval: half-width of the 80% interval, piecewise linear in the reported age.
    """

    age_knots_x: tuple[float, ...]
    age_knots_y: tuple[float, ...]
    gender_scale: float
    gender_bias: float
    interval_knots_x: tuple[float, ...]
    interval_knots_y: tuple[float, ...]

    @classmethod
    def from_card(cls, data: dict[str, Any]) -> HeadsCalibration:
        """From a card's `calibration` object (the inverse of `dataclasses.asdict`)."""
        return cls(
            age_knots_x=tuple(float(v) for v in data["age_knots_x"]),
            age_knots_y=tuple(float(v) for v in data["age_knots_y"]),
            gender_scale=float(data["gender_scale"]),
            gender_bias=float(data["gender_bias"]),
            interval_knots_x=tuple(float(v) for v in data["interval_knots_x"]),
            interval_knots_y=tuple(float(v) for v in data["interval_knots_y"]),
        )

    def age(self, raw: NDArray[np.float64]) -> NDArray[np.float64]:
        """Reported ages from raw expected ages."""
        return piecewise(raw, self.age_knots_x, self.age_knots_y)

    def male(self, logit: NDArray[np.float64]) -> NDArray[np.float64]:
        """Calibrated P(male) from the heads' gender logit."""
        return sigmoid(self.gender_scale * logit + self.gender_bias)

    def half_width(self, age: NDArray[np.float64]) -> NDArray[np.float64]:
        """Half-width of the 80% interval at each reported age."""
        return np.asarray(np.interp(age, self.interval_knots_x, self.interval_knots_y))


class HeadsEstimator:
    """Runs the card's backbones on their own chips (and mirrored), then the trained heads."""

    def __init__(self, folder: Path, *, threads: int | None = None) -> None:
        card = read_card(folder)
        self.card = card
        self.name = str(card["name"])
        verify_card_files(folder, card["files"], "train it again or reinstall agelens")
        self.backbones: list[Backbone] = [
            create_backbone(name, threads=threads, folder=folder) for name in card["backbones"]
        ]
        self.calibration = HeadsCalibration.from_card(card["calibration"])
        self._session = create_session(folder / HEAD_FILE, threads)

    def version(self) -> str:
        """Model name and the backbones it reads."""
        members = ", ".join(b.version() for b in self.backbones)
        return f"{self.name} (agelens-trained heads over {members})"

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """Each backbone's chips, in one mapping."""
        if not detections:
            return {}
        chips: Chips = {}
        for backbone in self.backbones:
            chips.update(backbone.align(image, detections))
        return chips

    def features_pair(self, chips: Chips) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The backbones' features side by side (the head's input) of the faces and of their
        mirror images, each network run once on both together (`embeddings.embed_pair`)."""
        pairs = [embed_pair(b, chips) for b in self.backbones]
        face = np.concatenate([pair[0] for pair in pairs], axis=1)
        return face, np.concatenate([pair[1] for pair in pairs], axis=1)

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """Calibrated age and interval, calibrated P(male); face and mirror averaged."""
        if not chips:
            return []
        return self.estimate_features(*self.features_pair(chips))

    def estimate_features(
        self, face: NDArray[np.float32], mirrored: NDArray[np.float32]
    ) -> list[AgeGenderEstimate]:
        """`estimate` from the features of the faces and of their mirror images
        (`features_pair`),
        for a caller that also reads them (models/mixture.py)."""
        count = len(face)
        both = np.concatenate([face, mirrored])
        probabilities, logit = self._session.run(None, {"features": both})
        probabilities = (probabilities[:count] + probabilities[count:]) / 2
        logit = (logit[:count] + logit[count:]).astype(np.float64) / 2
        calibration = self.calibration
        ages = np.clip(calibration.age(probabilities.astype(np.float64) @ AGE_YEARS), 0, 110)
        widths = calibration.half_width(ages)
        male = calibration.male(logit)
        return estimates(ages, widths, male)
