"""Trained heads -> one ONNX graph, and its optional int8 version.

The graph is written with `onnx.helper` rather than `torch.onnx.export`: the heads are two
linear layers, so the graph is a dozen nodes we can state exactly, and the export then needs
neither TorchScript nor onnxscript (the exporters PyTorch ships change with every release).

All K fold heads run as one wide first layer (the standardisation folded into its weights)
and one reshaped second layer, so K heads cost one matrix product each, not K.

Graph: `features (N, D) float32` -> `age_probabilities (N, 101)` (the mean of the heads'
softmaxes) and `gender_logit (N,)` (the mean of their logits). With `float16_weights` the
weights are stored as float16 and cast at load time (half the file, no float16 arithmetic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agelens.train.heads import AGE_CLASSES, HeadWeights

OPSET = 17


def fused_weights(
    heads: tuple[HeadWeights, ...],
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """(W1 (D, K*H), b1 (K*H,), W2 (K, H, 102), b2 (K, 102)) with standardisation folded in."""
    first_weights, first_biases = [], []
    for head in heads:
        w = head.hidden_weight / head.scale[None, :]  # (H, D)
        first_weights.append(w)
        first_biases.append(head.hidden_bias - w @ head.mean)
    w1 = np.concatenate(first_weights).T.astype(np.float32)
    b1 = np.concatenate(first_biases).astype(np.float32)
    w2 = np.stack([head.output_weight.T for head in heads]).astype(np.float32)
    b2 = np.stack([head.output_bias for head in heads]).astype(np.float32)
    return w1, b1, w2, b2


def write_onnx(heads: tuple[HeadWeights, ...], path: Path, *, float16_weights: bool) -> None:
    """Write the heads as one ONNX model to `path` (atomically)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = fused_weights(heads)
    count, hidden, outputs = w2.shape
    storage = np.float16 if float16_weights else np.float32
    initializers = []
    nodes = []

    def weight(name: str, value: NDArray[np.float32]) -> str:
        if not float16_weights:
            initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
            return name
        initializers.append(numpy_helper.from_array(value.astype(storage), f"{name}_f16"))
        nodes.append(helper.make_node("Cast", [f"{name}_f16"], [name], to=TensorProto.FLOAT))
        return name

    def constant(name: str, value: NDArray[np.int64]) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    nodes += [
        helper.make_node("MatMul", ["features", weight("w1", w1)], ["h_linear"]),
        helper.make_node("Add", ["h_linear", weight("b1", b1)], ["h_biased"]),
        helper.make_node("Relu", ["h_biased"], ["h"]),
        # (N, K*H) -> (K, N, H) so each head multiplies its own block of W2. The batch axis is
        # copied (0), not inferred (-1): ONNX Runtime divides by zero inferring it for N = 0.
        helper.make_node(
            "Reshape", ["h", constant("h_shape", np.array([0, count, hidden]))], ["h_split"]
        ),
        helper.make_node("Transpose", ["h_split"], ["h_heads"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["h_heads", weight("w2", w2)], ["o_linear"]),
        helper.make_node(
            "Add",
            ["o_linear", weight("b2", b2.reshape(count, 1, outputs))],
            ["o"],
        ),
        helper.make_node(
            "Split",
            ["o", constant("split_sizes", np.array([AGE_CLASSES, 1]))],
            ["age_logits", "gender_logits"],
            axis=2,
        ),
        helper.make_node("Softmax", ["age_logits"], ["age_softmax"], axis=2),
        # Opset 17: ReduceMean takes its axes as an attribute.
        helper.make_node(
            "ReduceMean", ["age_softmax"], ["age_probabilities"], axes=[0], keepdims=0
        ),
        helper.make_node(
            "ReduceMean", ["gender_logits"], ["gender_logit"], axes=[0, 2], keepdims=0
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "agelens_heads",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", int(w1.shape[0])])],
        [
            helper.make_tensor_value_info(
                "age_probabilities", TensorProto.FLOAT, ["N", AGE_CLASSES]
            ),
            helper.make_tensor_value_info("gender_logit", TensorProto.FLOAT, ["N"]),
        ],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="agelens train"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    temporary = path.with_suffix(".tmp.onnx")
    onnx.save(model, str(temporary))
    temporary.replace(path)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the matrix products (weights int8, activations quantized
    per batch at run time): the standard choice for MLP heads, which have no convolutions to
    calibrate."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    temporary = target.with_suffix(".tmp.onnx")
    quantize_dynamic(str(source), str(temporary), weight_type=QuantType.QInt8)
    temporary.replace(target)
