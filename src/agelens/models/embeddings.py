"""Face embeddings from the registry's estimators: the inputs of the heads agelens trains.

Each backbone is an existing estimator's network read one layer before its own age/gender
outputs (plus those outputs, which are cheap and carry what the network was trained for):

- `faceres`, `faceres-deep`: the 1,024-d global average pool, + 100 age probabilities + P(male).
- `faceapi`: the 512-d average pool of TinyXception, + regressed age / 100 + P(male).
- `cydral`: the 256-d pool of the age ResNet and the 16-d hidden layer of the gender network,
  + 81 age probabilities + P(male).

`embed(chips, mirrored=True)` embeds the horizontally mirrored chips instead: faces are nearly
symmetric, so the mirror is a free second look used for training augmentation and at test time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from agelens.models.base import Chips, RGBImage
from agelens.models.cydral import CydralEstimator
from agelens.models.faceapi import FaceApiEstimator
from agelens.models.faceres import FaceResEstimator
from agelens.models.registry import get_spec
from agelens.types import Detection

Embedding = NDArray[np.float32]

#: The suffix of a backbone that runs int8 (`faceres@192-int8`; see convert/int8.py).
INT8_SUFFIX = "-int8"
#: The suffix of a backbone that runs int8 with weights `agelens train` fine-tuned for it
#: (quantization-aware, `faceres-deep@192-qat`; see train/qat.py). It ships that int8 graph.
QAT_SUFFIX = "-qat"


class Backbone(Protocol):
    """A network that turns aligned face chips into one feature vector per face."""

    name: str
    dim: int

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """Network inputs for each detection (the estimator's own alignment)."""
        ...

    def embed(self, chips: Chips, *, mirrored: bool = False) -> Embedding:
        """`(N, dim)` float32 features, of the mirrored chips when `mirrored`."""
        ...

    def mirror(self, chips: Chips) -> Chips:
        """This backbone's chips mirrored left to right (its own keys only)."""
        ...

    def version(self) -> str:
        """Model name and source."""
        ...


def embed_pair(backbone: Backbone, chips: Chips) -> tuple[Embedding, Embedding]:
    """`backbone.embed(chips)` and `backbone.embed(chips, mirrored=True)` from one batch of
    twice the faces: one network run instead of two, which is what costs on a single face
    (Cydral: 7.2 -> 4.1 ms a face on one core)."""
    mirrored = backbone.mirror(chips)
    both = {key: np.concatenate([chips[key], value]) for key, value in mirrored.items()}
    features = backbone.embed(both)
    count = len(features) // 2
    return features[:count], features[count:]


def _mirror_nchw(array: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.ascontiguousarray(array[..., ::-1])


class FaceResBackbone:
    """faceres / faceres-deep: NHWC chips, embedding + age probabilities + P(male).

    With `input_size` the network reads smaller crops and the backbone is named
    `NAME@SIZE` (`faceres@160`), so features and trained heads never mix the two; with
    `int8_ranges` it is `NAME@SIZE-int8` and runs int8 where that is exact (convert/int8.py);
    with `int8_graph` (of the network fine-tuned for int8, train/qat.py) it is `NAME@SIZE-qat`
    and runs that graph where int8 is exact, the fetched float network elsewhere.
    """

    def __init__(
        self,
        model: str,
        *,
        threads: int | None = None,
        input_size: int | None = None,
        int8_ranges: Path | None = None,
        int8_graph: Path | None = None,
    ) -> None:
        self._estimator = FaceResEstimator(
            get_spec(model),
            threads=threads,
            input_size=input_size,
            int8_ranges=int8_ranges,
            int8_graph=int8_graph,
        )
        sized = model if input_size is None else f"{model}@{input_size}"
        suffix = QAT_SUFFIX if int8_graph else INT8_SUFFIX if int8_ranges else ""
        self.name = f"{sized}{suffix}"
        self.dim = 1024 + 100 + 1

    def version(self) -> str:
        return self._estimator.version()

    @property
    def estimator(self) -> FaceResEstimator:
        """The network behind the embedding."""
        return self._estimator

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        return self._estimator.align(image, detections)

    def mirror(self, chips: Chips) -> Chips:
        key = self._estimator.name
        return {key: np.ascontiguousarray(chips[key][:, :, ::-1, :])}

    def embed(self, chips: Chips, *, mirrored: bool = False) -> Embedding:
        batch = (self.mirror(chips) if mirrored else chips)[self._estimator.name]
        embedding, age, male = self._estimator.run_network(
            ["embedding", "age_probabilities", "gender_probability"], batch
        )
        return np.concatenate([embedding, age, male], axis=1).astype(np.float32)


class FaceApiBackbone:
    """face-api: NCHW chips, embedding + age / 100 + P(male)."""

    def __init__(self, *, threads: int | None = None) -> None:
        self.name = "faceapi"
        self.dim = 512 + 1 + 1
        self._estimator = FaceApiEstimator(get_spec("faceapi"), threads=threads)

    def version(self) -> str:
        return self._estimator.version()

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        return self._estimator.align(image, detections)

    def mirror(self, chips: Chips) -> Chips:
        return {"faceapi": _mirror_nchw(chips["faceapi"])}

    def embed(self, chips: Chips, *, mirrored: bool = False) -> Embedding:
        batch = (self.mirror(chips) if mirrored else chips)["faceapi"]
        embedding, age, gender = self._estimator.run_network(
            ["embedding", "age", "gender_probabilities"], batch
        )
        return np.concatenate(
            [embedding, age.reshape(-1, 1) / 100.0, gender[:, :1]], axis=1
        ).astype(np.float32)


class CydralBackbone:
    """Cydral: dlib chips; age-network pool + gender hidden layer + both outputs."""

    def __init__(self, *, threads: int | None = None) -> None:
        self.name = "cydral"
        self.dim = 256 + 16 + 81 + 1
        self._estimator = CydralEstimator(
            get_spec("cydral"), threads=threads, embedding_outputs=True
        )

    def version(self) -> str:
        return self._estimator.version()

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        return self._estimator.align(image, detections)

    def mirror(self, chips: Chips) -> Chips:
        return {key: _mirror_nchw(chips[key]) for key in ("cydral_age", "cydral_gender")}

    def embed(self, chips: Chips, *, mirrored: bool = False) -> Embedding:
        if mirrored:
            chips = self.mirror(chips)
        age_chips, gender_chips = chips["cydral_age"], chips["cydral_gender"]
        age_probabilities, age_features = self._estimator.run_age_network(
            ["probabilities", "layer_1_flatten"], age_chips
        )
        gender_probabilities, gender_features = self._estimator.run_gender_network(
            ["probabilities", "layer_1_flatten"], gender_chips
        )
        return np.concatenate(
            [age_features, gender_features, age_probabilities, gender_probabilities[:, 1:2]],
            axis=1,
        ).astype(np.float32)


BACKBONE_NAMES: tuple[str, ...] = ("faceres", "faceres-deep", "faceapi", "cydral")

#: Backbones that can read smaller crops than their own, as `NAME@SIZE`.
SIZED_BACKBONES: tuple[str, ...] = ("faceres", "faceres-deep")
#: The input sizes `NAME@SIZE` allows: multiples of 16 from 96 to 208 px (224, the networks'
#: own, is the plain name).
BACKBONE_SIZES: tuple[int, ...] = tuple(range(96, 224, 16))


class BackboneName(NamedTuple):
    """A backbone name taken apart: `faceres@192-int8` is `("faceres", 192, True, False)`,
    `faceres-deep@192-qat` `("faceres-deep", 192, True, True)`."""

    model: str
    size: int | None
    int8: bool
    #: int8 with weights fine-tuned for it, shipped with the heads (`QAT_SUFFIX`).
    tuned: bool = False


def parse_backbone(name: str) -> BackboneName:
    """A backbone name taken apart: `faceapi`, `faceres@160`, `faceres@192-int8`,
    `faceres-deep@192-qat`. Raises ValueError for a name `create_backbone` would not accept."""
    tuned = name.endswith(QAT_SUFFIX)
    body = name.removesuffix(QAT_SUFFIX) if tuned else name.removesuffix(INT8_SUFFIX)
    int8 = body != name
    model, at, size_text = body.partition("@")
    choices = ", ".join(BACKBONE_NAMES)
    if model not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; choose from {choices}")
    if int8 and model not in SIZED_BACKBONES:
        suffixes = f"{INT8_SUFFIX}, {QAT_SUFFIX}"
        raise ValueError(f"backbone {model!r} has no int8 version ({suffixes})")
    if not at:
        return BackboneName(model, None, int8, tuned)
    if model not in SIZED_BACKBONES:
        raise ValueError(f"backbone {model!r} runs at its own input size only (no @SIZE)")
    if not size_text.isdigit() or int(size_text) not in BACKBONE_SIZES:
        sizes = ", ".join(map(str, BACKBONE_SIZES))
        raise ValueError(f"backbone {name!r}: the size after @ must be one of {sizes}")
    return BackboneName(model, int(size_text), int8, tuned)


def backbone_model(name: str) -> str:
    """The registry model a backbone name runs (`faceres@160` -> `faceres`)."""
    return parse_backbone(name).model


def int8_ranges_file(name: str) -> str:
    """The file name of an int8 backbone's activation ranges in a heads folder."""
    return f"int8-ranges-{name}.json"


def int8_graph_file(name: str) -> str:
    """The file name of a `-qat` backbone's int8 graph in a heads folder."""
    return f"int8-{name}.onnx"


def create_backbone(
    name: str, *, threads: int | None = None, folder: Path | None = None
) -> Backbone:
    """The backbone called `name` (one of BACKBONE_NAMES, or `faceres@SIZE` /
    `faceres-deep@SIZE`, either with `-int8` or `-qat`); its models must be fetched. An int8
    backbone reads its activation ranges from `folder` (`int8_ranges_file(name)` there), a
    `-qat` one its int8 graph (`int8_graph_file(name)`)."""
    model, size, int8, tuned = parse_backbone(name)
    if model in SIZED_BACKBONES:
        ranges = graph = None
        if int8 and folder is None:
            raise ValueError(f"backbone {name!r} needs the folder of its int8 ranges or graph")
        if tuned and folder is not None:
            graph = folder / int8_graph_file(name)
            if not graph.is_file():
                raise FileNotFoundError(f"backbone {name!r}: no int8 graph at {graph}")
        elif int8 and folder is not None:
            ranges = folder / int8_ranges_file(name)
            if not ranges.is_file():
                raise FileNotFoundError(f"backbone {name!r}: no int8 ranges at {ranges}")
        return FaceResBackbone(
            model, threads=threads, input_size=size, int8_ranges=ranges, int8_graph=graph
        )
    if model == "faceapi":
        return FaceApiBackbone(threads=threads)
    return CydralBackbone(threads=threads)
