"""BlazeFace detector (MediaPipe full-range or short-range) on ONNX Runtime.

Both detectors here can also look at an image decoded at a reduced size (`detect_reduced`,
`agelens.imaging.ReducedImage`): they search the same regions of the full image, at the same
network input size, and report boxes in full-image pixels; `max_reduction` says how far an
image may be shrunk before that would mean enlarging any region the network looks at.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from numpy.typing import NDArray

from agelens.geometry import (
    decode_blazeface,
    detection_views,
    generate_anchors,
    letterbox_transform,
    weighted_nms,
)
from agelens.imaging import ReducedImage
from agelens.models.base import RGBImage
from agelens.models.crops import shrink
from agelens.models.fetch import model_file
from agelens.models.runtime import create_session
from agelens.models.spec import BlazeFaceSpecParams, ModelSpec
from agelens.types import Detection

if TYPE_CHECKING:
    import onnx


def _sigmoid(values: NDArray[np.float32]) -> NDArray[np.float32]:
    # MediaPipe clips logits to +-100 before the sigmoid; in float64 so exp() stays finite.
    logits = np.clip(values.astype(np.float64), -100, 100)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def _reduced_view(
    view: tuple[int, int, int, int], image: ReducedImage
) -> tuple[int, int, int, int]:
    """A region `(x, y, width, height)` of the full image, in the reduced image's pixels
    (rounded outwards, clipped to the image)."""
    if image.scale == 1 and image.offset_xy == (0, 0):
        return view
    x, y, width, height = view
    left, top = image.from_full(x, y)
    right, bottom = image.from_full(x + width, y + height)
    reduced_h, reduced_w = image.pixels.shape[:2]
    x0, y0 = max(0, int(np.floor(left))), max(0, int(np.floor(top)))
    x1, y1 = min(reduced_w, int(np.ceil(right))), min(reduced_h, int(np.ceil(bottom)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _to_full(
    found: tuple[NDArray[np.float32], ...], image: ReducedImage
) -> tuple[NDArray[np.float32], ...]:
    """Boxes, scores and keypoints from the reduced image's pixels to the full image's."""
    if image.scale == 1 and image.offset_xy == (0, 0):
        return found
    boxes, scores, points = found
    offset = np.asarray(image.offset_xy, dtype=np.float32)
    full_boxes = (boxes.reshape(-1, 2, 2) * image.scale - offset).reshape(-1, 4)
    return full_boxes, scores, points * image.scale - offset


class BlazeFaceDetector:
    """Letterboxes each image into the network square, decodes anchors, weighted NMS.

    `score_threshold` is the minimum face probability; `iou_threshold` groups overlapping
    candidates into one face. With `tiled` (the default) large images are also searched tile by
    tile (see `detection_views`); without it, only the whole image, letterboxed, is searched.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        threads: int | None = None,
        score_threshold: float | None = None,
        iou_threshold: float = 0.3,
        tiled: bool = True,
        input_size: int | None = None,
    ) -> None:
        trained_size = spec.input_hw[0]
        self._size = trained_size if input_size is None else input_size
        self._input_hw = (self._size, self._size)
        self.name = spec.name if self._size == trained_size else f"{spec.name}@{self._size}"
        self.tiled = tiled
        self.spec = spec
        rewrite: Callable[[onnx.ModelProto], None] | None = None
        if self._size != trained_size:
            from agelens.models.convert.input_size import set_square_input

            rewrite = partial(set_square_input, size=self._size)
        self._session = create_session(model_file(spec, "detector.onnx"), threads, rewrite=rewrite)
        self._input_name = self._session.get_inputs()[0].name
        anchors = spec.params_as(BlazeFaceSpecParams)
        self._anchors = generate_anchors(self._input_hw, anchors.strides, anchors.anchors_per_cell)
        self.score_threshold = (
            anchors.score_threshold if score_threshold is None else score_threshold
        )
        self.iou_threshold = iou_threshold
        self._scale = np.float32(spec.scale)
        # mean * scale over a whole input, and a whole normalised black input: same-shape
        # arrays, because numpy broadcasting 3 channel values over an input costs ~0.1 ms.
        offset = np.asarray(spec.mean, dtype=np.float32) * self._scale
        self._offset = np.broadcast_to(offset, (self._size, self._size, 3)).copy()
        self._black = -self._offset
        outputs = {o.name: o for o in self._session.get_outputs()}
        # The regressor output has 16 values per anchor, the classifier 1.
        self._regressor_name = next(n for n, o in outputs.items() if o.shape[-1] == 16)
        self._classifier_name = next(n for n, o in outputs.items() if o.shape[-1] == 1)

    @property
    def input_size(self) -> int:
        """The side of the square network input, in pixels."""
        return self._size

    def with_thresholds(
        self, *, score_threshold: float | None = None, iou_threshold: float | None = None
    ) -> BlazeFaceDetector:
        """This detector with another minimum score and/or NMS IoU (None keeps the current
        one), sharing the loaded network: cheap enough to make per request."""
        changed = copy.copy(self)
        if score_threshold is not None:
            changed.score_threshold = score_threshold
        if iou_threshold is not None:
            changed.iou_threshold = iou_threshold
        return changed

    def _prepare(
        self, image: RGBImage, view: tuple[int, int, int, int], out: NDArray[np.float32]
    ) -> tuple[float, float, float]:
        """Write the network input for one region of the image into `out` (one `(size, size,
        3)` slot of the batch) and return (scale, offset_x, offset_y) with
        `input_px = image_px * scale + offset`."""
        x0, y0, width, height = view
        region = image[y0 : y0 + height, x0 : x0 + width]
        scale, _pad_x, _pad_y = letterbox_transform((height, width), self._size)
        # Area averaging when shrinking a large photo (bilinear alone would alias and lose
        # small faces), by halvings, which cost a fraction of a direct INTER_AREA resize.
        resized, scale_x, _scale_y = shrink(region, scale)
        new_h, new_w = resized.shape[:2]
        left, top = int((self._size - new_w) // 2), int((self._size - new_h) // 2)
        # Normalised in place in the batch: (x - mean) * scale as x * scale - mean * scale,
        # letterbox bars first as normalised black. A tenth of the cost of the same
        # arithmetic with temporaries (0.02 vs 0.17 ms a 128-px input).
        out[...] = self._black
        slot = out[top : top + new_h, left : left + new_w]
        slot[...] = resized
        slot *= self._scale
        slot -= self._offset[: slot.shape[0], : slot.shape[1]]
        return scale_x, left - x0 * scale_x, top - y0 * scale_x

    def views(self, image_wh: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The regions `(x, y, width, height)` of an image the network looks at."""
        if not self.tiled:
            return [(0, 0, *image_wh)]
        return detection_views(image_wh, min_tile=4 * self._size)

    def max_reduction(self, image_wh: tuple[int, int]) -> int:
        """The largest factor an image of full size `image_wh` may be shrunk by before
        `detect_reduced` without any region the network looks at (`views`) having to be
        enlarged to the network input: that region's long side over the input side."""
        return max(1, min(max(w, h) for _, _, w, h in self.views(image_wh)) // self._size)

    def detect_many(
        self, images: Sequence[RGBImage], *, min_face: float = 0.0, max_faces: int | None = None
    ) -> list[tuple[Detection, ...]]:
        """Faces of each image, best first. `min_face` is the smallest box side in pixels.

        Every view of every image (see `detection_views`) goes through the network in one run.
        """
        return self.detect_reduced(
            [ReducedImage.whole(image) for image in images], min_face=min_face, max_faces=max_faces
        )

    def detect_reduced(
        self,
        images: Sequence[ReducedImage],
        *,
        min_face: float = 0.0,
        max_faces: int | None = None,
    ) -> list[tuple[Detection, ...]]:
        """`detect_many` on images decoded at reduced size: the views of each full image,
        searched in its reduced pixels; boxes, keypoints and `min_face` in full-image pixels."""
        if not images:
            return []
        views = [
            (index, _reduced_view(view, image))
            for index, image in enumerate(images)
            for view in self.views(image.full_wh)
        ]
        batch = np.empty((len(views), self._size, self._size, 3), dtype=np.float32)
        owners = [index for index, _ in views]
        transforms = [
            self._prepare(images[index].pixels, view, slot)
            for (index, view), slot in zip(views, batch, strict=True)
        ]
        regressors, classifiers = self._session.run(
            [self._regressor_name, self._classifier_name], {self._input_name: batch}
        )
        candidates: list[list[tuple[NDArray[np.float32], ...]]] = [[] for _ in images]
        for row, owner in enumerate(owners):
            found = self._candidates(regressors[row], classifiers[row], transforms[row])
            if found is not None:
                candidates[owner].append(_to_full(found, images[owner]))
        return [
            self._merge(parts, image.full_wh[::-1], min_face, max_faces)
            for parts, image in zip(candidates, images, strict=True)
        ]

    def _candidates(
        self,
        raw_boxes: NDArray[np.float32],
        raw_scores: NDArray[np.float32],
        transform: tuple[float, float, float],
    ) -> tuple[NDArray[np.float32], ...] | None:
        """Boxes `(K, 4)`, scores `(K,)`, keypoints `(K, 6, 2)` above the threshold, in image
        pixels, or None when there are none."""
        scores = _sigmoid(raw_scores.reshape(-1))
        keep = scores >= self.score_threshold
        if not keep.any():
            return None
        boxes, keypoints = decode_blazeface(raw_boxes[keep], self._anchors[keep], self._input_hw)
        scale, offset_x, offset_y = transform
        offset = np.array([offset_x, offset_y], dtype=np.float32)
        boxes_px = ((boxes.reshape(-1, 2, 2) * self._size - offset) / scale).reshape(-1, 4)
        points_px = (keypoints * self._size - offset) / scale
        return boxes_px.astype(np.float32), scores[keep], points_px.astype(np.float32)

    def _merge(
        self,
        parts: list[tuple[NDArray[np.float32], ...]],
        image_hw: tuple[int, ...],
        min_face: float,
        max_faces: int | None,
    ) -> tuple[Detection, ...]:
        if not parts:
            return ()
        boxes, kept_scores, points_px = weighted_nms(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            self.iou_threshold,
        )
        height, width = image_hw
        boxes_px = boxes.reshape(-1, 2, 2)
        boxes_px[..., 0] = np.clip(boxes_px[..., 0], 0, width)
        boxes_px[..., 1] = np.clip(boxes_px[..., 1], 0, height)
        detections = []
        for box, score, points in zip(boxes_px, kept_scores, points_px, strict=True):
            side = min(box[1, 0] - box[0, 0], box[1, 1] - box[0, 1])
            if side <= 1 or side < min_face:
                continue
            detections.append(
                Detection(
                    box_xyxy=(
                        float(box[0, 0]),
                        float(box[0, 1]),
                        float(box[1, 0]),
                        float(box[1, 1]),
                    ),
                    score=float(score),
                    keypoints=tuple((float(x), float(y)) for x, y in points),
                )
            )
        detections.sort(key=lambda d: -d.score)
        return tuple(detections[:max_faces] if max_faces is not None else detections)


class RangeSwitchingDetector:
    """The cheapest BlazeFace that suits each image's size.

    The short-range model (128 px input) finds faces from about 20 of its input pixels up, a
    sixth of its input: on an image up to `short_max_side` pixels (default 512, four times its
    input) that covers every face of 80 px and more, the smallest that dlib's HOG detector
    finds without upsampling. Larger images go to the full-range model (192 px input), which
    finds smaller faces relative to the image. Neither model looks at tiles, so faces under
    about a twentieth of a large photo's long side are missed; `blazeface-full` (tiled) finds
    those at several times the cost.

    With `portrait` (the short-range model at a smaller input, `blazeface-portrait`), images up
    to `short_max_side` are searched with it first, and only those where it finds nothing go
    to the 128-px short-range model. At 96 px that costs 0.8 instead of 1.35 ms an image and
    finds faces spanning a quarter of the image or more (padded UTKFace `dev`, faces scaled
    into 400-px images, share found at 96 / 128 px: a third of the side 99% / 100%, a quarter
    96% / 99%, a fifth 54% / 97%), so on a small photo with one large face, smaller faces
    beside it are lost: it is meant for portraits, selfies and face crops.

    The models draw their boxes differently: on 1,487 padded UTKFace `dev` faces found by both,
    the short-range box (128 px) was a median 6.1% smaller and its centre 4.3% of the
    full-range box's height lower. Short-range boxes are mapped onto the full-range convention
    (`SHORT_TO_FULL_BOX`, by input size), which the estimators' crops were tuned for; keypoints
    are kept. `python scripts/fit_box_mapping.py --rows 2000 --sizes 128 96` fitted the 96-px
    pair and, on 1,984 faces, reproduces the 128-px one (6.3% smaller, 4.2% lower).

    With `full_first` (`blazeface-auto`, the default detector), small images go to the
    full-range model first and to the short-range model only where it finds nothing; given a
    tiled full-range model, large photos are searched tile by tile as `blazeface-full`
    searches them. So it finds every face `blazeface-full` finds, with the same boxes, and
    the faces only the short-range model finds on small photos (padded UTKFace `test`: 4,642
    of 4,646 found, against 4,615). Short-range first would be cheaper (the short-range model
    costs about a third of the full-range one) but its mapped boxes moved the `ensemble`
    estimator's ages: UTKFace `test` MAE 4.76 -> 4.87, mean signed error -0.09 -> -0.40
    years (docs/detectors.md).
    """

    #: input size -> (side factor, upward shift as a fraction of the corrected box's height)
    SHORT_TO_FULL_BOX: ClassVar[Mapping[int, tuple[float, float]]] = {
        128: (1 / 0.939, 0.0426),
        96: (1 / 0.950, 0.0370),
    }

    def __init__(
        self,
        short: BlazeFaceDetector,
        full: BlazeFaceDetector,
        *,
        name: str = "blazeface-fast",
        short_max_side: int = 512,
        portrait: BlazeFaceDetector | None = None,
        full_first: bool = False,
    ) -> None:
        for detector in (short, portrait):
            if detector is not None and detector.input_size not in self.SHORT_TO_FULL_BOX:
                raise ValueError(f"no box mapping fitted for {detector.name}")
        self.name = name
        self.short = short
        self.full = full
        self.portrait = portrait
        self.short_max_side = short_max_side
        self.full_first = full_first

    def _is_small(self, image_wh: tuple[int, int]) -> bool:
        return max(image_wh) <= self.short_max_side

    def max_reduction(self, image_wh: tuple[int, int]) -> int:
        """The largest factor an image of full size `image_wh` may be shrunk by before
        `detect_reduced`: the smallest that any model which may look at it allows."""
        if not self._is_small(image_wh):
            return self.full.max_reduction(image_wh)
        models = [self.short, self.portrait, self.full if self.full_first else None]
        return min(model.max_reduction(image_wh) for model in models if model is not None)

    def with_thresholds(
        self, *, score_threshold: float | None = None, iou_threshold: float | None = None
    ) -> RangeSwitchingDetector:
        """This detector with another minimum score and/or NMS IoU in each of its models
        (None keeps the current one), sharing the loaded networks."""
        thresholds = {"score_threshold": score_threshold, "iou_threshold": iou_threshold}
        return RangeSwitchingDetector(
            self.short.with_thresholds(**thresholds),
            self.full.with_thresholds(**thresholds),
            name=self.name,
            short_max_side=self.short_max_side,
            portrait=None if self.portrait is None else self.portrait.with_thresholds(**thresholds),
            full_first=self.full_first,
        )

    def _as_full_range(
        self, detection: Detection, image_wh: tuple[int, int], input_size: int
    ) -> Detection:
        factor, shift = self.SHORT_TO_FULL_BOX[input_size]
        x1, y1, x2, y2 = detection.box_xyxy
        half_w, half_h = (x2 - x1) * factor / 2, (y2 - y1) * factor / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 - shift * 2 * half_h
        width, height = image_wh
        box = (
            min(max(cx - half_w, 0.0), width),
            min(max(cy - half_h, 0.0), height),
            min(max(cx + half_w, 0.0), width),
            min(max(cy + half_h, 0.0), height),
        )
        return replace(detection, box_xyxy=box)

    def _short_range(
        self,
        detector: BlazeFaceDetector,
        images: Sequence[ReducedImage],
        min_face: float,
        max_faces: int | None,
    ) -> list[tuple[Detection, ...]]:
        results = detector.detect_reduced(images, min_face=min_face, max_faces=max_faces)
        return [
            tuple(self._as_full_range(d, image.full_wh, detector.input_size) for d in faces)
            for image, faces in zip(images, results, strict=True)
        ]

    def detect_many(
        self, images: Sequence[RGBImage], *, min_face: float = 0.0, max_faces: int | None = None
    ) -> list[tuple[Detection, ...]]:
        """Faces of each image, best first; one network run per model used."""
        return self.detect_reduced(
            [ReducedImage.whole(image) for image in images], min_face=min_face, max_faces=max_faces
        )

    def detect_reduced(
        self,
        images: Sequence[ReducedImage],
        *,
        min_face: float = 0.0,
        max_faces: int | None = None,
    ) -> list[tuple[Detection, ...]]:
        """`detect_many` on images decoded at reduced size, routed by their full size; boxes,
        keypoints and `min_face` in full-image pixels."""
        found: dict[int, tuple[Detection, ...]] = {}
        large = [i for i, image in enumerate(images) if not self._is_small(image.full_wh)]
        if large:
            results = self.full.detect_reduced(
                [images[i] for i in large], min_face=min_face, max_faces=max_faces
            )
            found.update(zip(large, results, strict=True))
        small = [i for i in range(len(images)) if i not in found]
        if small and self.full_first:
            results = self.full.detect_reduced(
                [images[i] for i in small], min_face=min_face, max_faces=max_faces
            )
            found.update((i, faces) for i, faces in zip(small, results, strict=True) if faces)
            small = [i for i in small if i not in found]
        if small and self.portrait is not None:
            results = self._short_range(
                self.portrait, [images[i] for i in small], min_face, max_faces
            )
            found.update((i, faces) for i, faces in zip(small, results, strict=True) if faces)
            small = [i for i in small if i not in found]
        if small:
            results = self._short_range(self.short, [images[i] for i in small], min_face, max_faces)
            found.update(zip(small, results, strict=True))
        return [found[i] for i in range(len(images))]
