"""The two backend protocols every detector and estimator implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from agelens.types import AgeGenderEstimate, Detection

if TYPE_CHECKING:
    from agelens.imaging import ReducedImage

RGBImage = NDArray[np.uint8]
#: Network inputs for a set of faces, keyed by input name; every array's first axis is the face.
Chips = dict[str, NDArray[np.float32]]


class Detector(Protocol):
    """Finds faces. Boxes and keypoints come back in the input image's pixel coordinates."""

    name: str

    def detect_many(
        self, images: Sequence[RGBImage], *, min_face: float = 0.0, max_faces: int | None = None
    ) -> list[tuple[Detection, ...]]:
        """Faces of each image, best first; one network run for all images."""
        ...


class TunableDetector(Detector, Protocol):
    """A detector whose minimum score and NMS IoU can be changed per call (BlazeFace's)."""

    def with_thresholds(
        self, *, score_threshold: float | None = None, iou_threshold: float | None = None
    ) -> Detector:
        """The same detector, sharing its loaded networks, with other thresholds."""
        ...


@runtime_checkable
class ReducingDetector(Detector, Protocol):
    """A detector that can search JPEGs decoded at a reduced size (Pillow's draft mode)."""

    def max_reduction(self, image_wh: tuple[int, int]) -> int:
        """The largest factor an image of full size `image_wh` may be shrunk by before
        `detect_reduced` without changing what it finds."""
        ...

    def detect_reduced(
        self,
        images: Sequence[ReducedImage],
        *,
        min_face: float = 0.0,
        max_faces: int | None = None,
    ) -> list[tuple[Detection, ...]]:
        """`detect_many` on images decoded at reduced size; boxes, keypoints and `min_face`
        in full-image pixels."""
        ...


class Estimator(Protocol):
    """Estimates age and gender from faces: `align` cuts chips, `estimate` runs the networks."""

    name: str

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """Network inputs for each detection, aligned the way the model was trained."""
        ...

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """One estimate per face of `chips` (which may hold faces of several images)."""
        ...

    def version(self) -> str:
        """Model names and sources, for ImageResult.models."""
        ...


def concat_chips(batches: Sequence[Chips]) -> Chips:
    """Join the chips of several images along the face axis (keys must agree)."""
    non_empty = [b for b in batches if b and len(next(iter(b.values())))]
    if not non_empty:
        return {}
    return {key: np.concatenate([b[key] for b in non_empty]) for key in non_empty[0]}


def chip_count(chips: Chips) -> int:
    """Number of faces in a chips mapping."""
    return len(next(iter(chips.values()))) if chips else 0
