"""`set_square_input`: the fetched short-range BlazeFace graph at another input size.

The rewritten graph must compute exactly what the same weights compute with free spatial
dimensions (only shapes change), have one anchor row per cell of the smaller grids, and refuse
sizes the strides do not divide.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from agelens.models.convert.input_size import set_square_classifier_input, set_square_input
from agelens.models.fetch import model_file
from agelens.models.registry import get_spec


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _free_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with symbolic height, width and anchor counts (Reshape to -1)."""
    free = onnx.ModelProto()
    free.CopyFrom(model)
    for dim in free.graph.input[0].type.tensor_type.shape.dim[1:3]:
        dim.dim_param = "side"
    reshapes = {node.input[1] for node in free.graph.node if node.op_type == "Reshape"}
    for index, initializer in enumerate(free.graph.initializer):
        if initializer.name in reshapes:
            shape = numpy_helper.to_array(initializer).copy()
            shape[1] = -1
            free.graph.initializer[index].CopyFrom(numpy_helper.from_array(shape, initializer.name))
    for output in free.graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del free.graph.value_info[:]
    return free


@pytest.fixture(scope="module")
def short_range() -> onnx.ModelProto:
    return onnx.load(str(model_file(get_spec("blazeface-short"), "detector.onnx")))


@pytest.mark.parametrize("size", [96, 80, 128])
def test_resized_graph_computes_what_the_weights_compute_at_that_size(
    short_range: onnx.ModelProto, astronaut: np.ndarray, size: int
) -> None:
    resized = onnx.ModelProto()
    resized.CopyFrom(short_range)
    set_square_input(resized, size)
    onnx.checker.check_model(resized)
    photo = np.asarray(astronaut[:: 512 // size, :: 512 // size][:size, :size], np.float32)
    batch = np.stack([photo, photo[::-1], np.zeros_like(photo)]) / 127.5 - 1
    name = short_range.graph.input[0].name
    fixed = _session(resized).run(None, {name: batch})
    free = _session(_free_shapes(short_range)).run(None, {name: batch})
    # 2 anchors a cell at stride 8, 6 at stride 16
    anchors = 2 * (size // 8) ** 2 + 6 * (size // 16) ** 2
    for got, reference in zip(fixed, free, strict=True):
        assert got.shape[:2] == (3, anchors)
        np.testing.assert_array_equal(got, reference)


def test_sizes_the_strides_do_not_divide_are_refused(short_range: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(short_range)
    for size in (100, 0, -16):
        with pytest.raises(ValueError, match="multiple of 16"):
            set_square_input(model, size)
    free = _free_shapes(short_range)
    with pytest.raises(ValueError, match="fixed height and width"):
        set_square_input(free, 96)


def test_classifier_graphs_take_smaller_square_crops() -> None:
    """faceres at 160 px: only the input shape changes, the outputs keep theirs; sizes that are
    not multiples of 16, and graphs that reshape by a size, are refused."""
    model = onnx.load(model_file(get_spec("faceres"), "age_gender.onnx"))
    set_square_classifier_input(model, 160)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [160, 160, 3]
    session = _session(model)
    batch = np.random.default_rng(0).uniform(-120, 140, (2, 160, 160, 3)).astype(np.float32)
    age, male = session.run(["age_probabilities", "gender_probability"], {"input_1": batch})
    assert age.shape == (2, 100)
    assert male.shape == (2, 1)
    np.testing.assert_allclose(age.sum(axis=1), 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple of 16"):
        set_square_classifier_input(model, 150)
    detector = onnx.load(model_file(get_spec("blazeface-short"), "detector.onnx"))
    with pytest.raises(ValueError, match="reshapes by a fixed size"):
        set_square_classifier_input(detector, 96)
