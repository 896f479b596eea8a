"""Run a converted graph at another (square) input size: BlazeFace, and the faceres classifiers.

BlazeFace is fully convolutional: only its input shape and the Reshapes that flatten each head
into `(N, anchors, values)` name a size. `set_square_input` rewrites both in place, so the same
weights run at, say, 96 px for (96/128)² of the work, with the anchors generated for the new grid
(`geometry.generate_anchors`). The network still finds faces of about the same size *in its own
pixels* (about 20 px and up; see `blazeface.RangeSwitchingDetector`), so a smaller input finds
only faces that are a larger share of the image.

Why fixed sizes and not symbolic dimensions: with symbolic height and width ONNX Runtime ran the
short-range model 20% slower at 128 px (1.77-1.96 vs 1.48-1.67 ms an image, batch 16, one
thread), so each size gets its own graph with every shape known.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import numpy_helper


def _square_input_dims(model: onnx.ModelProto, size: int, multiple: int) -> Any:
    """The dims of the graph's one square NHWC input, once `size` is checked against them."""
    if size <= 0 or size % multiple:
        raise ValueError(f"input size must be a positive multiple of {multiple}, not {size}")
    if len(model.graph.input) != 1:
        raise ValueError("expected a graph with one input")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value != dims[2].dim_value or dims[1].dim_value <= 0:
        raise ValueError("expected a square NHWC input with fixed height and width")
    return dims


def set_square_input(model: onnx.ModelProto, size: int, *, stride: int = 16) -> None:
    """Rewrite an NHWC detector graph with a square input to take `size` x `size` images.

    `size` must be a multiple of the network's largest `stride`, so every feature map shrinks
    by an exact factor and every anchor count scales by `(size / old_size)²`.
    """
    dims = _square_input_dims(model, size, stride)
    old = dims[1].dim_value
    if old % stride:
        raise ValueError(f"the graph's input size {old} is not a multiple of {stride}")

    def scaled(anchors: int) -> int:
        if (anchors * size * size) % (old * old):
            raise ValueError(f"{anchors} anchors do not scale from {old} to {size} px")
        return int(anchors * size * size // (old * old))

    dims[1].dim_value = size
    dims[2].dim_value = size
    reshape_shapes = {node.input[1] for node in model.graph.node if node.op_type == "Reshape"}
    for index, initializer in enumerate(model.graph.initializer):
        if initializer.name not in reshape_shapes:
            continue
        shape = numpy_helper.to_array(initializer).copy()
        if shape.shape != (3,):
            raise ValueError(f"unexpected Reshape target {shape.tolist()}")
        shape[1] = scaled(int(shape[1]))
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(shape, initializer.name))
    for output in model.graph.output:
        anchors = output.type.tensor_type.shape.dim[1]
        if anchors.dim_value > 0:
            anchors.dim_value = scaled(anchors.dim_value)
    # Shapes inferred for the old size would contradict the new ones.
    del model.graph.value_info[:]


def set_square_classifier_input(model: onnx.ModelProto, size: int, *, multiple: int = 16) -> None:
    """Rewrite an NHWC classifier graph that ends in a global pooling (faceres, faceres-deep)
    to take `size` x `size` crops: only its input shape names a size, so the same weights read
    a smaller crop for about (size / old size)² of the work. The outputs keep their shapes."""
    dims = _square_input_dims(model, size, multiple)
    if any(node.op_type == "Reshape" for node in model.graph.node):
        raise ValueError("the graph reshapes by a fixed size; its input size cannot change")
    dims[1].dim_value = size
    dims[2].dim_value = size
    del model.graph.value_info[:]
