"""TF.js graph models (`model.json` + weight shards) translated to ONNX, node for node.

A TF.js graph model is a frozen TensorFlow GraphDef written as JSON (`modelTopology.node`: name,
op, inputs, attrs) whose constants live in binary shards described by `weightsManifest`. This
converter translates exactly the operators the graphs agelens ships use (HSE faceres and
faceres-deep, MobileNet v1 + heads); any other operator raises ValueError naming it, since a
silently approximated op would cost accuracy without an error.

Supported operators (see SUPPORTED_OPS): Placeholder, Const, Conv2D, DepthwiseConv2dNative,
Add, AddV2, Mul, Relu, Minimum, Maximum, Mean, _FusedMatMul (fused BiasAdd, optionally Relu),
Sigmoid, Softmax, Identity.

Keras writes ReLU6 as Relu -> Minimum(6) -> Maximum(0), three ONNX nodes that ONNX Runtime
neither fuses into the convolution before them nor runs in its blocked (NCHWc) layout: each
costs a reorder out of that layout and back. `relu6_as_clip` rewrites every such chain into one
`Clip(0, 6)`, which is the same function (min and max are exact, so outputs are bit-identical)
and which ONNX Runtime fuses into the convolution. On faceres and faceres-deep (27 chains each)
this made the network about 1.35x faster on one core (21.5 -> 15.9 ms a face, batch 8).

Layout. TF.js graphs are NHWC; ONNX convolutions are NCHW. The ONNX model keeps the TF.js
interface (its input is the NHWC placeholder, its outputs have TF shapes), transposes the input
to NCHW once, and keeps every 4-D activation in NCHW: kernels are converted at conversion time
(HWIO -> OIHW; depthwise [h, w, c, m] -> [c*m, 1, h, w]), constants combined with NCHW tensors
are broadcast to rank 4 and transposed, reduction and softmax axes are remapped, and an output
still in NCHW is transposed back. Each ONNX tensor carries the permutation relating its axes to
the TF axes, so the bookkeeping is explicit rather than inferred from shapes.

'SAME' padding is written as explicit pads (TF puts an odd extra row/column at the end), which
needs the spatial size: it is tracked from the placeholder's fixed height and width.

Determinism: nodes and initializers are emitted in the graph's node order with the graph's own
names, the opset and IR version are fixed, and serialisation is deterministic, so the same
model.json and shards always give the same bytes (the registry pins them by sha256).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

__all__ = ["SUPPORTED_OPS", "decode_weights", "graph_ops", "relu6_as_clip", "tfjs_graph_to_onnx"]


#: TF op -> the `_Translator.op_*` method translating it.
_HANDLERS: Mapping[str, str] = {
    "Placeholder": "placeholder",
    "Const": "const",
    "Identity": "identity",
    "Conv2D": "conv2d",
    "DepthwiseConv2dNative": "depthwise_conv2d",
    "Add": "add",
    "AddV2": "add",
    "Mul": "mul",
    "Minimum": "minimum",
    "Maximum": "maximum",
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Softmax": "softmax",
    "Mean": "mean",
    "_FusedMatMul": "fused_matmul",
}

SUPPORTED_OPS = frozenset(_HANDLERS)

_OPSET = 13
_IR_VERSION = 7
_PRODUCER = "agelens"
_CONVERTER_VERSION = "2"  # 2: ReLU6 chains emitted as Clip

#: ONNX axis i of an NCHW tensor holds TF (NHWC) axis _NCHW[i].
_NCHW = (0, 3, 1, 2)
_BATCH = "N"

_DTYPES: Mapping[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
}

_QUANTIZED: Mapping[str, np.dtype[Any]] = {
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}

# --------------------------------------------------------------------------------------------
# model.json and weights
# --------------------------------------------------------------------------------------------


def _load_model_json(model_json: bytes) -> dict[str, Any]:
    try:
        model = json.loads(model_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"TF.js model.json is not valid JSON: {error}") from error
    if not isinstance(model, dict) or model.get("format") not in (None, "graph-model"):
        raise ValueError("not a TF.js graph model (format must be 'graph-model')")
    topology = model.get("modelTopology")
    if not isinstance(topology, dict) or not isinstance(topology.get("node"), list):
        raise ValueError("TF.js model.json has no modelTopology.node list")
    if not isinstance(model.get("weightsManifest"), list):
        raise ValueError("TF.js model.json has no weightsManifest list")
    return model


def graph_ops(model_json: bytes) -> dict[str, int]:
    """How many nodes of each operator the graph holds, sorted by operator name."""
    nodes = _load_model_json(model_json)["modelTopology"]["node"]
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node["op"]] = counts.get(node["op"], 0) + 1
    return dict(sorted(counts.items()))


def decode_weights(
    manifest: Sequence[Mapping[str, Any]], shards: Mapping[str, bytes]
) -> dict[str, NDArray[Any]]:
    """Every weight of a TF.js weights manifest, decoded as tfjs-core's `io.decodeWeights` does.

    Each group's shards (`paths`) are concatenated in order; weights follow each other in it.
    Supported encodings: plain float32/int32, and float32 quantized to uint8, uint16 or float16.
    """
    weights: dict[str, NDArray[Any]] = {}
    for group in manifest:
        paths = group.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError("TF.js weightsManifest: a group has no 'paths' list")
        missing = [p for p in paths if p not in shards]
        if missing:
            raise ValueError(f"TF.js weights: shard(s) {missing} not provided")
        data = b"".join(shards[p] for p in paths)
        offset = 0
        for entry in group.get("weights", []):
            name, array, offset = decode_entry(entry, data, offset)
            if name in weights:
                raise ValueError(f"TF.js weightsManifest names {name!r} twice")
            weights[name] = array
        if offset != len(data):
            raise ValueError(
                f"TF.js weights: the manifest describes {offset} bytes but the shards {paths} "
                f"hold {len(data)}"
            )
    return weights


def decode_entry(entry: Any, data: bytes, offset: int) -> tuple[str, NDArray[Any], int]:
    """Decode one manifest entry at `offset` of `data`; (its name, values, the next offset)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError("TF.js weightsManifest: an entry has no 'name'")
    name: str = entry["name"]
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"TF.js weight {name!r}: 'shape' is not a list of sizes")
    dtype = str(entry.get("dtype"))
    if dtype not in _DTYPES:
        raise ValueError(f"TF.js weight {name!r}: unsupported dtype {dtype!r}")
    count = int(np.prod(shape, dtype=np.int64))
    quantization = entry.get("quantization")
    if quantization is None:
        stored = _DTYPES[dtype]
    elif isinstance(quantization, dict) and dtype == "float32":
        quantized = _QUANTIZED.get(str(quantization.get("dtype")))
        if quantized is None:
            raise ValueError(f"TF.js weight {name!r}: unsupported quantization {quantization!r}")
        stored = quantized
    else:
        raise ValueError(f"TF.js weight {name!r}: unsupported quantization {quantization!r}")
    end = offset + count * stored.itemsize
    if end > len(data):
        raise ValueError(f"TF.js weight {name!r} ends at byte {end}, past the end of its shards")
    raw = np.frombuffer(data, dtype=stored, count=count, offset=offset)
    if quantization is None or stored == np.dtype("<f2"):
        # float16 -> float32 is exact, as in tfjs' float16 decoder.
        values = raw.astype(_DTYPES[dtype].newbyteorder("="))
    else:
        scale, minimum = quantization.get("scale"), quantization.get("min")
        if not isinstance(scale, int | float) or not isinstance(minimum, int | float):
            raise ValueError(f"TF.js weight {name!r}: quantization lacks numeric scale/min")
        # tfjs computes v * scale + min in doubles and rounds once to float32.
        values = (raw.astype(np.float64) * scale + minimum).astype(np.float32)
    return name, values.reshape(shape), end


# --------------------------------------------------------------------------------------------
# Node attributes
# --------------------------------------------------------------------------------------------


def _attr_string(node: Mapping[str, Any], key: str, default: str | None = None) -> str:
    attr = node.get("attr", {}).get(key)
    if attr is None or "s" not in attr:
        if default is None:
            raise ValueError(f"node {node['name']!r} ({node['op']}) lacks attribute {key!r}")
        return default
    return base64.b64decode(attr["s"]).decode()


def _attr_ints(node: Mapping[str, Any], key: str, default: Sequence[int]) -> list[int]:
    attr = node.get("attr", {}).get(key)
    if attr is None:
        return list(default)
    return [int(v) for v in attr.get("list", {}).get("i", default)]


def _attr_bool(node: Mapping[str, Any], key: str) -> bool:
    return bool(node.get("attr", {}).get(key, {}).get("b", False))


def _attr_strings(node: Mapping[str, Any], key: str) -> list[str]:
    attr = node.get("attr", {}).get(key, {})
    return [base64.b64decode(s).decode() for s in attr.get("list", {}).get("s", [])]


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """TensorFlow 'SAME' padding along one axis: (begin, end, output size)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2, out


# --------------------------------------------------------------------------------------------
# Graph translation
# --------------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    """An ONNX value standing for a TF tensor.

    `perm[i]` is the TF axis held by ONNX axis i; `shape` is the TF shape (None = unknown, -1 for
    the batch). `const` holds the value of a constant (not yet emitted as an initializer).
    """

    name: str
    perm: tuple[int, ...]
    shape: tuple[int, ...] | None
    const: NDArray[Any] | None = None


@dataclass
class _Translator:
    weights: Mapping[str, NDArray[Any]]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    values: dict[str, _Tensor] = field(default_factory=dict)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def initializer(self, name: str, array: NDArray[Any]) -> str:
        base, index = name, 1
        while name in self._names:
            name, index = f"{base}_{index}", index + 1
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def emit(self, op: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self._names.add(output)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output

    def rename(self, old: str, new: str) -> str:
        """Rename an emitted value everywhere (frees `old` for a graph output)."""
        for node in self.nodes:
            node.input[:] = [new if i == old else i for i in node.input]
            node.output[:] = [new if o == old else o for o in node.output]
            if node.name == old:
                node.name = new
        self._names.add(new)
        return new

    def value(self, reference: str) -> _Tensor:
        name = reference.split(":")[0].lstrip("^")
        if reference.split(":")[1:] not in ([], ["0"]):
            raise ValueError(f"input {reference!r}: only first outputs of nodes are supported")
        if name not in self.values:
            raise ValueError(f"input {name!r} is used before it is defined (or does not exist)")
        return self.values[name]

    def materialise(self, tensor: _Tensor, perm: tuple[int, ...] | None = None) -> str:
        """The ONNX name of a tensor; a constant becomes an initializer, laid out per `perm`."""
        if tensor.const is None:
            return tensor.name
        array = tensor.const
        if perm is not None and perm != tuple(range(len(perm))):
            array = array.reshape((1,) * (len(perm) - array.ndim) + array.shape).transpose(perm)
        return self.initializer(tensor.name, array)

    # Operators -------------------------------------------------------------------------------

    def translate(self, node: Mapping[str, Any]) -> None:
        op, name = node["op"], node["name"]
        inputs = [i for i in node.get("input", []) if not i.startswith("^")]
        method = _HANDLERS.get(op)
        handler = getattr(self, f"op_{method}", None) if method else None
        if handler is None:
            raise ValueError(f"unsupported TF.js operator {op!r} (node {name!r})")
        self.values[name] = handler(node, name, inputs)

    def op_placeholder(self, node: Mapping[str, Any], name: str, _: list[str]) -> _Tensor:
        dims = node.get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
        shape = tuple(int(d.get("size", -1)) for d in dims)
        if len(shape) != 4 or any(d <= 0 for d in shape[1:]):
            raise ValueError(f"placeholder {name!r}: need a fixed NHWC shape, got {list(shape)}")
        self.inputs.append(
            helper.make_tensor_value_info(
                name, TensorProto.FLOAT, [_BATCH if shape[0] <= 0 else shape[0], *shape[1:]]
            )
        )
        self._names.add(name)
        nchw = self.emit("Transpose", [name], f"{name}/nchw", perm=list(_NCHW))
        return _Tensor(nchw, _NCHW, shape)

    def op_const(self, node: Mapping[str, Any], name: str, _: list[str]) -> _Tensor:
        if name not in self.weights:
            raise ValueError(f"constant {name!r} has no values in the weights manifest")
        array = self.weights[name]
        return _Tensor(name, tuple(range(array.ndim)), tuple(array.shape), const=array)

    def op_identity(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self.value(inputs[0])

    def _conv(
        self, node: Mapping[str, Any], name: str, inputs: list[str], depthwise: bool
    ) -> _Tensor:
        x, kernel = self.value(inputs[0]), self.value(inputs[1])
        if _attr_string(node, "data_format", "NHWC") != "NHWC":
            raise ValueError(f"{name}: only NHWC convolutions are supported")
        if x.perm != _NCHW or x.shape is None or kernel.const is None:
            raise ValueError(f"{name}: needs a 4-D activation and a constant kernel")
        strides = _attr_ints(node, "strides", [1, 1, 1, 1])
        dilations = _attr_ints(node, "dilations", [1, 1, 1, 1])
        padding = _attr_string(node, "padding")
        k = kernel.const
        kh, kw, c_in, c_out = k.shape
        if depthwise:
            weight = k.transpose(2, 3, 0, 1).reshape(c_in * c_out, 1, kh, kw)
            out_channels, group = c_in * c_out, c_in
        else:
            weight, out_channels, group = k.transpose(3, 2, 0, 1), c_out, 1
        if x.shape[3] != c_in:
            raise ValueError(f"{name}: kernel expects {c_in} channels, input has {x.shape[3]}")
        if padding == "SAME":
            top, bottom, out_h = _same_pads(x.shape[1], kh, strides[1], dilations[1])
            left, right, out_w = _same_pads(x.shape[2], kw, strides[2], dilations[2])
        elif padding == "VALID":
            top = bottom = left = right = 0
            out_h = (x.shape[1] - (kh - 1) * dilations[1] - 1) // strides[1] + 1
            out_w = (x.shape[2] - (kw - 1) * dilations[2] - 1) // strides[2] + 1
        else:
            raise ValueError(f"{name}: unsupported padding {padding!r}")
        w = self.initializer(kernel.name, weight.astype(np.float32))
        y = self.emit(
            "Conv",
            [x.name, w],
            name,
            kernel_shape=[kh, kw],
            strides=strides[1:3],
            dilations=dilations[1:3],
            pads=[top, left, bottom, right],
            group=group,
        )
        return _Tensor(y, _NCHW, (x.shape[0], out_h, out_w, out_channels))

    def op_conv2d(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self._conv(node, name, inputs, depthwise=False)

    def op_depthwise_conv2d(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self._conv(node, name, inputs, depthwise=True)

    def _binary(self, onnx_op: str, name: str, inputs: list[str]) -> _Tensor:
        a, b = self.value(inputs[0]), self.value(inputs[1])
        if a.const is not None and b.const is not None:
            raise ValueError(f"{name}: both operands constant (fold it before converting)")
        live, other = (a, b) if a.const is None else (b, a)
        if other.const is None and other.perm != live.perm:
            raise ValueError(f"{name}: operands in different layouts")
        if other.const is not None and other.const.ndim > len(live.perm):
            raise ValueError(f"{name}: constant of higher rank than the tensor")
        operand = self.materialise(other, live.perm)
        ordered = [live.name, operand] if a is live else [operand, live.name]
        shape = live.shape
        if other.const is None and other.shape is not None and shape is not None:
            shape = tuple(np.broadcast_shapes(shape, other.shape))
        return _Tensor(self.emit(onnx_op, ordered, name), live.perm, shape)

    def op_add(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self._binary("Add", name, inputs)

    def op_mul(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self._binary("Mul", name, inputs)

    def op_minimum(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self._binary("Min", name, inputs)

    def op_maximum(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self._binary("Max", name, inputs)

    def _unary(self, onnx_op: str, name: str, inputs: list[str], **attrs: Any) -> _Tensor:
        x = self.value(inputs[0])
        return _Tensor(self.emit(onnx_op, [self.materialise(x)], name, **attrs), x.perm, x.shape)

    def op_relu(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self._unary("Relu", name, inputs)

    def op_sigmoid(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        return self._unary("Sigmoid", name, inputs)

    def op_softmax(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        x = self.value(inputs[0])
        # tf.nn.softmax works on the last TF axis; find where that axis sits in ONNX.
        return self._unary("Softmax", name, inputs, axis=x.perm.index(len(x.perm) - 1))

    def op_mean(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        x, axes_tensor = self.value(inputs[0]), self.value(inputs[1])
        if axes_tensor.const is None:
            raise ValueError(f"{name}: reduction axes must be constant")
        rank = len(x.perm)
        tf_axes = sorted({int(a) % rank for a in np.atleast_1d(axes_tensor.const)})
        onnx_axes = sorted(x.perm.index(a) for a in tf_axes)
        keep = _attr_bool(node, "keep_dims")
        y = self.emit("ReduceMean", [x.name], name, axes=onnx_axes, keepdims=int(keep))
        shape = None
        if x.shape is not None:
            shape = tuple(
                1 if i in tf_axes else d for i, d in enumerate(x.shape) if keep or i not in tf_axes
            )
        if keep:
            return _Tensor(y, x.perm, shape)
        # Remaining ONNX axes, renumbered as TF axes of the reduced tensor.
        remaining = [a for a in x.perm if a not in tf_axes]
        renumber = {a: i for i, a in enumerate(sorted(remaining))}
        return _Tensor(y, tuple(renumber[a] for a in remaining), shape)

    def op_fused_matmul(self, node: Mapping[str, Any], name: str, inputs: list[str]) -> _Tensor:
        fused = _attr_strings(node, "fused_ops")
        if not fused or fused[0] != "BiasAdd" or fused[1:] not in ([], ["Relu"]):
            raise ValueError(f"{name}: unsupported _FusedMatMul fused_ops {fused}")
        x, w, bias = (self.value(i) for i in inputs[:3])
        if x.perm != (0, 1) or w.const is None or bias.const is None:
            raise ValueError(f"{name}: needs a 2-D activation and constant weights and bias")
        gemm = self.emit(
            "Gemm",
            [x.name, self.materialise(w), self.materialise(bias)],
            name if len(fused) == 1 else f"{name}/gemm",
            transA=int(_attr_bool(node, "transpose_a")),
            transB=int(_attr_bool(node, "transpose_b")),
        )
        if len(fused) == 2:
            gemm = self.emit("Relu", [gemm], name)
        cols = w.const.shape[0 if _attr_bool(node, "transpose_b") else 1]
        rows = x.shape[0] if x.shape is not None else -1
        return _Tensor(gemm, (0, 1), (rows, int(cols)))


def tfjs_graph_to_onnx(
    model_json: bytes,
    shards: Mapping[str, bytes],
    *,
    outputs: Mapping[str, str] | None = None,
    graph_name: str = "tfjs_graph",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Convert a TF.js graph model into a serialized ONNX model.

    `shards` maps each file named in the weights manifest (e.g. "faceres.bin") to its bytes.
    `outputs` maps TF node names to ONNX output names, in output order; by default the
    signature's outputs (else every node no other node reads) keep their TF names. The ONNX
    input is the TF.js placeholder, unchanged: float32 NHWC with the same name.

    Raises:
        ValueError: malformed model.json or weights, or an operator outside SUPPORTED_OPS
            (all such operators are named in the message).
    """
    model = _load_model_json(model_json)
    nodes: list[dict[str, Any]] = model["modelTopology"]["node"]
    unsupported = sorted({n["op"] for n in nodes} - SUPPORTED_OPS)
    if unsupported:
        raise ValueError(
            f"TF.js graph uses unsupported operator(s) {', '.join(unsupported)}; "
            f"supported: {', '.join(sorted(SUPPORTED_OPS))}"
        )
    weights = decode_weights(model["weightsManifest"], shards)

    translator = _Translator(weights)
    for node in _topological(nodes):
        translator.translate(node)

    if outputs is None:
        outputs = {name: name for name in _default_outputs(model, nodes)}
    graph_outputs: list[onnx.ValueInfoProto] = []
    for tf_name, onnx_name in outputs.items():
        tensor = translator.value(tf_name)
        source = translator.materialise(tensor)
        identity = tuple(range(len(tensor.perm)))
        if source == onnx_name and tensor.perm == identity:
            pass  # already an ONNX value of that name, in TF layout
        elif tensor.perm != identity:
            if source == onnx_name:
                source = translator.rename(source, f"{source}/onnx_layout")
            # Back to TF's axis order: ONNX axis j must hold TF axis j.
            back = [tensor.perm.index(a) for a in identity]
            translator.emit("Transpose", [source], onnx_name, perm=back)
        else:
            translator.emit("Identity", [source], onnx_name)
        dims: list[str | int] = (
            [_BATCH if d <= 0 else d for d in tensor.shape] if tensor.shape is not None else []
        )
        if dims:
            dims[0] = _BATCH
        graph_outputs.append(helper.make_tensor_value_info(onnx_name, TensorProto.FLOAT, dims))

    onnx_nodes, initializers = relu6_as_clip(
        translator.nodes, translator.initializers, keep={o.name for o in graph_outputs}
    )
    graph = helper.make_graph(
        onnx_nodes,
        graph_name,
        inputs=translator.inputs,
        outputs=graph_outputs,
        initializer=initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name=_PRODUCER,
        producer_version=_CONVERTER_VERSION,
        doc_string=f"{graph_name} converted from a TF.js graph model by agelens",
    )
    onnx_model.ir_version = _IR_VERSION
    if metadata:
        helper.set_model_props(onnx_model, dict(metadata))
    onnx.checker.check_model(onnx_model, full_check=True)
    return bytes(onnx_model.SerializeToString(deterministic=True))


def _scalar(initializers: Mapping[str, onnx.TensorProto], name: str) -> float | None:
    tensor = initializers.get(name)
    if tensor is None:
        return None
    array = numpy_helper.to_array(tensor)
    return float(array.reshape(-1)[0]) if array.size == 1 else None


def relu6_as_clip(
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    *,
    keep: AbstractSet[str] = frozenset(),
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Every `Relu -> Min(hi) -> Max(lo)` chain (hi >= 0 >= lo, scalar constants, each value
    read only by the next node and none in `keep`) as one `Clip(0, hi)`; the constants no node
    reads any more are dropped. Everything else is returned unchanged, in order."""
    by_name = {tensor.name: tensor for tensor in initializers}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def only_reader(value: str, op: str) -> onnx.NodeProto | None:
        found = readers.get(value, [])
        if value in keep or len(found) != 1 or found[0].op_type != op:
            return None
        return found[0]

    chains: dict[str, tuple[float, str]] = {}  # Relu output -> (hi, Max output)
    dropped: set[str] = set()
    for node in nodes:
        if node.op_type != "Relu":
            continue
        minimum = only_reader(node.output[0], "Min")
        if minimum is None or len(minimum.input) != 2:
            continue
        hi = _scalar(by_name, next((i for i in minimum.input if i != node.output[0]), ""))
        maximum = only_reader(minimum.output[0], "Max")
        if hi is None or hi < 0 or maximum is None or len(maximum.input) != 2:
            continue
        lo = _scalar(by_name, next((i for i in maximum.input if i != minimum.output[0]), ""))
        if lo is None or lo > 0:
            continue
        chains[node.output[0]] = (hi, maximum.output[0])
        dropped.update((minimum.output[0], maximum.output[0]))
    if not chains:
        return list(nodes), list(initializers)

    out_nodes: list[onnx.NodeProto] = []
    extra: list[onnx.TensorProto] = []
    for node in nodes:
        if node.op_type in ("Min", "Max") and node.output[0] in dropped:
            continue
        if node.op_type == "Relu" and node.output[0] in chains:
            hi, output = chains[node.output[0]]
            low_name, high_name = f"{node.name}/clip_min", f"{node.name}/clip_max"
            extra += [
                numpy_helper.from_array(np.array(0.0, dtype=np.float32), low_name),
                numpy_helper.from_array(np.array(hi, dtype=np.float32), high_name),
            ]
            out_nodes.append(
                helper.make_node(
                    "Clip", [node.input[0], low_name, high_name], [output], name=output
                )
            )
            continue
        out_nodes.append(node)
    read = {name for node in out_nodes for name in node.input}
    kept = [tensor for tensor in initializers if tensor.name in read]
    return out_nodes, kept + extra


def _topological(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes ordered so every input comes first; ties keep the file's order (deterministic)."""
    by_name = {n["name"]: n for n in nodes}
    ordered: list[dict[str, Any]] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        stack = [(name, False)]
        while stack:
            current, done = stack.pop()
            if done:
                state[current] = 2
                ordered.append(by_name[current])
                continue
            if state.get(current) == 2:
                continue
            if state.get(current) == 1:
                raise ValueError(f"TF.js graph has a cycle through {current!r}")
            state[current] = 1
            stack.append((current, True))
            for reference in reversed(by_name[current].get("input", [])):
                dependency = reference.split(":")[0].lstrip("^")
                if dependency not in by_name:
                    raise ValueError(f"node {current!r} reads unknown node {dependency!r}")
                if state.get(dependency) != 2:
                    stack.append((dependency, False))

    for node in nodes:
        if state.get(node["name"]) != 2:
            visit(node["name"])
    return ordered


def _default_outputs(model: Mapping[str, Any], nodes: list[dict[str, Any]]) -> list[str]:
    signature = model.get("signature") or model["modelTopology"].get("signature") or {}
    named = signature.get("outputs") if isinstance(signature, dict) else None
    if named:
        return [key.split(":")[0] for key in named]
    used = {i.split(":")[0].lstrip("^") for n in nodes for i in n.get("input", [])}
    return [n["name"] for n in nodes if n["name"] not in used and n["op"] != "Const"]
