"""HSE FaceRes (faceres, faceres-deep): MobileNet v1 age/gender heads, converted from TF.js.

Preprocessing follows the model's authors (HSE_FaceRec_tf `facial_analysis.py`): the face crop
resized to 224x224, RGB -> BGR, minus the Caffe/VGG means (103.939, 116.779, 123.68), no
scaling. Human, which redistributes the graphs (`src/face/faceres.ts`), feeds plain RGB 0..255
instead. The ONNX graph keeps the TF.js NHWC input.

Age: 100 classes, class i standing for i + 1 years. HSE decodes the two most probable classes,
renormalised (`decode_age_top2`); Human interpolates around the argmax. agelens takes the
expectation over all 100 classes, which did best on UTKFace `dev`.

Choices measured on 1,493 UTKFace `dev` rows (pad 0.5, blazeface-full boxes; MAE years / gender
accuracy), faceres-deep [faceres]:

- BGR minus Caffe means vs Human's RGB 0..255 (box 1.25): 5.50 / 90.8% [5.92 / 90.8%] vs
  6.76 / 86.4% [7.42 / 88.5%].
- square box scale 1.0 / 1.1 / 1.25 (expected age): 5.73 / 5.62 / 5.50 [5.99 / 5.93 / 5.92];
  moving the box down by 5% of its height changed nothing (5.50).
- decoding, box 1.25: expectation 5.50 [5.92] vs HSE's top-2 5.74 [5.88].

Gender: the sigmoid output is P(male) (HSE: `is_male = p >= 0.6`; Human: male when > 0.5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from agelens.geometry import square_box
from agelens.models.base import Chips, RGBImage
from agelens.models.crops import crop_resized
from agelens.models.distribution import estimates, expected_age
from agelens.models.fetch import model_file
from agelens.models.runtime import create_session, create_session_from_bytes
from agelens.models.spec import FaceCropParams, ModelSpec
from agelens.types import AgeGenderEstimate, Detection

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

#: Half-width of the 80% age interval as `a + b * age`, per model, fitted on the 1,493 UTKFace
#: `dev` rows above with `fit_interval` of scripts/fit_ensemble.py (expected age, box 1.25).
INTERVAL_COEFFICIENTS: dict[str, tuple[float, float]] = {
    "faceres": (1.2524, 0.2359),
    "faceres-deep": (1.7289, 0.2069),
}

#: Age in years of each of the 100 age classes.
AGE_CLASS_YEARS = np.arange(1, 101, dtype=np.float32)


def decode_age_top2(probabilities: NDArray[np.float32]) -> NDArray[np.float64]:
    """HSE's age: the mean of the two most probable classes' ages, weighted by their
    renormalised probabilities. `probabilities` is `(N, 100)`; returns `(N,)` years."""
    p = probabilities.astype(np.float64)
    top = np.argsort(-p, axis=1, kind="stable")[:, :2]
    weights = np.take_along_axis(p, top, axis=1)
    weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return np.asarray((AGE_CLASS_YEARS[top] * weights).sum(axis=1), dtype=np.float64)


class FaceResEstimator:
    """Age (100-way distribution) and P(male) from a square 224-px crop of the detector's box.

    `input_size` runs the same weights on smaller crops (a multiple of 16 up to 224; see
    `set_square_classifier_input`): the shipped heads read both networks at 192 px, for about
    0.7 of the work (docs/training.md, "faceres at 192 px in the heads"). `int8_ranges` (an
    activation ranges file, `convert.int8.calibrate`) runs the int8 graph built from those
    ranges where int8 is exact (`convert.int8.int8_enabled`), the float graph elsewhere.
    `int8_graph` (an int8 ONNX file at this input size, as `agelens train` ships for a network
    fine-tuned for int8, train/qat.py) runs that graph where int8 is exact instead, and the
    fetched float network elsewhere (which the fine-tuning taught the int8 graph to match).
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        threads: int | None = None,
        input_size: int | None = None,
        int8_ranges: Path | None = None,
        int8_graph: Path | None = None,
    ) -> None:
        from agelens.models.convert.int8 import int8_enabled

        self.name = spec.name
        self.spec = spec
        native = spec.input_hw[0]
        size = native if input_size is None else input_size
        if not 0 < size <= native:
            raise ValueError(f"{spec.name} runs at up to {native} px, not {size}")
        self._size = size
        self.tuned = int8_graph is not None and int8_enabled()
        built = None if int8_ranges is None else self._int8_graph(int8_ranges)
        self.int8 = built is not None or self.tuned
        if built is not None:
            self._session = create_session_from_bytes(built, threads)
        elif int8_graph is not None and self.tuned:
            self._session = create_session(int8_graph, threads)
        else:
            rewrite = self._rewrite() if size != native else None
            self._session = create_session(
                model_file(spec, "age_gender.onnx"), threads, rewrite=rewrite
            )
        self._input = self._session.get_inputs()[0].name
        shape = self._session.get_inputs()[0].shape
        if self.tuned and list(shape[1:3]) != [size, size]:
            raise ValueError(f"{int8_graph} reads {shape[1]}x{shape[2]} px crops, not {size}")
        crop = spec.params_as(FaceCropParams)
        self._box_scale = crop.box_scale
        self._box_shift_y = crop.box_shift_y
        self._bgr = spec.channel_order == "BGR"
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._interval = INTERVAL_COEFFICIENTS[spec.name]

    def _rewrite(self) -> Callable[[onnx.ModelProto], None]:
        from agelens.models.convert.input_size import set_square_classifier_input

        return partial(set_square_classifier_input, size=self._size)

    def float_graph(self) -> onnx.ModelProto:
        """The float network at this estimator's input size: what int8 ranges are taken on."""
        import onnx

        model = onnx.load(str(model_file(self.spec, "age_gender.onnx")))
        if self._size != self.spec.input_hw[0]:
            self._rewrite()(model)
        return model

    def _int8_graph(self, ranges: Path) -> bytes | None:
        """The int8 graph from `ranges`, or None where int8 is off or the ranges do not fit
        this graph (taken by another ONNX Runtime, say): then the float network runs."""
        from agelens.models.convert.int8 import cached_quantized, int8_enabled
        from agelens.paths import agelens_home

        if not int8_enabled():
            return None
        label = f"{self.name}@{self._size}"
        try:
            return cached_quantized(self.float_graph(), ranges, agelens_home() / "derived", label)
        except ValueError as error:
            logger.warning("%s runs in float: no int8 graph from %s (%s)", label, ranges, error)
            return None

    def run_network(self, outputs: Sequence[str], batch: NDArray[np.float32]) -> list[Any]:
        """The network's named outputs for a normalised batch (as `align` makes)."""
        return list(self._session.run(list(outputs), {self._input: batch}))

    @property
    def input_size(self) -> int:
        """The side of the square crops the network reads, in pixels."""
        return self._size

    def version(self) -> str:
        """Model name and the package it came from (and the input size when not its own)."""
        size = f" at {self._size} px" if self._size != self.spec.input_hw[0] else ""
        int8 = ", int8" if self.int8 else ""
        tuned = ", weights tuned for int8" if self.tuned else ""
        return f"{self.name}{size}{int8}{tuned} ({self.spec.source.pinned})"

    def crop_box(self, detection: Detection) -> NDArray[np.float32]:
        """The detector's box squared, scaled by `box_scale` and moved down by `box_shift_y`
        of its height."""
        return square_box(detection.box_xyxy, self._box_scale, self._box_shift_y)

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """NHWC crops, channel order and mean as in the spec."""
        if not detections:
            return {}
        crops = np.stack(
            [crop_resized(image, self.crop_box(d), self._size) for d in detections]
        ).astype(np.float32)
        if self._bgr:
            crops = crops[..., ::-1]
        tensor = (crops - self._mean) * np.float32(self.spec.scale)
        return {self.name: np.ascontiguousarray(tensor, dtype=np.float32)}

    def predict(self, chips: Chips) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Raw outputs: age class probabilities `(N, 100)` and P(male) `(N,)`."""
        age, gender = self._session.run(
            ["age_probabilities", "gender_probability"], {self._input: chips[self.name]}
        )
        return age.astype(np.float32), gender[:, 0].astype(np.float32)

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """Expected age over the 100 classes with a calibrated interval, and P(male)."""
        if not chips:
            return []
        probabilities, male = self.predict(chips)
        ages = expected_age(probabilities, AGE_CLASS_YEARS)
        a, b = self._interval
        return estimates(ages, a + b * ages, male)
