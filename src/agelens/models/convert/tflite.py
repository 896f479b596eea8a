"""TFLite → ONNX for the MediaPipe BlazeFace face detection graphs.

We convert ourselves because the general-purpose converters either pull in TensorFlow
(tf2onnx) or are unmaintained (tflite2onnx), while the BlazeFace graphs use about ten
operators. Owning the code also makes the output byte-for-byte deterministic, so the ONNX
files produced at `agelens models fetch` time can be pinned by sha256 like downloaded ones.

Layout: the ONNX model keeps TFLite's NHWC float32 input and output tensors (same names and
shapes, except that the batch dimension is symbolic), but every rank-4 activation inside the
graph is held NCHW, which is what ONNX Conv/MaxPool/Resize require. Weights are transposed
once, here, rather than at run time.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

__all__ = ["describe_operators", "tflite_to_onnx"]

#: Fixed so that the same TFLite bytes always give the same ONNX bytes, whatever onnx version
#: runs the conversion (make_model would otherwise stamp the installed library's IR version).
OPSET = 13
IR_VERSION = 7
PRODUCER_NAME = "agelens"
BATCH_DIM = "N"

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)

_OP_NAMES: dict[int, str] = {
    value: name
    for name, value in vars(tflite.BuiltinOperator).items()
    if isinstance(value, int) and not name.startswith("_")
}

_CONSTANT_DTYPES: dict[int, type[np.generic]] = {
    tflite.TensorType.FLOAT32: np.float32,
    tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32,
    tflite.TensorType.INT64: np.int64,
    tflite.TensorType.INT8: np.int8,
    tflite.TensorType.UINT8: np.uint8,
}

_Array = npt.NDArray[np.generic]
_Float32Array = npt.NDArray[np.float32]


def describe_operators(model_bytes: bytes) -> list[str]:
    """Return the sorted, de-duplicated builtin operator names used by a TFLite model.

    Custom operators are listed as ``CUSTOM:<custom code>``. Raises ValueError when the
    bytes are not a TFLite flatbuffer.
    """
    names: set[str] = set()
    with _corrupt_as_value_error():
        model = _parse(model_bytes)
        for s in range(model.SubgraphsLength()):
            graph = model.Subgraphs(s)
            for i in range(graph.OperatorsLength()):
                names.add(_op_name(model, graph.Operators(i)))
    return sorted(names)


def tflite_to_onnx(model_bytes: bytes) -> bytes:
    """Convert a float TFLite model (BlazeFace operator set) to a serialized ONNX model.

    The result has the TFLite model's input and output names; inputs and outputs are NHWC /
    TFLite-shaped float32 with a symbolic batch dimension ``N``. Converting the same bytes
    twice gives identical bytes.

    Raises ValueError when the bytes are not a TFLite model, when the model uses an operator
    this converter does not handle (all such operators are named), or when the graph has a
    shape the conversion cannot keep batchable.
    """
    with _corrupt_as_value_error():
        return _convert(model_bytes)


def _convert(model_bytes: bytes) -> bytes:
    model = _parse(model_bytes)
    if model.SubgraphsLength() != 1:
        raise ValueError(
            f"expected a TFLite model with one subgraph, got {model.SubgraphsLength()}"
        )
    unsupported = [name for name in describe_operators(model_bytes) if name not in _HANDLERS]
    if unsupported:
        raise ValueError(
            f"unsupported TFLite operator(s): {', '.join(unsupported)}; "
            f"this converter handles only {', '.join(sorted(_HANDLERS))}"
        )
    serialized: bytes = _Converter(model, model_bytes).convert().SerializeToString()
    return serialized


def _parse(model_bytes: bytes) -> Any:
    # The tflite reader trusts its input blindly; check the file identifier first so that
    # random bytes fail with a clear message rather than an obscure struct error.
    if len(model_bytes) < 8 or model_bytes[4:8] != b"TFL3":
        raise ValueError("not a TFLite model (missing the 'TFL3' flatbuffer identifier)")
    return tflite.Model.GetRootAsModel(model_bytes, 0)


@contextlib.contextmanager
def _corrupt_as_value_error() -> Iterator[None]:
    # The flatbuffer reader follows offsets without bounds checks, so a damaged file surfaces
    # as a low-level error wherever the first bad offset is read.
    try:
        yield
    except (struct.error, IndexError) as error:
        raise ValueError(f"corrupt TFLite model: {error}") from error


def _op_name(model: Any, op: Any) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    # Schema v3a moved builtin codes above 127 to a new int32 field; older files only fill
    # the deprecated int8 one, so the larger of the two is the real code.
    builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
    name = _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.CustomCode()
        return f"CUSTOM:{custom.decode() if custom else '?'}"
    return name


def _same_pads(
    in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> list[int]:
    """ONNX pads [top, left, bottom, right] reproducing TFLite SAME padding.

    TFLite puts the odd pixel at the end (bottom/right); ONNX's SAME_UPPER does too, but
    explicit pads keep the graph independent of auto_pad support in each runtime.
    """
    begins: list[int] = []
    ends: list[int] = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return begins + ends


def _nchw_axis(axis: int, rank: int) -> int:
    axis = axis % rank
    return _NHWC_TO_NCHW.index(axis) if rank == 4 else axis


class _Converter:
    """One conversion: walks the TFLite operators in order and emits ONNX nodes."""

    def __init__(self, model: Any, model_bytes: bytes) -> None:
        self.model = model
        self.model_bytes = model_bytes
        self.graph = model.Subgraphs(0)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        #: constants computed at conversion time (DEQUANTIZE of float16 weights)
        self.folded: dict[int, _Array] = {}
        self.names = self._unique_tensor_names()
        self.inputs = [int(i) for i in self.graph.InputsAsNumpy()]
        self.outputs = [int(i) for i in self.graph.OutputsAsNumpy()]

    # -- tensors ---------------------------------------------------------------------------

    def _unique_tensor_names(self) -> list[str]:
        names: list[str] = []
        seen: set[str] = set()
        for i in range(self.graph.TensorsLength()):
            name = self.graph.Tensors(i).Name().decode() or f"tensor_{i}"
            if name in seen:
                name = f"{name}_{i}"
            seen.add(name)
            names.append(name)
        return names

    def shape(self, index: int) -> list[int]:
        return [int(d) for d in self.graph.Tensors(index).ShapeAsNumpy()]

    def value(self, index: int) -> str:
        """ONNX name of a tensor as held inside the graph (rank-4 graph inputs/outputs are
        held NCHW under a derived name, next to their NHWC interface name)."""
        name = self.names[index]
        if (index in self.inputs or index in self.outputs) and len(self.shape(index)) == 4:
            return f"{name}/nchw"
        return name

    def constant(self, index: int) -> _Array | None:
        if index in self.folded:
            return self.folded[index]
        tensor = self.graph.Tensors(index)
        buffer = self.model.Buffers(tensor.Buffer())
        if buffer is None:
            return None
        if buffer.DataLength() > 0:
            raw = buffer.DataAsNumpy().tobytes()
        elif int(buffer.Offset()) > 1:
            # Models over 2 GB keep buffers after the flatbuffer, addressed by offset.
            start = int(buffer.Offset())
            raw = self.model_bytes[start : start + int(buffer.Size())]
        else:
            return None
        dtype = _CONSTANT_DTYPES.get(int(tensor.Type()))
        if dtype is None:
            raise ValueError(f"constant {self.names[index]!r} has unsupported type {tensor.Type()}")
        # Flatbuffer payloads are little-endian whatever the host is.
        little_endian = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(raw, dtype=little_endian).reshape(self.shape(index))

    def require_constant(self, index: int, role: str) -> _Array:
        array = self.constant(index)
        if array is None:
            raise ValueError(f"{role} {self.names[index]!r} must be a constant tensor")
        return array

    def initializer(self, name: str, array: _Array) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def int64s(self, name: str, values: Sequence[int]) -> str:
        return self.initializer(name, np.asarray(values, dtype=np.int64))

    # -- emission --------------------------------------------------------------------------

    def emit(
        self,
        prefix: str,
        op_type: str,
        inputs: Sequence[str],
        output: str,
        activation: int = tflite.ActivationFunctionType.NONE,
        **attributes: Any,
    ) -> None:
        """Append a node and, when TFLite fused an activation into the op, that activation."""
        if activation == tflite.ActivationFunctionType.NONE:
            self.nodes.append(helper.make_node(op_type, inputs, [output], prefix, **attributes))
            return
        raw = f"{prefix}/pre_activation"
        self.nodes.append(helper.make_node(op_type, inputs, [raw], prefix, **attributes))
        name = f"{prefix}/activation"
        if activation == tflite.ActivationFunctionType.RELU:
            self.nodes.append(helper.make_node("Relu", [raw], [output], name))
        elif activation == tflite.ActivationFunctionType.TANH:
            self.nodes.append(helper.make_node("Tanh", [raw], [output], name))
        elif activation in (
            tflite.ActivationFunctionType.RELU6,
            tflite.ActivationFunctionType.RELU_N1_TO_1,
        ):
            low, high = (
                (0.0, 6.0) if activation == tflite.ActivationFunctionType.RELU6 else (-1.0, 1.0)
            )
            bounds = [
                self.initializer(f"{prefix}/clip_min", np.array(low, dtype=np.float32)),
                self.initializer(f"{prefix}/clip_max", np.array(high, dtype=np.float32)),
            ]
            self.nodes.append(helper.make_node("Clip", [raw, *bounds], [output], name))
        else:
            raise ValueError(f"{prefix}: unsupported fused activation {activation}")

    # -- conversion ------------------------------------------------------------------------

    def convert(self) -> onnx.ModelProto:
        graph_inputs = []
        for index in self.inputs:
            shape = self.shape(index)
            self._check_batch(index, shape)
            if int(self.graph.Tensors(index).Type()) != tflite.TensorType.FLOAT32:
                raise ValueError(f"input {self.names[index]!r} is not float32")
            graph_inputs.append(
                helper.make_tensor_value_info(
                    self.names[index], TensorProto.FLOAT, [BATCH_DIM, *shape[1:]]
                )
            )
            if len(shape) == 4:
                self.nodes.append(
                    helper.make_node(
                        "Transpose",
                        [self.names[index]],
                        [self.value(index)],
                        f"input_{index}/to_nchw",
                        perm=list(_NHWC_TO_NCHW),
                    )
                )

        for position in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(position)
            name = _op_name(self.model, op)
            _HANDLERS[name](self, f"op{position:03d}_{name.lower()}", op)

        graph_outputs = []
        for index in self.outputs:
            shape = self.shape(index)
            self._check_batch(index, shape)
            if len(shape) == 4:
                self.nodes.append(
                    helper.make_node(
                        "Transpose",
                        [self.value(index)],
                        [self.names[index]],
                        f"output_{index}/to_nhwc",
                        perm=list(_NCHW_TO_NHWC),
                    )
                )
            graph_outputs.append(
                helper.make_tensor_value_info(
                    self.names[index], TensorProto.FLOAT, [BATCH_DIM, *shape[1:]]
                )
            )

        graph = helper.make_graph(
            self.nodes, "tflite_main", graph_inputs, graph_outputs, self.initializers
        )
        model = helper.make_model(
            graph,
            producer_name=PRODUCER_NAME,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model)
        return model

    def _check_batch(self, index: int, shape: Sequence[int]) -> None:
        if not shape or shape[0] != 1:
            raise ValueError(
                f"tensor {self.names[index]!r} has shape {list(shape)}; "
                "expected a leading batch dimension of 1"
            )

    def io(self, op: Any) -> tuple[list[int], list[int]]:
        inputs = [int(i) for i in op.InputsAsNumpy()]
        outputs = [int(i) for i in op.OutputsAsNumpy()]
        return inputs, outputs

    # -- operators -------------------------------------------------------------------------

    def conv_2d(self, prefix: str, op: Any) -> None:
        (x, w, *rest), (y,) = self.io(op)
        opts = _options(op, tflite.Conv2DOptions, prefix)
        # TFLite filter OHWI -> ONNX OIHW
        weight = self.require_constant(w, "filter").astype(np.float32).transpose(0, 3, 1, 2)
        self._conv(prefix, op, x, y, weight, rest, opts, group=1)

    def depthwise_conv_2d(self, prefix: str, op: Any) -> None:
        (x, w, *rest), (y,) = self.io(op)
        opts = _options(op, tflite.DepthwiseConv2DOptions, prefix)
        channels = self.shape(x)[3]
        # TFLite filter 1HW(C*M) -> ONNX (C*M)1HW; output channel c*M+m falls in group c,
        # as ONNX grouped convolution expects.
        weight = self.require_constant(w, "filter").astype(np.float32).transpose(3, 0, 1, 2)
        if weight.shape[0] % channels:
            raise ValueError(f"{prefix}: {weight.shape[0]} filters for {channels} channels")
        self._conv(prefix, op, x, y, weight, rest, opts, group=channels)

    def _conv(
        self,
        prefix: str,
        op: Any,
        x: int,
        y: int,
        weight: _Float32Array,
        rest: list[int],
        opts: Any,
        group: int,
    ) -> None:
        strides = [int(opts.StrideH()), int(opts.StrideW())]
        dilations = [int(opts.DilationHFactor()), int(opts.DilationWFactor())]
        kernel = [int(weight.shape[2]), int(weight.shape[3])]
        pads = self._pads(opts, x, kernel, strides, dilations)
        inputs = [self.value(x), self.initializer(f"{prefix}/weight", weight)]
        if rest and rest[0] >= 0:
            bias = self.require_constant(rest[0], "bias").astype(np.float32)
            inputs.append(self.initializer(f"{prefix}/bias", bias))
        self.emit(
            prefix,
            "Conv",
            inputs,
            self.value(y),
            int(opts.FusedActivationFunction()),
            kernel_shape=kernel,
            strides=strides,
            dilations=dilations,
            pads=pads,
            group=group,
        )

    def _pads(
        self,
        opts: Any,
        x: int,
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
    ) -> list[int]:
        if int(opts.Padding()) == tflite.Padding.SAME:
            return _same_pads(self.shape(x)[1:3], kernel, strides, dilations)
        return [0, 0, 0, 0]

    def max_pool_2d(self, prefix: str, op: Any) -> None:
        (x,), (y,) = self.io(op)
        opts = _options(op, tflite.Pool2DOptions, prefix)
        kernel = [int(opts.FilterHeight()), int(opts.FilterWidth())]
        strides = [int(opts.StrideH()), int(opts.StrideW())]
        # ONNX MaxPool, like TFLite, ignores padded cells, so explicit pads are exact.
        self.emit(
            prefix,
            "MaxPool",
            [self.value(x)],
            self.value(y),
            int(opts.FusedActivationFunction()),
            kernel_shape=kernel,
            strides=strides,
            pads=self._pads(opts, x, kernel, strides, [1, 1]),
        )

    def add(self, prefix: str, op: Any) -> None:
        (a, b), (y,) = self.io(op)
        opts = _options(op, tflite.AddOptions, prefix)
        rank = len(self.shape(y))
        operands = [self._operand(prefix, i, index, rank) for i, index in enumerate((a, b))]
        self.emit(
            prefix,
            "Add",
            operands,
            self.value(y),
            int(opts.FusedActivationFunction()),
        )

    def _operand(self, prefix: str, position: int, index: int, rank: int) -> str:
        array = self.constant(index)
        if array is None:
            return self.value(index)
        if rank == 4:
            # Broadcast in TFLite's NHWC sense first, then move channels like the activations.
            array = array.reshape((1,) * (4 - array.ndim) + array.shape).transpose(_NHWC_TO_NCHW)
        return self.initializer(f"{prefix}/operand{position}", array)

    def relu(self, prefix: str, op: Any) -> None:
        (x,), (y,) = self.io(op)
        self.emit(prefix, "Relu", [self.value(x)], self.value(y))

    def pad(self, prefix: str, op: Any) -> None:
        (x, p, *_), (y,) = self.io(op)
        paddings = self.require_constant(p, "paddings").astype(np.int64).reshape(-1, 2)
        if len(paddings) == 4:
            paddings = paddings[list(_NHWC_TO_NCHW)]
        pads = [*paddings[:, 0].tolist(), *paddings[:, 1].tolist()]
        self.emit(
            prefix,
            "Pad",
            [self.value(x), self.int64s(f"{prefix}/pads", pads)],
            self.value(y),
            mode="constant",
        )

    def reshape(self, prefix: str, op: Any) -> None:
        (x, *_), (y,) = self.io(op)
        in_shape, out_shape = self.shape(x), self.shape(y)
        if not in_shape or not out_shape or in_shape[0] != 1 or out_shape[0] != 1:
            raise ValueError(
                f"{prefix}: reshape {in_shape} -> {out_shape} does not keep the batch "
                "dimension first, so the converted model could not run batches"
            )
        source = self.value(x)
        if len(in_shape) == 4:
            # Reshape is defined on TFLite's NHWC element order.
            source = f"{prefix}/nhwc"
            self.nodes.append(
                helper.make_node(
                    "Transpose",
                    [self.value(x)],
                    [source],
                    f"{prefix}/to_nhwc",
                    perm=list(_NCHW_TO_NHWC),
                )
            )
        target = self.value(y) if len(out_shape) != 4 else f"{prefix}/nhwc_out"
        # The file hard-codes batch 1; 0 copies the runtime batch size instead.
        shape = self.int64s(f"{prefix}/shape", [0, *out_shape[1:]])
        self.nodes.append(helper.make_node("Reshape", [source, shape], [target], prefix))
        if len(out_shape) == 4:
            self.nodes.append(
                helper.make_node(
                    "Transpose",
                    [target],
                    [self.value(y)],
                    f"{prefix}/to_nchw",
                    perm=list(_NHWC_TO_NCHW),
                )
            )

    def concatenation(self, prefix: str, op: Any) -> None:
        inputs, (y,) = self.io(op)
        opts = _options(op, tflite.ConcatenationOptions, prefix)
        rank = len(self.shape(y))
        axis = _nchw_axis(int(opts.Axis()), rank)
        operands = [self._operand(prefix, i, index, rank) for i, index in enumerate(inputs)]
        self.emit(
            prefix,
            "Concat",
            operands,
            self.value(y),
            int(opts.FusedActivationFunction()),
            axis=axis,
        )

    def resize_bilinear(self, prefix: str, op: Any) -> None:
        (x, *_), (y,) = self.io(op)
        opts = _options(op, tflite.ResizeBilinearOptions, prefix)
        if opts.AlignCorners():
            mode = "align_corners"
        elif opts.HalfPixelCenters():
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        # Sizes rather than scales: a float scale can floor to one pixel short. The batch
        # and channel sizes are read at run time so that the batch stays symbolic.
        out_hw = self.shape(y)[1:3]
        shape = f"{prefix}/input_shape"
        leading = f"{prefix}/batch_channels"
        sizes = f"{prefix}/sizes"
        self.nodes.append(helper.make_node("Shape", [self.value(x)], [shape], f"{prefix}/shape"))
        self.nodes.append(
            helper.make_node(
                "Slice",
                [shape, self.int64s(f"{prefix}/starts", [0]), self.int64s(f"{prefix}/ends", [2])],
                [leading],
                f"{prefix}/slice",
            )
        )
        self.nodes.append(
            helper.make_node(
                "Concat",
                [leading, self.int64s(f"{prefix}/out_hw", out_hw)],
                [sizes],
                f"{prefix}/concat",
                axis=0,
            )
        )
        self.emit(
            prefix,
            "Resize",
            [self.value(x), "", "", sizes],
            self.value(y),
            mode="linear",
            coordinate_transformation_mode=mode,
        )

    def dequantize(self, prefix: str, op: Any) -> None:
        (x,), (y,) = self.io(op)
        tensor = self.graph.Tensors(x)
        array = self.constant(x)
        if array is None or int(tensor.Type()) != tflite.TensorType.FLOAT16:
            # Quantized (int8/uint8) graphs would need scales and zero points; BlazeFace only
            # stores float16 weights, which are widened once here.
            raise ValueError(f"{prefix}: only DEQUANTIZE of constant float16 weights is supported")
        self.folded[y] = array.astype(np.float32)


def _options(op: Any, cls: Callable[[], Any], prefix: str) -> Any:
    table = op.BuiltinOptions()
    if table is None:
        raise ValueError(f"{prefix}: operator has no options table")
    options = cls()
    options.Init(table.Bytes, table.Pos)
    return options


_HANDLERS: dict[str, Callable[[_Converter, str, Any], None]] = {
    "ADD": _Converter.add,
    "CONCATENATION": _Converter.concatenation,
    "CONV_2D": _Converter.conv_2d,
    "DEPTHWISE_CONV_2D": _Converter.depthwise_conv_2d,
    "DEQUANTIZE": _Converter.dequantize,
    "MAX_POOL_2D": _Converter.max_pool_2d,
    "PAD": _Converter.pad,
    "RELU": _Converter.relu,
    "RESHAPE": _Converter.reshape,
    "RESIZE_BILINEAR": _Converter.resize_bilinear,
}
