"""TF.js graph -> ONNX: the HSE faceres graphs against @tensorflow/tfjs itself (node).

The fidelity tests run `tools/node/tfjs_graph_reference.mjs` (tfjs 4.22.0, pure-JS cpu backend)
on the original model.json and shards, taken from the fetched npm package, and the converted
graph in onnxruntime, on the same real faces, and compare every output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from PIL import Image

from agelens.models.convert.tfjs_graph import SUPPORTED_OPS, graph_ops, tfjs_graph_to_onnx
from agelens.models.fetch import read_package_file
from agelens.models.registry import FACERES_OUTPUTS, HUMAN_MODELS_PACKAGE

REPO_ROOT = Path(__file__).resolve().parents[3]
NODE_DIR = REPO_ROOT / "tools" / "node"
REFERENCE_SCRIPT = NODE_DIR / "tfjs_graph_reference.mjs"
SAMPLES_DIR = REPO_ROOT.parent / "shared" / "data" / "samples"
STEMS = ("faceres", "faceres-deep")

#: Measured with tfjs 4.22.0 (cpu backend) on the astronaut and four sample photos: embedding
#: (values up to ~2.3) within 4e-6, age probabilities within 3e-7, P(male) within 5e-7, for both
#: graphs, i.e. float32 rounding. 1e-3 leaves room for other CPUs while any real mistake (a wrong
#: pad side, kernel layout or axis) moves the outputs by far more.
TOLERANCE = 1e-3
#: Caffe/VGG means HSE subtracts from BGR pixels.
MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

Faces = NDArray[np.float32]


def _face(rgb: NDArray[np.uint8]) -> Faces:
    """A crop as the graph receives it: 224x224, BGR minus the Caffe means, NHWC float32."""
    resized = Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized.convert("RGB"), dtype=np.float32)
    return np.ascontiguousarray(pixels[..., ::-1] - MEAN_BGR)


def _sample_faces() -> dict[str, Faces]:
    """Faces of the shared sample photos, found by the registered detector (absent -> {})."""
    if not SAMPLES_DIR.is_dir():
        return {}
    from agelens.geometry import square_box
    from agelens.imaging import load_image
    from agelens.models.backends import create_detector

    detector = create_detector("blazeface-full", threads=1)
    faces: dict[str, Faces] = {}
    for path in sorted(SAMPLES_DIR.glob("*.jpg"))[:4]:
        image = load_image(path)
        found = detector.detect_many([image])[0]
        if not found:
            continue
        x1, y1, x2, y2 = (round(float(v)) for v in square_box(found[0].box_xyxy, 1.25))
        x1, y1 = max(x1, 0), max(y1, 0)
        faces[f"sample-{path.stem}"] = _face(image[y1:y2, x1:x2])
    return faces


@pytest.fixture(scope="module")
def reference_faces() -> dict[str, Faces]:
    from skimage import data

    return {"astronaut": _face(data.astronaut()[20:180, 130:290]), **_sample_faces()}


@pytest.fixture(scope="module", params=STEMS)
def package_graph(request: pytest.FixtureRequest) -> tuple[str, bytes, bytes]:
    """(stem, model.json, shard) of one faceres graph from the fetched npm package."""
    stem: str = request.param
    return (
        stem,
        read_package_file(HUMAN_MODELS_PACKAGE, f"package/models/{stem}.json"),
        read_package_file(HUMAN_MODELS_PACKAGE, f"package/models/{stem}.bin"),
    )


def _onnx_outputs(graph: tuple[str, bytes, bytes], batch: Faces) -> dict[str, NDArray[Any]]:
    import onnxruntime as ort

    stem, model_json, shard = graph
    converted = tfjs_graph_to_onnx(model_json, {f"{stem}.bin": shard}, outputs=FACERES_OUTPUTS)
    session = ort.InferenceSession(converted, providers=["CPUExecutionProvider"])
    values = session.run(list(FACERES_OUTPUTS.values()), {"input_1": batch})
    return dict(zip(FACERES_OUTPUTS, values, strict=True))


def _tfjs_outputs(
    graph: tuple[str, bytes, bytes], batch: Faces, workdir: Path
) -> dict[str, NDArray[Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH (needed to run tfjs as the reference)")
    if not (NODE_DIR / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        pytest.skip("tools/node/node_modules is missing: run `npm ci --prefix tools/node`")
    stem, model_json, shard = graph
    (workdir / f"{stem}.json").write_bytes(model_json)
    (workdir / f"{stem}.bin").write_bytes(shard)
    batch.astype("<f4").tofile(workdir / "in.f32")
    arguments = ["--model", f"{stem}.json", "--input", "in.f32", "--output", "out.json"]
    completed = subprocess.run(
        [node, str(REFERENCE_SCRIPT), *arguments],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads((workdir / "out.json").read_text())
    assert result["versions"]["tfjs"] == "4.22.0"
    return {
        name: np.asarray(out["values"], dtype=np.float32).reshape(out["shape"])
        for name, out in result["outputs"].items()
    }


@pytest.mark.node
def test_matches_tfjs(
    package_graph: tuple[str, bytes, bytes],
    reference_faces: dict[str, Faces],
    tmp_path: Path,
) -> None:
    names = list(reference_faces)
    batch = np.stack([reference_faces[n] for n in names])
    expected = _tfjs_outputs(package_graph, batch, tmp_path)
    actual = _onnx_outputs(package_graph, batch)
    assert set(expected) == set(FACERES_OUTPUTS)
    report = {}
    for output, want in expected.items():
        got = actual[output]
        assert got.shape == want.shape, output
        per_face = np.abs(got - want).reshape(len(names), -1).max(axis=1)
        report[output] = dict(zip(names, per_face.tolist(), strict=True))
        assert float(per_face.max()) < TOLERANCE, f"{package_graph[0]} {output}: {report[output]}"
    # Real faces, not noise: the age distribution is peaked somewhere sensible.
    assert np.all(expected["age_pred/Softmax"].sum(axis=1) == pytest.approx(1.0, abs=1e-4))


def test_graphs_use_only_supported_ops(package_graph: tuple[str, bytes, bytes]) -> None:
    ops = graph_ops(package_graph[1])
    assert set(ops) <= SUPPORTED_OPS
    assert ops["Conv2D"] == 14
    assert ops["DepthwiseConv2dNative"] == 13


def test_conversion_is_deterministic(package_graph: tuple[str, bytes, bytes]) -> None:
    stem, model_json, shard = package_graph
    first = tfjs_graph_to_onnx(model_json, {f"{stem}.bin": shard}, outputs=FACERES_OUTPUTS)
    assert tfjs_graph_to_onnx(model_json, {f"{stem}.bin": shard}, outputs=FACERES_OUTPUTS) == first
    model = onnx.load_from_string(first)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert [i.name for i in model.graph.input] == ["input_1"]
    assert [o.name for o in model.graph.output] == list(FACERES_OUTPUTS.values())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 224, 224, 3]
    # Every Keras ReLU6 (Relu, Minimum 6, Maximum 0) is one Clip ONNX Runtime can fuse.
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Clip") == 27
    assert "Min" not in ops
    assert "Max" not in ops
    assert ops.count("Relu") == 1  # the head's fully connected layer's, after a Gemm


# --------------------------------------------------------------------------------------------
# Small synthetic graphs (no package needed)
# --------------------------------------------------------------------------------------------


def _tiny_graph(extra_op: str | None = None) -> tuple[bytes, dict[str, bytes]]:
    """Placeholder [-1, 4, 4, 2] -> Conv2D 3x3/2 SAME -> Add bias -> Mean[1, 2]."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 3)).astype("<f4")
    bias = rng.standard_normal(3).astype("<f4")
    axes = np.array([1, 2], "<i4")

    def const(name: str) -> dict[str, Any]:
        return {"name": name, "op": "Const", "attr": {}}

    nodes: list[dict[str, Any]] = [
        {
            "name": "x",
            "op": "Placeholder",
            "attr": {
                "shape": {
                    "shape": {"dim": [{"size": "-1"}, {"size": "4"}, {"size": "4"}, {"size": "2"}]}
                }
            },
        },
        const("k"),
        const("b"),
        const("axes"),
        {
            "name": "conv",
            "op": "Conv2D",
            "input": ["x", "k"],
            "attr": {
                "strides": {"list": {"i": ["1", "2", "2", "1"]}},
                "padding": {"s": "U0FNRQ=="},
                "data_format": {"s": "TkhXQw=="},
            },
        },
        {"name": "add", "op": extra_op or "Add", "input": ["conv", "b"]},
        {"name": "mean", "op": "Mean", "input": ["add", "axes"], "attr": {}},
    ]
    manifest = [
        {
            "paths": ["w.bin"],
            "weights": [
                {"name": "k", "shape": [3, 3, 2, 3], "dtype": "float32"},
                {"name": "b", "shape": [3], "dtype": "float32"},
                {"name": "axes", "shape": [2], "dtype": "int32"},
            ],
        }
    ]
    model = {"format": "graph-model", "modelTopology": {"node": nodes}, "weightsManifest": manifest}
    return json.dumps(model).encode(), {"w.bin": kernel.tobytes() + bias.tobytes() + axes.tobytes()}


def test_tiny_graph_matches_numpy() -> None:
    import onnxruntime as ort

    model_json, shards = _tiny_graph()
    session = ort.InferenceSession(
        tfjs_graph_to_onnx(model_json, shards), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).standard_normal((2, 4, 4, 2)).astype(np.float32)
    (got,) = session.run(None, {"x": x})

    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    # TF SAME, 4 -> 2 with stride 2: total pad 1, all of it at the end.
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    out = np.zeros((2, 2, 2, 3), np.float32)
    for i in range(2):
        for j in range(2):
            patch = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            out[:, i, j] = np.einsum("nhwc,hwco->no", patch, kernel)
    want = (out + bias).mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, atol=1e-5)

    # A 4-D output comes back in TF's NHWC layout.
    both = tfjs_graph_to_onnx(model_json, shards, outputs={"add": "add", "mean": "mean"})
    session = ort.InferenceSession(both, providers=["CPUExecutionProvider"])
    features, pooled = session.run(None, {"x": x})
    np.testing.assert_allclose(features, out + bias, atol=1e-5)
    np.testing.assert_allclose(pooled, want, atol=1e-5)


def _relu6_graph() -> tuple[bytes, dict[str, bytes]]:
    """The tiny graph with Keras's ReLU6 (Relu -> Minimum 6 -> Maximum 0) before the Mean."""
    model_json, shards = _tiny_graph()
    model = json.loads(model_json)
    nodes = model["modelTopology"]["node"]
    nodes[-1]["input"] = ["clip", "axes"]
    nodes[-1:-1] = [
        {"name": "six", "op": "Const", "attr": {}},
        {"name": "zero", "op": "Const", "attr": {}},
        {"name": "relu", "op": "Relu", "input": ["add"]},
        {"name": "min", "op": "Minimum", "input": ["relu", "six"]},
        {"name": "clip", "op": "Maximum", "input": ["min", "zero"]},
    ]
    model["weightsManifest"][0]["weights"] += [
        {"name": "six", "shape": [], "dtype": "float32"},
        {"name": "zero", "shape": [], "dtype": "float32"},
    ]
    extra = np.array([6.0, 0.0], "<f4").tobytes()
    return json.dumps(model).encode(), {"w.bin": shards["w.bin"] + extra}


def test_relu6_becomes_one_clip_with_the_same_outputs() -> None:
    import onnxruntime as ort

    model_json, shards = _relu6_graph()
    converted = tfjs_graph_to_onnx(model_json, shards, outputs={"add": "add", "mean": "mean"})
    model = onnx.load_from_string(converted)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Clip") == 1
    assert not {"Relu", "Min", "Max"} & set(ops)
    assert {i.name for i in model.graph.initializer} >= {"relu/clip_min", "relu/clip_max"}
    assert not {"six", "zero"} & {i.name for i in model.graph.initializer}

    session = ort.InferenceSession(converted, providers=["CPUExecutionProvider"])
    x = 4 * np.random.default_rng(2).standard_normal((3, 4, 4, 2)).astype(np.float32)
    features, pooled = session.run(None, {"x": x})
    assert features.min() < 0
    assert features.max() > 6
    np.testing.assert_allclose(pooled, np.clip(features, 0, 6).mean(axis=(1, 2)), atol=1e-6)


def test_relu6_whose_values_are_read_elsewhere_is_left_alone() -> None:
    model_json, shards = _relu6_graph()
    kept = tfjs_graph_to_onnx(model_json, shards, outputs={"relu": "relu", "mean": "mean"})
    ops = [node.op_type for node in onnx.load_from_string(kept).graph.node]
    assert "Clip" not in ops
    assert {"Relu", "Min", "Max"} <= set(ops)


def test_unsupported_operator_is_named() -> None:
    model_json, shards = _tiny_graph(extra_op="BiasAddV9")
    with pytest.raises(ValueError, match=r"unsupported operator.*BiasAddV9"):
        tfjs_graph_to_onnx(model_json, shards)


def test_bad_weights_are_refused() -> None:
    model_json, shards = _tiny_graph()
    with pytest.raises(ValueError, match="describes"):
        tfjs_graph_to_onnx(model_json, {"w.bin": shards["w.bin"] + b"\0"})
    with pytest.raises(ValueError, match="not provided"):
        tfjs_graph_to_onnx(model_json, {})
    with pytest.raises(ValueError, match="not valid JSON"):
        tfjs_graph_to_onnx(b"{oops", shards)
