"""Cydral age and gender networks (dlib-models), aligned with dlib's 5-point landmarks.

The networks were trained on dlib "face chips": a similarity transform computed from dlib's
5-point landmarks with 20% padding. We run dlib's own shape predictor and chip extraction so
the chips are the ones the networks expect; feeding plain box crops costs accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agelens.models.base import Chips, RGBImage
from agelens.models.distribution import estimates, expected_age
from agelens.models.fetch import model_file
from agelens.models.runtime import create_session
from agelens.models.spec import DlibChipParams, ModelSpec
from agelens.types import AgeGenderEstimate, Detection

#: Half-width of the 80% age interval as `a + b * age`, fitted on UTKFace `dev` residuals by
#: `python scripts/fit_ensemble.py`. The network's own distribution is far too confident (its
#: central 80% is often 2 years wide), so it is not used for the interval.
INTERVAL_COEFFICIENTS = (2.7539, 0.1951)

#: The class ages of the 81-way age output: class 0 stands for babies (0.25 years).
AGE_CLASS_YEARS = np.array([0.25, *range(1, 81)], dtype=np.float32)


class CydralEstimator:
    """Age (81-way distribution) and gender from 64-px and 32-px dlib chips."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        threads: int | None = None,
        embedding_outputs: bool = False,
        age_model: Path | None = None,
    ) -> None:
        import dlib

        self.name = spec.name
        self.spec = spec
        self._dlib: Any = dlib
        self._landmarks = dlib.shape_predictor(str(model_file(spec, "landmarks_5.dat")))
        # `embedding_outputs` also exposes each network's last hidden layer (`layer_1_flatten`),
        # for agelens.models.embeddings, so that it need not load the networks a second time.
        extra = ("layer_1_flatten",) if embedding_outputs else ()
        # `age_model`: a fine-tuned age network to run instead (agelens.models.finetuned).
        self._age = create_session(
            age_model or model_file(spec, "age.onnx"), threads, extra_outputs=extra
        )
        self._gender = create_session(model_file(spec, "gender.onnx"), threads, extra_outputs=extra)
        chips = spec.params_as(DlibChipParams)
        self._age_chip = chips.age_chip
        self._gender_chip = chips.gender_chip
        self._padding = chips.chip_padding
        self._mean = np.asarray(spec.mean, dtype=np.float32)

    def version(self) -> str:
        """Model name and the package it came from."""
        return f"{self.name} ({self.spec.source.pinned})"

    def landmarks(self, image: RGBImage, detection: Detection) -> Any:
        """dlib's 5-point landmarks of the face in `detection`'s box."""
        x1, y1, x2, y2 = (round(v) for v in detection.box_xyxy)
        return self._landmarks(image, self._dlib.rectangle(x1, y1, x2, y2))

    def chip(self, image: RGBImage, shape: Any, size: int, padding: float) -> NDArray[np.uint8]:
        """dlib's face chip of `size` px at `padding` around the landmarks `shape`."""
        details = self._dlib.get_face_chip_details(shape, size, padding)
        return np.asarray(self._dlib.extract_image_chip(image, details), np.uint8)

    @property
    def padding(self) -> float:
        """dlib chip padding the networks were trained with."""
        return self._padding

    def run_age_network(self, outputs: Sequence[str], batch: NDArray[np.float32]) -> list[Any]:
        """The age network's named outputs for a normalised batch `(N, 3, 64, 64)`."""
        return list(self._age.run(list(outputs), {"images": batch}))

    def run_gender_network(self, outputs: Sequence[str], batch: NDArray[np.float32]) -> list[Any]:
        """The gender network's named outputs for a normalised batch `(N, 3, 32, 32)`."""
        return list(self._gender.run(list(outputs), {"images": batch}))

    def _normalise(self, chips: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        batch = np.stack(chips).astype(np.float32)
        return np.ascontiguousarray(((batch - self._mean) * self.spec.scale).transpose(0, 3, 1, 2))

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """64-px age chips and 32-px gender chips, each extracted from the original image."""
        if not detections:
            return {}
        image = np.ascontiguousarray(image)
        age_chips: list[NDArray[np.uint8]] = []
        gender_chips: list[NDArray[np.uint8]] = []
        for detection in detections:
            shape = self.landmarks(image, detection)
            for size, out in ((self._age_chip, age_chips), (self._gender_chip, gender_chips)):
                out.append(self.chip(image, shape, size, self._padding))
        return {
            "cydral_age": self._normalise(age_chips),
            "cydral_gender": self._normalise(gender_chips),
        }

    def age_probabilities(self, chips: Chips) -> NDArray[np.float32]:
        """The age network's class probabilities `(N, classes)` (81 for age-v1)."""
        age = self._age.run(["probabilities"], {"images": chips["cydral_age"]})[0]
        return np.asarray(age, dtype=np.float32)

    def male_probability(self, chips: Chips) -> NDArray[np.float32]:
        """The gender network's P(male) `(N,)`."""
        gender = self._gender.run(["probabilities"], {"images": chips["cydral_gender"]})[0]
        return np.asarray(gender[:, 1], dtype=np.float32)

    def predict(self, chips: Chips) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Raw outputs: age class probabilities `(N, 81)` and P(male) `(N,)`."""
        return self.age_probabilities(chips), self.male_probability(chips)

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """Expected age, the central 80% of the age distribution, P(male)."""
        if not chips:
            return []
        age_probabilities, male = self.predict(chips)
        ages = expected_age(age_probabilities, AGE_CLASS_YEARS)
        a, b = INTERVAL_COEFFICIENTS
        return estimates(ages, a + b * ages, male)
