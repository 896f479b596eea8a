"""face-api's AgeGenderNet (TinyXception), rebuilt as ONNX from its TF.js weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agelens.geometry import square_box
from agelens.models.base import Chips, RGBImage
from agelens.models.crops import crop_resized
from agelens.models.distribution import estimates
from agelens.models.fetch import model_file
from agelens.models.runtime import create_session
from agelens.models.spec import FaceCropParams, ModelSpec
from agelens.types import AgeGenderEstimate, Detection

#: Half-width of the 80% age interval as `a + b * age`, fitted on UTKFace `dev` residuals by
#: `python scripts/fit_ensemble.py` (face-api regresses one number, no distribution).
INTERVAL_COEFFICIENTS = (3.2059, 0.1348)


def faceapi_crop_box(
    spec: ModelSpec, detection: Detection, factor: float = 1.0
) -> NDArray[np.float32]:
    """The square region face-api's network sees: the detector's box, squared, scaled by
    the spec's `box_scale` (times `factor`) and moved down by `box_shift_y` of its height.
    BlazeFace boxes sit higher on the face than the boxes face-api was trained on; the shift
    was chosen on UTKFace `dev` rows (MAE 4.86 -> 4.78, gender 92.5% -> 93.3% on 1,500 rows)."""
    crop = spec.params_as(FaceCropParams)
    return square_box(detection.box_xyxy, crop.box_scale * factor, crop.box_shift_y)


def faceapi_chips(
    spec: ModelSpec, image: RGBImage, detections: Sequence[Detection], size: int
) -> NDArray[np.float32]:
    """face-api's network input for each detection: `(N, 3, size, size)`, normalised.

    Each crop is written straight into the batch and normalised there in place, without
    the temporaries of `(crops - mean) * scale` and a transposed copy."""
    chips = np.empty((len(detections), 3, size, size), dtype=np.float32)
    for chip, detection in zip(chips, detections, strict=True):
        chip[...] = crop_resized(image, faceapi_crop_box(spec, detection), size).transpose(2, 0, 1)
    scale = np.float32(spec.scale)
    chips *= scale
    chips -= (np.asarray(spec.mean, dtype=np.float32) * scale).reshape(3, 1, 1)
    return chips


class FaceApiEstimator:
    """Age (regressed years) and gender from a 112-px square crop of the detector's box."""

    def __init__(self, spec: ModelSpec, *, threads: int | None = None) -> None:
        self.name = spec.name
        self.spec = spec
        self._session = create_session(model_file(spec, "age_gender.onnx"), threads)
        self._size = spec.input_hw[0]

    def run_network(self, outputs: Sequence[str], batch: NDArray[np.float32]) -> list[Any]:
        """The network's named outputs for a normalised batch (as `align` makes)."""
        return list(self._session.run(list(outputs), {"input": batch}))

    def version(self) -> str:
        """Model name and the package it came from."""
        return f"{self.name} ({self.spec.source.pinned})"

    def crop_box(self, detection: Detection) -> NDArray[np.float32]:
        """The square region fed to the network (see `faceapi_crop_box`)."""
        return faceapi_crop_box(self.spec, detection)

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """Square crops of each box, resized to the network's input."""
        if not detections:
            return {}
        return {"faceapi": faceapi_chips(self.spec, image, detections, self._size)}

    def predict(self, chips: Chips) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Raw outputs: age in years `(N,)` and P(male) `(N,)`."""
        age, gender = self._session.run(
            ["age", "gender_probabilities"], {"input": chips["faceapi"]}
        )
        return age.reshape(-1).astype(np.float32), gender[:, 0].astype(np.float32)

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """Regressed age with a calibrated interval, and P(male)."""
        if not chips:
            return []
        ages, male = self.predict(chips)
        a, b = INTERVAL_COEFFICIENTS
        return estimates(ages, a + b * ages, male)
