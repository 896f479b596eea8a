"""face-api's AgeGenderNet (TF.js weights) rebuilt as an ONNX graph.

`@vladmandic/face-api` ships AgeGenderNet as bare TF.js weights (a weights manifest plus one
`.bin` shard) and builds the graph in JavaScript, so there is no graph file to translate: the
architecture below is read from face-api 1.7.15's own source (`src/xception/TinyXception.ts`,
`src/ageGenderNet/AgeGenderNet.ts`, `src/common/*.ts`) and mirrored op for op.

Network, in face-api's NHWC terms (the ONNX graph is the same in NCHW)::

    x = relu(conv3x3/2(x) + b)                                         112 -> 56, 32 ch
    x = reduction_block(x, 32 -> 64, activate_input=False)             56 -> 28
    x = reduction_block(x, 64 -> 128)                                  28 -> 14
    x = main_block(x) twice                                            14, 128 ch
    x = reduction_block(x, 128 -> 256)                                 14 -> 7
    x = relu(separable_conv(x, 256 -> 512))                            7, 512 ch
    embedding = avg_pool 7x7 stride 2 'valid', flattened               [N, 512]
    age = embedding @ W_age + b_age                                    [N] years
    gender = softmax(embedding @ W_gender + b_gender)                  [N, 2] (male, female)

    reduction_block(x) = maxpool3x3/2(sep(relu(sep(relu?(x))))) + conv1x1/2(x)
    main_block(x)      = sep(relu(sep(relu(sep(relu(x)))))) + x
    sep(x)             = pointwise1x1(depthwise3x3(x)) + b            (tf.separableConv2d)

Every convolution and pooling uses TensorFlow 'same' padding, which puts the odd extra row and
column at the bottom/right; it is written out as explicit ONNX pads because the input size is
fixed at 112x112.

Preprocessing stays outside the graph (agelens builds it from the model spec): face-api feeds the
network `(rgb - [122.782, 117.001, 104.298]) / 255` on an RGB image padded to a square (image
centred, zero padding) and bilinearly resized to 112x112, NHWC. The ONNX input is that normalised
tensor transposed to NCHW.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "EMBEDDING_SIZE",
    "GENDER_LABELS",
    "INPUT_SIZE",
    "MEAN_RGB",
    "PIXEL_SCALE",
    "age_gender_net_to_onnx",
    "expected_weight_shapes",
]

#: Side of the square network input, in pixels (face-api: `toBatchTensor(112, true)`).
INPUT_SIZE = 112
#: Per-channel mean subtracted from RGB pixels in 0..255 (face-api's TinyXception `meanRgb`).
MEAN_RGB = (122.782, 117.001, 104.298)
#: Face-api divides by 255 after subtracting the mean: input = (rgb - MEAN_RGB) * PIXEL_SCALE.
PIXEL_SCALE = 1.0 / 255.0
#: Size of the average-pooled backbone feature fed to both heads.
EMBEDDING_SIZE = 512
#: Meaning of `gender_probabilities[:, i]`: face-api reads index 0 as the probability of male.
GENDER_LABELS = ("male", "female")

# Fixed so that converting the same weights always yields the same bytes: the converted file is
# pinned by sha256 in the model registry. Bump CONVERTER_VERSION whenever the emitted graph changes.
_OPSET = 13
_IR_VERSION = 7  # the IR version that goes with opset 13
_PRODUCER = "agelens"
_CONVERTER_VERSION = "1"
_GRAPH_NAME = "faceapi_age_gender_net"

# face-api constructs `new TinyXception(2)` for AgeGenderNet.
_NUM_MAIN_BLOCKS = 2

_Shape = tuple[int, ...]
_Float32Array = NDArray[np.float32]


# --------------------------------------------------------------------------------------------
# Expected weights (names and TF.js shapes), mirroring face-api's xception/extractParams.ts.
# --------------------------------------------------------------------------------------------


def _conv_shapes(prefix: str, c_in: int, c_out: int, k: int) -> dict[str, _Shape]:
    return {f"{prefix}/filters": (k, k, c_in, c_out), f"{prefix}/bias": (c_out,)}


def _separable_shapes(prefix: str, c_in: int, c_out: int) -> dict[str, _Shape]:
    return {
        f"{prefix}/depthwise_filter": (3, 3, c_in, 1),
        f"{prefix}/pointwise_filter": (1, 1, c_in, c_out),
        f"{prefix}/bias": (c_out,),
    }


def _reduction_shapes(prefix: str, c_in: int, c_out: int) -> dict[str, _Shape]:
    return {
        **_separable_shapes(f"{prefix}/separable_conv0", c_in, c_out),
        **_separable_shapes(f"{prefix}/separable_conv1", c_out, c_out),
        **_conv_shapes(f"{prefix}/expansion_conv", c_in, c_out, 1),
    }


def expected_weight_shapes() -> dict[str, _Shape]:
    """Every weight AgeGenderNet needs, by TF.js name, with its TF.js shape (HWIO / [in, out])."""
    shapes: dict[str, _Shape] = {}
    shapes.update(_conv_shapes("entry_flow/conv_in", 3, 32, 3))
    shapes.update(_reduction_shapes("entry_flow/reduction_block_0", 32, 64))
    shapes.update(_reduction_shapes("entry_flow/reduction_block_1", 64, 128))
    for index in range(_NUM_MAIN_BLOCKS):
        for conv in range(3):
            prefix = f"middle_flow/main_block_{index}/separable_conv{conv}"
            shapes.update(_separable_shapes(prefix, 128, 128))
    shapes.update(_reduction_shapes("exit_flow/reduction_block", 128, 256))
    shapes.update(_separable_shapes("exit_flow/separable_conv", 256, EMBEDDING_SIZE))
    shapes["fc/age/weights"] = (EMBEDDING_SIZE, 1)
    shapes["fc/age/bias"] = (1,)
    shapes["fc/gender/weights"] = (EMBEDDING_SIZE, 2)
    shapes["fc/gender/bias"] = (2,)
    return shapes


# --------------------------------------------------------------------------------------------
# TF.js weights manifest decoding.
# --------------------------------------------------------------------------------------------


def _decode_weights(manifest_json: bytes, weights_bin: bytes) -> dict[str, _Float32Array]:
    """Decode every weight of a TF.js manifest exactly as tfjs-core's `io.decodeWeights` does
    (each entry by the TF.js graph converter's `decode_entry`).

    `weights_bin` is the concatenation of the manifest's shards in manifest order (groups in
    order, each group's `paths` in order); face-api's AgeGenderNet has a single shard.
    """
    from agelens.models.convert.tfjs_graph import decode_entry

    try:
        groups = json.loads(manifest_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"AgeGenderNet weights manifest is not valid JSON: {error}") from error
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise ValueError("AgeGenderNet weights manifest must be a JSON list of weight groups")

    weights: dict[str, _Float32Array] = {}
    offset = 0
    for group in groups:
        entries = group.get("weights")
        if not isinstance(entries, list):
            raise ValueError("AgeGenderNet weights manifest: a group has no 'weights' list")
        for entry in entries:
            name, array, offset = decode_entry(entry, weights_bin, offset)
            if array.dtype != np.float32:
                raise ValueError(f"AgeGenderNet weight {name!r}: dtype {array.dtype}, not float32")
            if name in weights:
                raise ValueError(f"AgeGenderNet weights manifest names {name!r} twice")
            weights[name] = array
    if offset != len(weights_bin):
        raise ValueError(
            f"AgeGenderNet weights: the manifest describes {offset} bytes but the weights file "
            f"has {len(weights_bin)}"
        )
    return weights


def _check_architecture(weights: Mapping[str, _Float32Array]) -> None:
    """Raise ValueError unless `weights` are exactly AgeGenderNet's, with the right shapes."""
    expected = expected_weight_shapes()
    missing = [name for name in expected if name not in weights]
    if missing:
        raise ValueError(
            f"not face-api's AgeGenderNet weights: {len(missing)} weight(s) missing, e.g. "
            f"{', '.join(missing[:5])}"
        )
    # Extra weights would mean a different network (face-api would silently ignore them, e.g. a
    # third main block), so they are refused rather than dropped.
    unexpected = sorted(name for name in weights if name not in expected)
    if unexpected:
        raise ValueError(
            f"not face-api's AgeGenderNet weights: unexpected weight(s) {', '.join(unexpected[:5])}"
        )
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(
                f"AgeGenderNet weight {name!r} has shape {list(weights[name].shape)}, "
                f"expected {list(shape)}"
            )


# --------------------------------------------------------------------------------------------
# ONNX graph construction.
# --------------------------------------------------------------------------------------------


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow 'same' padding for a square input: (pad_begin, pad_end, output_size).

    TF puts the odd extra pixel at the end (bottom/right), which ONNX `auto_pad=SAME_UPPER` also
    does; explicit pads keep the graph free of auto_pad's runtime interpretation.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


@dataclass
class _GraphBuilder:
    """Collects nodes and initializers in creation order, so names and bytes are stable."""

    weights: Mapping[str, _Float32Array]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _initializer_names: set[str] = field(default_factory=set)

    def constant(self, name: str, array: NDArray[Any]) -> str:
        if name in self._initializer_names:
            raise AssertionError(f"initializer {name!r} created twice")
        self._initializer_names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output

    # Layers, each named after the TF.js weight prefix it uses.

    def conv(self, x: str, prefix: str, size: int, stride: int) -> tuple[str, int]:
        """face-api's `conv`: tf.conv2d(x, filters, stride, 'same') + bias."""
        filters = self.weights[f"{prefix}/filters"]  # [kh, kw, in, out] (HWIO)
        kernel = filters.shape[0]
        begin, end, out = _same_pads(size, kernel, stride)
        w = self.constant(f"{prefix}/filters", filters.transpose(3, 2, 0, 1))  # -> OIHW
        b = self.constant(f"{prefix}/bias", self.weights[f"{prefix}/bias"])
        y = self.node(
            "Conv",
            [x, w, b],
            f"{prefix}/conv",
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[begin, begin, end, end],
        )
        return y, out

    def separable(self, x: str, prefix: str, size: int) -> str:
        """face-api's `depthwiseSeparableConv`: tf.separableConv2d(..., [1, 1], 'same') + bias.

        tf.separableConv2d is a depthwise 3x3 conv followed by a 1x1 conv with no bias in
        between, so the bias folds into the 1x1 Conv (same sum, added once).
        """
        depthwise = self.weights[f"{prefix}/depthwise_filter"]  # [3, 3, in, 1]
        pointwise = self.weights[f"{prefix}/pointwise_filter"]  # [1, 1, in, out]
        channels = depthwise.shape[2]
        begin, end, _ = _same_pads(size, 3, 1)
        dw = self.constant(f"{prefix}/depthwise_filter", depthwise.transpose(2, 3, 0, 1))
        y = self.node(
            "Conv",
            [x, dw],
            f"{prefix}/depthwise",
            group=channels,
            kernel_shape=[3, 3],
            strides=[1, 1],
            pads=[begin, begin, end, end],
        )
        pw = self.constant(f"{prefix}/pointwise_filter", pointwise.transpose(3, 2, 0, 1))
        b = self.constant(f"{prefix}/bias", self.weights[f"{prefix}/bias"])
        return self.node("Conv", [y, pw, b], f"{prefix}/pointwise", kernel_shape=[1, 1])

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def reduction_block(
        self, x: str, prefix: str, size: int, activate_input: bool = True
    ) -> tuple[str, int]:
        """face-api's `reductionBlock`; the shortcut conv sees the block input before the ReLU."""
        out = self.relu(x, f"{prefix}/input_relu") if activate_input else x
        out = self.separable(out, f"{prefix}/separable_conv0", size)
        out = self.relu(out, f"{prefix}/separable_conv0/relu")
        out = self.separable(out, f"{prefix}/separable_conv1", size)
        begin, end, pooled_size = _same_pads(size, 3, 2)
        # ONNX MaxPool ignores padded cells, like TF's 'same' max pooling.
        out = self.node(
            "MaxPool",
            [out],
            f"{prefix}/max_pool",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[begin, begin, end, end],
        )
        shortcut, shortcut_size = self.conv(x, f"{prefix}/expansion_conv", size, 2)
        if shortcut_size != pooled_size:
            raise AssertionError(f"{prefix}: branch sizes {pooled_size} != {shortcut_size}")
        return self.node("Add", [out, shortcut], f"{prefix}/add"), pooled_size

    def main_block(self, x: str, prefix: str, size: int) -> str:
        """face-api's `mainBlock`: three ReLU + separable convs and an identity shortcut."""
        out = x
        for index in range(3):
            out = self.relu(out, f"{prefix}/separable_conv{index}/input_relu")
            out = self.separable(out, f"{prefix}/separable_conv{index}", size)
        return self.node("Add", [out, x], f"{prefix}/add")

    def fully_connected(self, x: str, prefix: str) -> str:
        """face-api's `fullyConnectedLayer`: tf.matMul(x, weights) + bias, weights [in, out]."""
        w = self.constant(f"{prefix}/weights", self.weights[f"{prefix}/weights"])
        b = self.constant(f"{prefix}/bias", self.weights[f"{prefix}/bias"])
        return self.node("Gemm", [x, w, b], f"{prefix}/gemm")


def _build_graph(weights: Mapping[str, _Float32Array]) -> onnx.GraphProto:
    g = _GraphBuilder(weights)

    # TinyXception.forwardInput (normalisation happens outside the graph).
    x, size = g.conv("input", "entry_flow/conv_in", INPUT_SIZE, 2)
    x = g.relu(x, "entry_flow/conv_in/relu")
    x, size = g.reduction_block(x, "entry_flow/reduction_block_0", size, activate_input=False)
    x, size = g.reduction_block(x, "entry_flow/reduction_block_1", size)
    for index in range(_NUM_MAIN_BLOCKS):
        x = g.main_block(x, f"middle_flow/main_block_{index}", size)
    x, size = g.reduction_block(x, "exit_flow/reduction_block", size)
    x = g.separable(x, "exit_flow/separable_conv", size)
    x = g.relu(x, "exit_flow/separable_conv/relu")
    if size != 7:
        raise AssertionError(f"backbone output is {size}x{size}, face-api pools 7x7")

    # AgeGenderNet.runNet: tf.avgPool(x, [7, 7], [2, 2], 'valid') then as2D(batch, -1). On the 7x7
    # map this is a global average; NCHW [N, 512, 1, 1] flattens in the same channel order as
    # face-api's NHWC [N, 1, 1, 512].
    x = g.node("AveragePool", [x], "avg_pool", kernel_shape=[7, 7], strides=[2, 2])
    embedding = g.node("Flatten", [x], "embedding", axis=1)

    age = g.fully_connected(embedding, "fc/age")  # [N, 1]
    flat = g.constant("age/shape", np.array([-1], dtype=np.int64))
    g.node("Reshape", [age, flat], "age")  # face-api's `.as1D()`
    logits = g.fully_connected(embedding, "fc/gender")
    # AgeGenderNet.forwardInput applies tf.softmax over the last axis.
    g.node("Softmax", [logits], "gender_probabilities", axis=-1)

    batch = "N"
    return helper.make_graph(
        g.nodes,
        _GRAPH_NAME,
        inputs=[
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, [batch, 3, INPUT_SIZE, INPUT_SIZE]
            )
        ],
        outputs=[
            helper.make_tensor_value_info("age", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("gender_probabilities", TensorProto.FLOAT, [batch, 2]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, EMBEDDING_SIZE]),
        ],
        initializer=g.initializers,
    )


def _iter_metadata() -> Iterator[tuple[str, str]]:
    """Facts a consumer needs and cannot read from the graph, in a fixed order."""
    yield "source", "@vladmandic/face-api AgeGenderNet (TinyXception, TF.js weights)"
    yield "input_layout", "NCHW RGB"
    yield "input_normalisation", "(rgb_0_255 - mean_rgb) / 255"
    yield "mean_rgb", ",".join(repr(v) for v in MEAN_RGB)
    yield "age_units", "years"
    yield "gender_labels", ",".join(GENDER_LABELS)


def age_gender_net_to_onnx(manifest_json: bytes, weights_bin: bytes) -> bytes:
    """Convert face-api's AgeGenderNet TF.js weights into a serialized ONNX model.

    `manifest_json` is `age_gender_model-weights_manifest.json` and `weights_bin` the bytes of
    the shard(s) it lists (`age_gender_model.bin`), concatenated in manifest order.

    The model takes "input", float32 [N, 3, 112, 112]: RGB already normalised as face-api does,
    `(pixel - MEAN_RGB) / 255` with pixels in 0..255. It returns "age" [N] (years, raw regression
    output), "gender_probabilities" [N, 2] (softmax; index 0 male, 1 female) and "embedding"
    [N, 512] (the average-pooled backbone feature both heads read).

    The output is deterministic: the same weights always give the same bytes.

    Raises:
        ValueError: the manifest is malformed, uses an unsupported weight encoding, does not
            match the weights file's size, or does not describe AgeGenderNet (missing or
            unexpected weight names, wrong shapes).
    """
    weights = _decode_weights(manifest_json, weights_bin)
    _check_architecture(weights)

    model = helper.make_model(
        _build_graph(weights),
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name=_PRODUCER,
        producer_version=_CONVERTER_VERSION,
        doc_string="face-api AgeGenderNet converted from TF.js weights by agelens",
    )
    model.ir_version = _IR_VERSION
    helper.set_model_props(model, dict(_iter_metadata()))
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString(deterministic=True))
