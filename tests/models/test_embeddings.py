"""Backbone names, and faceres read at a smaller input as a backbone of its own."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from agelens.models.backends import create_detector
from agelens.models.embeddings import (
    BACKBONE_NAMES,
    backbone_model,
    create_backbone,
    parse_backbone,
)


def test_names_parse_into_a_model_and_a_size() -> None:
    assert [parse_backbone(name) for name in BACKBONE_NAMES] == [
        (name, None) for name in BACKBONE_NAMES
    ]
    assert parse_backbone("faceres@160") == ("faceres", 160)
    assert parse_backbone("faceres-deep@96") == ("faceres-deep", 96)
    assert backbone_model("faceres-deep@192") == "faceres-deep"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet", "unknown backbone"),
        ("faceres@", "the size after @"),
        ("faceres@150", "the size after @"),
        ("faceres@224", "the size after @"),
        ("faceres@1e2", "the size after @"),
        ("cydral@64", "its own input size only"),
        ("faceapi@112", "its own input size only"),
    ],
)
def test_bad_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_backbone(name)
    with pytest.raises(ValueError, match=message):
        create_backbone(name)


def test_a_sized_faceres_backbone_embeds_smaller_chips(astronaut: NDArray[np.uint8]) -> None:
    """`faceres@160` keeps the name it was asked by (features are cached and heads trained
    under it), cuts 160-px chips under the network's own key, and gives vectors of the same
    width that differ from the 224-px ones."""
    detection = create_detector("blazeface-full", threads=1).detect_many([astronaut])[0][0]
    small, native = create_backbone("faceres@160", threads=1), create_backbone("faceres")
    assert (small.name, native.name) == ("faceres@160", "faceres")
    chips = small.align(astronaut, [detection])
    assert chips["faceres"].shape == (1, 160, 160, 3)
    face, mirrored = small.embed(chips), small.embed(chips, mirrored=True)
    reference = native.embed(native.align(astronaut, [detection]))
    assert face.shape == mirrored.shape == reference.shape == (1, small.dim)
    assert not np.allclose(face, mirrored)
    assert not np.allclose(face, reference)
    # Its last column is P(male): Eileen Collins reads as a woman at either size.
    assert face[0, -1] < 0.5
    assert reference[0, -1] < 0.5
