"""HSE faceres estimators: preprocessing and age decoding as documented in faceres.py."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from agelens.models.backends import create_detector, create_estimator
from agelens.models.crops import crop_resized
from agelens.models.faceres import AGE_CLASS_YEARS, FaceResEstimator, decode_age_top2


def test_age_classes_start_at_one_year() -> None:
    assert AGE_CLASS_YEARS[0] == 1
    assert AGE_CLASS_YEARS[-1] == 100
    assert len(AGE_CLASS_YEARS) == 100


def test_top2_decoding_matches_hse() -> None:
    probabilities = np.zeros((1, 100), np.float32)
    probabilities[0, 29] = 0.3  # 30 years
    probabilities[0, 30] = 0.1  # 31 years
    probabilities[0, 5] = 0.05
    # 1 + (29 * 0.75 + 30 * 0.25), as HSE's facial_analysis.py computes it.
    assert decode_age_top2(probabilities)[0] == pytest.approx(30.25)


@pytest.mark.parametrize("name", ["faceres", "faceres-deep"])
def test_chips_are_bgr_minus_caffe_means(name: str, astronaut: NDArray[np.uint8]) -> None:
    detection = create_detector("blazeface-full", threads=1).detect_many([astronaut])[0][0]
    estimator = create_estimator(name, threads=1)
    assert isinstance(estimator, FaceResEstimator)
    chips = estimator.align(astronaut, [detection])
    (tensor,) = chips.values()
    assert tensor.shape == (1, 224, 224, 3)
    crop = crop_resized(astronaut, estimator.crop_box(detection), 224).astype(np.float32)
    want = crop[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(tensor[0], want, atol=1e-4)
    (estimate,) = estimator.estimate(chips)
    # Eileen Collins was 42 in the portrait; a wrong mean or channel order misses by far more.
    assert 25 < estimate.age_years < 60
    assert estimate.gender_probability_male < 0.5


@pytest.mark.parametrize("name", ["faceres", "faceres-deep"])
def test_a_smaller_input_reads_the_same_face(name: str, astronaut: NDArray[np.uint8]) -> None:
    """The same weights at 160 px: 160-px chips of the same crop, an answer close to the
    224-px one (about half the work; docs/accuracy.md has the measured cost in accuracy)."""
    detection = create_detector("blazeface-full", threads=1).detect_many([astronaut])[0][0]
    native = create_estimator(name, threads=1)
    assert isinstance(native, FaceResEstimator)
    small = FaceResEstimator(native.spec, threads=1, input_size=160)
    assert (small.input_size, native.input_size) == (160, 224)
    assert "at 160 px" in small.version()
    assert " px" not in native.version()
    chips = small.align(astronaut, [detection])
    assert chips[name].shape == (1, 160, 160, 3)
    np.testing.assert_array_equal(small.crop_box(detection), native.crop_box(detection))
    (estimate,) = small.estimate(chips)
    (reference,) = native.estimate(native.align(astronaut, [detection]))
    assert abs(estimate.age_years - reference.age_years) < 8
    assert estimate.gender_probability_male < 0.5


@pytest.mark.parametrize("size", [256, 0, -16])
def test_input_sizes_beyond_the_network_are_refused(size: int) -> None:
    spec = create_estimator("faceres", threads=1).spec  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="runs at up to 224 px"):
        FaceResEstimator(spec, threads=1, input_size=size)
