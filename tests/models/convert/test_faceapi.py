"""face-api AgeGenderNet: the ONNX conversion against face-api itself (tfjs in node).

The fidelity tests run `tools/node/faceapi_reference.mjs` (face-api 1.7.15 on tfjs' pure-JS cpu
backend) and the converted graph in onnxruntime on the same real faces, and compare age, gender
probabilities and the pooled embedding.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from PIL import Image

from agelens.models.convert.faceapi import (
    EMBEDDING_SIZE,
    INPUT_SIZE,
    MEAN_RGB,
    age_gender_net_to_onnx,
    expected_weight_shapes,
)
from agelens.models.fetch import read_package_file
from agelens.models.registry import FACEAPI_PACKAGE

REPO_ROOT = Path(__file__).resolve().parents[3]
NODE_DIR = REPO_ROOT / "tools" / "node"
REFERENCE_SCRIPT = NODE_DIR / "faceapi_reference.mjs"
UTKFACE_DIR = REPO_ROOT.parent / "shared" / "data" / "utkface"

# Paths inside the npm tarball of @vladmandic/face-api@1.7.15.
MANIFEST_PATH = "package/model/age_gender_model-weights_manifest.json"
WEIGHTS_PATH = "package/model/age_gender_model.bin"

# Measured against face-api 1.7.15 / tfjs 4.22.0 (cpu and wasm backends alike): age within
# 2e-5 years, gender probabilities within 3e-7, embedding (values up to ~40) within 1e-5, i.e.
# float32 rounding. 1e-3 leaves room for other CPUs' summation order while still catching any
# real mistake (a wrong pad side or mean moves outputs by far more).
TOLERANCE = 1e-3

# UTKFace faces used, as (age, gender) in labels.csv: the first test-split image of each.
UTKFACE_PICKS = ((8, "F"), (27, "M"), (45, "F"), (70, "M"))
CASES = ["astronaut", *(f"utkface-{age}{gender}" for age, gender in UTKFACE_PICKS)]

Faces = NDArray[np.float32]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _to_face(rgb: NDArray[np.uint8]) -> Faces:
    """A face crop as face-api receives it here: RGB 112x112, float32 pixel values 0..255."""
    resized = Image.fromarray(rgb).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(resized.convert("RGB"), dtype=np.float32)


def _astronaut_face() -> Faces:
    from skimage import data

    # A square box around Eileen Collins' face (hair to chin) in the 512x512 portrait.
    return _to_face(data.astronaut()[35:160, 150:275])


def _utkface_faces() -> dict[str, Faces]:
    """The UTKFACE_PICKS chips (200x200, already tightly cropped to the face), or {} if absent."""
    labels = UTKFACE_DIR / "labels.csv"
    if not labels.is_file():
        return {}
    with labels.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["split"] == "test"]
    faces: dict[str, Faces] = {}
    for age, gender in UTKFACE_PICKS:
        row = next(r for r in rows if r["age"] == str(age) and r["gender"] == gender)
        with Image.open(UTKFACE_DIR / row["file"]) as image:
            faces[f"utkface-{age}{gender}"] = _to_face(np.asarray(image.convert("RGB")))
    return faces


def _normalise(faces: Faces) -> Faces:
    """face-api's TinyXception preprocessing, (rgb - mean) / 255, then NHWC -> NCHW."""
    normalised = (faces - np.asarray(MEAN_RGB, dtype=np.float32)) / np.float32(255)
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package_weights() -> tuple[bytes, bytes]:
    """(manifest, weights) of AgeGenderNet from the fetched face-api package."""
    return (
        read_package_file(FACEAPI_PACKAGE, MANIFEST_PATH),
        read_package_file(FACEAPI_PACKAGE, WEIGHTS_PATH),
    )


@pytest.fixture(scope="module")
def reference_faces() -> dict[str, Faces]:
    return {"astronaut": _astronaut_face(), **_utkface_faces()}


@pytest.fixture(scope="module")
def onnx_outputs(
    package_weights: tuple[bytes, bytes], reference_faces: dict[str, Faces]
) -> dict[str, dict[str, Any]]:
    """Per case: the converted model's outputs in onnxruntime, run as one batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        age_gender_net_to_onnx(*package_weights), providers=["CPUExecutionProvider"]
    )
    names = list(reference_faces)
    batch = _normalise(np.stack([reference_faces[name] for name in names]))
    age, gender, embedding = session.run(
        ["age", "gender_probabilities", "embedding"], {"input": batch}
    )
    return {
        name: {"age": age[i], "gender_probabilities": gender[i], "embedding": embedding[i]}
        for i, name in enumerate(names)
    }


@pytest.fixture(scope="module")
def faceapi_outputs(
    reference_faces: dict[str, Faces], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Per case: face-api's own outputs, from one run of the node reference tool."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH (needed to run face-api/tfjs as the reference)")
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.skip("tools/node/node_modules is missing: run `npm ci --prefix tools/node`")
    workdir = tmp_path_factory.mktemp("faceapi")
    names = list(reference_faces)
    # The tool reads raw little-endian float32 [N, 112, 112, 3] RGB 0..255.
    np.stack([reference_faces[name] for name in names]).astype("<f4").tofile(workdir / "in.f32")
    completed = subprocess.run(
        [node, str(REFERENCE_SCRIPT), "--input", "in.f32", "--output", "out.json"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads((workdir / "out.json").read_text())
    assert result["versions"]["face-api"] == "1.7.15"
    assert result["heads_from_embedding_max_abs_diff"] == 0
    return {
        name: {
            "age": result["age"][i],
            "gender_probabilities": result["gender_probabilities"][i],
            "embedding": result["embedding"][i],
            "prediction": result["predictions"][i],
        }
        for i, name in enumerate(names)
    }


# --------------------------------------------------------------------------------------------
# Fidelity against face-api (node)
# --------------------------------------------------------------------------------------------


@pytest.mark.node
@pytest.mark.parametrize("case", CASES)
def test_matches_faceapi(
    case: str,
    reference_faces: dict[str, Faces],
    faceapi_outputs: dict[str, dict[str, Any]],
    onnx_outputs: dict[str, dict[str, Any]],
) -> None:
    if case not in reference_faces:
        pytest.skip(f"{UTKFACE_DIR} is absent (shared test data)")
    expected, actual = faceapi_outputs[case], onnx_outputs[case]

    for output in ("age", "gender_probabilities", "embedding"):
        want = np.asarray(expected[output], dtype=np.float32)
        got = np.asarray(actual[output])
        assert got.shape == want.shape, output
        diff = float(np.max(np.abs(got - want)))
        assert diff < TOLERANCE, f"{case} {output}: max abs diff {diff}"
    assert actual["embedding"].shape == (EMBEDDING_SIZE,)

    # face-api's predictAgeAndGender reads index 0 as "probability of male".
    prediction = expected["prediction"]
    probability_male = float(actual["gender_probabilities"][0])
    assert prediction["gender"] == ("male" if probability_male > 0.5 else "female")
    assert abs(prediction["genderProbability"] - max(probability_male, 1 - probability_male)) < (
        TOLERANCE
    )
    assert abs(prediction["age"] - float(actual["age"])) < TOLERANCE


# --------------------------------------------------------------------------------------------
# Determinism and manifest validation (no node needed)
# --------------------------------------------------------------------------------------------


def _synthetic_weights(seed: int = 0) -> tuple[list[dict[str, Any]], bytes]:
    """A manifest + bin with AgeGenderNet's layout: uint8-quantized kernels, float32 biases."""
    rng = np.random.default_rng(seed)
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, shape in expected_weight_shapes().items():
        count = int(np.prod(shape))
        entry: dict[str, Any] = {"name": name, "shape": list(shape), "dtype": "float32"}
        if name.endswith("/bias"):
            chunks.append((rng.standard_normal(count) * 0.1).astype("<f4").tobytes())
        else:
            entry["quantization"] = {"dtype": "uint8", "scale": 0.01, "min": -1.2}
            chunks.append(rng.integers(0, 256, count, dtype=np.uint8).tobytes())
        entries.append(entry)
    return entries, b"".join(chunks)


def _manifest(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps([{"paths": ["age_gender_model.bin"], "weights": entries}]).encode()


def test_conversion_is_deterministic() -> None:
    entries, weights = _synthetic_weights()
    first = age_gender_net_to_onnx(_manifest(entries), weights)
    assert age_gender_net_to_onnx(_manifest(entries), weights) == first

    other_entries, other_weights = _synthetic_weights(seed=1)
    assert age_gender_net_to_onnx(_manifest(other_entries), other_weights) != first

    model = onnx.load_from_string(first)
    assert model.producer_name == "agelens"
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["age", "gender_probabilities", "embedding"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, INPUT_SIZE, INPUT_SIZE]


def test_package_weights_convert_deterministically(package_weights: tuple[bytes, bytes]) -> None:
    assert age_gender_net_to_onnx(*package_weights) == age_gender_net_to_onnx(*package_weights)


def _drop(entries: list[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    return (entry for entry in entries if entry["name"] != name)


def _bad_inputs() -> Iterator[Any]:
    entries, weights = _synthetic_weights()
    by_name = {entry["name"]: entry for entry in entries}

    # The last weight is fc/gender/bias (2 float32): dropping it keeps the bin consistent.
    assert entries[-1]["name"] == "fc/gender/bias"
    yield pytest.param(
        _manifest(list(_drop(entries, "fc/gender/bias"))),
        weights[:-8],
        "missing.*fc/gender/bias",
        id="missing-weight",
    )

    # Same element count, transposed shape: only the shape check can catch it.
    transposed = [dict(e) for e in entries]
    next(e for e in transposed if e["name"] == "fc/gender/weights")["shape"] = [2, 512]
    yield pytest.param(
        _manifest(transposed), weights, r"fc/gender/weights.*\[2, 512\]", id="wrong-shape"
    )

    extra = {**by_name["fc/age/bias"], "name": "fc/extra/bias"}
    yield pytest.param(
        _manifest([*entries, extra]),
        weights + np.zeros(1, "<f4").tobytes(),
        "unexpected.*fc/extra/bias",
        id="unexpected-weight",
    )
    yield pytest.param(_manifest(entries), weights[:-1], "past the end", id="truncated-bin")
    yield pytest.param(_manifest(entries), weights + b"\0", "describes", id="bin-too-long")

    # float16 weights are decoded as tfjs does, so a bin holding float32 no longer matches
    float16 = [dict(e) for e in entries]
    float16[0]["quantization"] = {"dtype": "float16"}
    yield pytest.param(
        _manifest(float16), weights, "past the end|describes", id="float16-over-float32"
    )
    int8 = [dict(e) for e in entries]
    int8[0]["quantization"] = {"dtype": "int8"}
    yield pytest.param(_manifest(int8), weights, "unsupported quantization", id="int8")
    yield pytest.param(b"{not json", weights, "not valid JSON", id="not-json")
    yield pytest.param(b'{"weights": []}', weights, "list of weight groups", id="not-a-list")


@pytest.mark.parametrize(("manifest", "weights", "message"), list(_bad_inputs()))
def test_bad_manifest_is_refused(manifest: bytes, weights: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        age_gender_net_to_onnx(manifest, weights)
