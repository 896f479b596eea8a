"""Networks fine-tuned by `agelens finetune`: the model folders it writes.

`"backbone": "cydral"` (FinetunedCydralEstimator): a folder holds `card.json` (`"kind":
"agelens-finetuned"`, training data and command, the validation metrics per epoch, the 80%
interval's half-width by age, the sha256 of each file, checked at load), `age.onnx`
(`images (N, 3, 64, 64)` -> `probabilities (N, 101)`, ages 0..100) and `MODEL_CARD.md`.
Alignment (dlib 5-point chips) and gender (Cydral gender-v1) are those of the registered
`cydral` model, which must be fetched.

`"backbone": "faceapi"` (FinetunedFaceApiEstimator): `age_gender.onnx` (`input (N, 3, S, S)`
-> `age_probabilities (N, 101)`, `gender_probability (N,)`, S = the card's `input_size`), with
face-api's square crop and normalisation; it needs nothing fetched.

`"backbone": "faceres-deep"` (FinetunedFaceResEstimator): `age_gender.onnx` (`input_1 (N, S,
S, 3)` -> the same outputs), faceres-deep's square crop (box x 1.25), BGR minus the Caffe
means; it needs nothing fetched either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agelens.errors import UnknownModelError
from agelens.models.base import Chips, Estimator, RGBImage
from agelens.models.distribution import estimates
from agelens.models.heads import read_card, verify_card_files
from agelens.models.runtime import create_session
from agelens.types import AgeGenderEstimate, Detection

FINETUNED_KIND = "agelens-finetuned"
AGE_FILE = "age.onnx"
FACEAPI_FILE = "age_gender.onnx"
MODEL_CARD_FILE = "MODEL_CARD.md"


def read_finetuned_card(folder: Path) -> dict[str, Any]:
    """The card of a fine-tuned model folder; UnknownModelError for any other folder."""
    return read_card(folder, FINETUNED_KIND)


class FinetunedCydralEstimator:
    """Cydral's alignment and gender network, the folder's fine-tuned age network."""

    def __init__(self, folder: Path, *, threads: int | None = None) -> None:
        from agelens.models.cydral import CydralEstimator
        from agelens.models.registry import get_spec

        card = read_finetuned_card(folder)
        verify_card_files(folder, card["files"], "fine-tune the model again")
        self.card = card
        self.name = str(card["name"])
        # Cydral's alignment and gender-v1, unchanged, with the folder's age network.
        self._cydral = CydralEstimator(
            get_spec("cydral"), threads=threads, age_model=folder / AGE_FILE
        )
        self._ages = np.arange(int(card["age_classes"]), dtype=np.float64)
        self._knots_x = np.asarray(card["interval"]["knots_x"], dtype=np.float64)
        self._knots_y = np.asarray(card["interval"]["knots_y"], dtype=np.float64)

    def version(self) -> str:
        """Model name and what it was made from."""
        return f"{self.name} (agelens fine-tuned age over {self._cydral.version()})"

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """Cydral's 64-px age and 32-px gender chips."""
        return self._cydral.align(image, detections)

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """Expected age (0..100), the 80% interval from validation residuals, P(male)."""
        if not chips:
            return []
        ages = self._cydral.age_probabilities(chips).astype(np.float64) @ self._ages
        widths = np.interp(ages, self._knots_x, self._knots_y)
        return estimates(ages, widths, self._cydral.male_probability(chips))


class FinetunedFaceApiEstimator:
    """face-api's crop at the card's input size, the folder's fine-tuned network; with the
    card's `"mirror": true`, each face and its mirror image, their age distributions and
    P(male) averaged (twice the network's time)."""

    #: the card's `backbone` this class reads, and its registry spec
    backbone = "faceapi"
    #: how errors name the network
    _label = "face-api"
    #: the image width's axis in the network's input (NCHW)
    _width_axis = 3

    def __init__(self, folder: Path, *, threads: int | None = None) -> None:
        from agelens.models.registry import get_spec

        card = read_finetuned_card(folder)
        if card.get("backbone") != self.backbone:
            raise UnknownModelError(f"{folder} does not hold a fine-tuned {self._label} network")
        verify_card_files(folder, card["files"], "fine-tune the model again")
        self.card = card
        self.name = str(card["name"])
        self.spec = get_spec(self.backbone)
        self._size = int(card["input_size"])
        self._session = create_session(folder / FACEAPI_FILE, threads)
        self._input = self._session.get_inputs()[0].name
        self._ages = np.arange(int(card["age_classes"]), dtype=np.float64)
        self._knots_x = np.asarray(card["interval"]["knots_x"], dtype=np.float64)
        self._knots_y = np.asarray(card["interval"]["knots_y"], dtype=np.float64)
        self.mirror = bool(card.get("mirror", False))

    def version(self) -> str:
        """Model name and what it was made from."""
        mirrored = ", with its mirror image" if self.mirror else ""
        return (
            f"{self.name} (agelens fine-tuned {self.spec.name} at {self._size} px{mirrored}, "
            f"{self.spec.source.pinned})"
        )

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """face-api's square crops at the fine-tuned input size."""
        from agelens.models.faceapi import faceapi_chips

        if not detections:
            return {}
        return {self.backbone: faceapi_chips(self.spec, image, detections, self._size)}

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """Expected age (0..100), the 80% interval from validation residuals, P(male)."""
        if not chips:
            return []
        faces = chips[self.backbone]
        if self.mirror:
            count = len(faces)
            both = np.concatenate([faces, np.flip(faces, axis=self._width_axis)])
            probabilities, male = self._session.run(None, {self._input: both})
            probabilities = (probabilities[:count] + probabilities[count:]) / 2
            male = (male[:count] + male[count:]) / 2
        else:
            probabilities, male = self._session.run(None, {self._input: faces})
        ages = probabilities.astype(np.float64) @ self._ages
        widths = np.interp(ages, self._knots_x, self._knots_y)
        return estimates(ages, widths, male.astype(np.float64))


class FinetunedFaceResEstimator(FinetunedFaceApiEstimator):
    """faceres-deep's crop (the detector's box squared x 1.25) at the card's input size, BGR
    minus the Caffe means, channels last, into the folder's fine-tuned network; `"mirror"` as
    for face-api."""

    backbone = "faceres-deep"
    _label = "faceres-deep"
    _width_axis = 2  # NHWC

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """faceres-deep's square crops at the fine-tuned input size."""
        from agelens.models.crops import crop_resized
        from agelens.models.faceapi import faceapi_crop_box

        if not detections:
            return {}
        chips = np.empty((len(detections), self._size, self._size, 3), dtype=np.float32)
        for chip, detection in zip(chips, detections, strict=True):
            crop = crop_resized(image, faceapi_crop_box(self.spec, detection), self._size)
            chip[...] = crop[..., ::-1]  # BGR
        chips -= np.asarray(self.spec.mean, dtype=np.float32)
        return {self.backbone: chips}


def load_finetuned(folder: Path, *, threads: int | None = None) -> Estimator:
    """The estimator of a fine-tuned model folder, by its card's backbone."""
    backbone = read_finetuned_card(folder).get("backbone")
    if backbone == "faceapi":
        return FinetunedFaceApiEstimator(folder, threads=threads)
    if backbone == FinetunedFaceResEstimator.backbone:
        return FinetunedFaceResEstimator(folder, threads=threads)
    return FinetunedCydralEstimator(folder, threads=threads)
