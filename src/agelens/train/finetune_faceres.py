"""`agelens finetune --backbone faceres-deep`: HSE's FaceRes MobileNet (the stronger of the two
224-px networks of `accurate`) trained end to end at a smaller input, as a one-network student.

Why: faceres-deep is the best single age network agelens has, and its convolutions are
size-agnostic (a global mean pool ends the body), but at 224 px it costs about 12 ms a face on
one core. At 112 px it costs a quarter of that (2.8 ms, about face-api's cost at 112 px), and
run unchanged there it loses most of its accuracy (UTKFace `dev`: MAE 5.58 at 224 px, 8.23 at
112 px), which fine-tuning at the new size wins back. The recipe is face-api's
(`agelens.train.finetune_faceapi`: same chips, augmentation, losses, distillation, schedule);
what differs is the network:

- the converted ONNX graph (onnx2torch) with its softmax and sigmoid left off, every
  convolution and dense layer trainable, and the per-channel batch-norm scales and shifts that
  the TF.js graph keeps beside its depthwise convolutions made trainable too;
- a 101-way age output (ages 0..100): a fixed low logit for age 0 followed by faceres-deep's own
  100 class logits (class i is i + 1 years), plus a linear term on the 1024-d pooled feature
  that starts at zero, so training starts from the original network's estimate;
- the gender logit is the network's own (before its sigmoid);
- faceres-deep's square crop (the detector's box x 1.25) and input (BGR minus the Caffe means,
  NHWC), so the exported graph is the original one with trained weights and a new head.

The export writes the trained weights into the converted graph (as `write_faceapi_onnx` does
for face-api) instead of `torch.onnx.export`, which would keep onnx2torch's separate Pads in
front of the stride-2 convolutions and lose the graph's fused `Clip` activations.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agelens.train.finetune import (
    AGE_CLASSES,
    StudentWeights,
    _onnx2torch_convert,
    save_student_graph,
)

#: Registry name of the network this module trains.
FACERES_BACKBONE = "faceres-deep"
#: Input sizes measured to run (multiples of 16; the 224-px graph's stride-2 paddings are
#: kept). Cost on one core, batch 16: 96 px 2.1 ms, 112 px 2.8 ms, 128 px 3.8 ms a face.
FACERES_SIZES = (96, 112, 128, 160)
#: The graph reads pixels minus means (about -128..128), so its first convolution's weights are
#: about 0.0015: an Adam step of the body's learning rate would change them by a fifth. The
#: trainable network reads the input divided by this, with those weights multiplied by it.
INPUT_SCALE = 128.0
#: Peak learning rate of the body (face-api and Cydral: 3e-4). 150 Adam steps of 64 chips at a
#: constant rate on 1,200 UTKFace `dev` faces, MAE on 289 others (7.96 before): 3e-4 -> 10.8
#: (the pretrained network is thrown off and does not recover), 1e-4 -> 5.27, 3e-5 -> 5.67.
FACERES_LR_BODY = 1e-4
#: Logit of the added age-0 class at the start (faceres-deep's classes start at 1 year).
ZERO_CLASS_LOGIT = -10.0
#: The graph's tensors the trainable network reads: age logits, gender logit, pooled feature.
_AGE_LOGITS = "age_pred/BiasAdd"
_GENDER_LOGIT = "gender_pred/BiasAdd"
_POOLED = "global_pooling/Mean"
#: The graph's own output nodes, which the trained head replaces.
_OWN_OUTPUTS = ("Sigmoid", "Softmax", "Identity")


def check_faceres_size(size: int) -> int:
    """`size`, or ValueError when faceres-deep has not been measured at it."""
    if size not in FACERES_SIZES:
        raise ValueError(
            f"--size for {FACERES_BACKBONE} must be one of "
            f"{', '.join(map(str, FACERES_SIZES))}, got {size}"
        )
    return size


def sized_graph(path: Path, size: int) -> Any:
    """The converted faceres graph at `size` x `size` px (every shape known)."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value != dims[2].dim_value or dims[3].dim_value != 3:
        raise ValueError(f"{path} is not a FaceRes graph (expected a square NHWC input)")
    dims[1].dim_value, dims[2].dim_value = size, size
    del model.graph.value_info[:]
    return model


def _body_graph(path: Path, size: int) -> Any:
    """The graph without its softmax, sigmoid and Identity outputs, ending on the age logits,
    the gender logit and the pooled feature."""
    from onnx import TensorProto, helper

    model = sized_graph(path, size)
    graph = model.graph
    produced = {output for node in graph.node for output in node.output}
    missing = {_AGE_LOGITS, _GENDER_LOGIT, _POOLED} - produced
    if missing:
        raise ValueError(f"{path} is not a FaceRes graph (no {sorted(missing)})")
    kept = [node for node in graph.node if node.op_type not in _OWN_OUTPUTS]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(_AGE_LOGITS, TensorProto.FLOAT, ["N", 100]),
            helper.make_tensor_value_info(_GENDER_LOGIT, TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info(_POOLED, TensorProto.FLOAT, ["N", 1024]),
        ]
    )
    return model


def faceres_network(path: Path, size: int) -> Any:
    """The trainable network (a torch module): NCHW RGB chips minus the Caffe means (in RGB
    order) -> (age logits `(N, 101)`, male logit `(N,)`).

    `network.affine_names` maps each trainable batch-norm constant (a parameter of
    `body.initializers`) to the graph initializer it came from, for the export."""
    import torch
    from onnx import numpy_helper

    model = _body_graph(path, size)
    input_conv = _input_conv(model)
    weights = {t.name: t for t in model.graph.initializer}
    kernel = weights[input_conv.input[1]]
    kernel.CopyFrom(
        numpy_helper.from_array(
            numpy_helper.to_array(kernel) * np.float32(INPUT_SCALE), kernel.name
        )
    )
    constants = {
        t.name: np.array(numpy_helper.to_array(t))
        for t in model.graph.initializer
        if len(t.dims) == 4 and t.dims[0] == 1 and t.dims[2] == 1 and t.dims[3] == 1
    }
    trainable_body, affine_names = _make_affines_trainable(_onnx2torch_convert()(model), constants)

    class FaceResNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = trainable_body
            self.affine_names: dict[str, str] = affine_names
            self.input_conv: str = input_conv.name
            self.age = torch.nn.Linear(1024, AGE_CLASSES)
            with torch.no_grad():
                self.age.weight.zero_()
                self.age.bias.zero_()

        def head_parameters(self) -> list[Any]:
            return list(self.age.parameters())

        def forward(self, images: Any) -> tuple[Any, Any]:
            # faceres-deep reads BGR, channels last
            x = images.flip(1).permute(0, 2, 3, 1) / INPUT_SCALE
            age_logits, gender_logit, pooled = self.body(x)
            zero = torch.full_like(age_logits[:, :1], ZERO_CLASS_LOGIT)
            return torch.cat([zero, age_logits], 1) + self.age(pooled), gender_logit[:, 0]

    return FaceResNetwork()


def _input_conv(model: Any) -> Any:
    """The convolution that reads the graph's input (through its NHWC -> NCHW Transpose)."""
    source = model.graph.input[0].name
    transposed = {
        n.output[0] for n in model.graph.node if n.op_type == "Transpose" and n.input[0] == source
    }
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[0] in transposed:
            return node
    raise ValueError("no convolution reads the FaceRes graph's input")


def _make_affines_trainable(
    body: Any, constants: Mapping[str, NDArray[np.float32]]
) -> tuple[Any, dict[str, str]]:
    """onnx2torch keeps initializers that are not a layer's weights (here the batch-norm scale
    and shift of each depthwise convolution, and the shift of every other one) as buffers of
    `body.initializers`; each `(1, C, 1, 1)` one becomes a parameter, matched to its graph
    initializer by value (each is unique)."""
    import torch

    holder = body.initializers
    names: dict[str, str] = {}
    unmatched = dict(constants)
    for buffer_name, value in list(holder.named_buffers(recurse=False)):
        if value.dim() != 4 or value.shape[0] != 1 or value.shape[2:] != (1, 1):
            continue
        array = value.detach().cpu().numpy()
        matches = [
            name
            for name, original in unmatched.items()
            if original.shape == array.shape and np.array_equal(original, array)
        ]
        if len(matches) != 1:
            raise ValueError(
                f"cannot tell which graph constant {buffer_name} is ({len(matches)} match)"
            )
        names[buffer_name] = matches[0]
        del unmatched[matches[0]]
        delattr(holder, buffer_name)
        holder.register_parameter(buffer_name, torch.nn.Parameter(value.detach().clone()))
    if unmatched:
        raise ValueError(f"graph constants without a trainable copy: {sorted(unmatched)[:3]}")
    return body, names


def write_faceres_onnx(
    base: Path,
    state: Mapping[str, NDArray[Any]],
    affine_names: Mapping[str, str],
    path: Path,
    size: int,
    input_conv: str,
) -> None:
    """Write a trained FaceResNetwork (its `state_dict` as arrays) as ONNX: faceres-deep's
    converted graph at `size` px with the trained weights, `input_1 (N, S, S, 3)` BGR minus
    the Caffe means -> `age_probabilities (N, 101)`, `gender_probability (N,)`."""
    from onnx import helper, numpy_helper

    model = _body_graph(base, size)
    graph = model.graph
    weights = StudentWeights(graph, state)
    # the trainable network reads the pixels divided by INPUT_SCALE; the graph reads them whole
    weights.copy_convolutions(divide={input_conv: INPUT_SCALE})
    weights.copy_dense_layers()
    for parameter, name in affine_names.items():
        key = f"body.initializers.{parameter}"
        weights.replace(name, weights.trained(key), key)
    trained = weights.trained

    def constant(name: str, array: Any, dtype: Any = np.float32) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def add(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        graph.node.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    pads = constant("head/pads", [0, 1, 0, 0], np.int64)
    zero = constant("head/zero_class", ZERO_CLASS_LOGIT)
    padded = add("Pad", [_AGE_LOGITS, pads, zero], "head/age_padded", mode="constant")
    weight = constant("head/age/weight", trained("age.weight"))
    bias = constant("head/age/bias", trained("age.bias"))
    linear = add("Gemm", [_POOLED, weight, bias], "head/age_linear", transB=1)
    logits = add("Add", [padded, linear], "head/age_logits")
    add("Softmax", [logits], "age_probabilities", axis=1)
    flat = constant("head/flat", [-1], np.int64)
    gender = add("Reshape", [_GENDER_LOGIT, flat], "head/gender_flat")
    add("Sigmoid", [gender], "gender_probability")
    save_student_graph(model, path)


def faceres_input(chips: NDArray[np.uint8], mean_bgr: NDArray[np.float32]) -> NDArray[np.float32]:
    """The exported graph's input for RGB uint8 chips `(N, S, S, 3)`: BGR minus the means."""
    return np.ascontiguousarray(chips[..., ::-1].astype(np.float32) - mean_bgr)
