"""`agelens finetune --backbone faceapi`: face-api's TinyXception trained end to end at a
smaller input, for the `fastest` preset.

Why: at 112 px face-api's network is about half of the fast preset's time on a small photo.
Its convolutions are size-agnostic (TF 'same' padding gives the graph's pads for any input
that is a multiple of 16), and only the final 7x7 average pool is tied to 112 px; made a
global average, the pretrained network runs at 64-96 px, where it costs (64/112)^2 to
(96/112)^2 as much. Run that way unchanged it loses accuracy (UTKFace dev, 96 px: MAE 5.60
instead of 5.14; 64 px: 11.6), so it is fine-tuned at the new size:

- the converted ONNX graph (onnx2torch), pool made global, every weight trainable;
- a 101-way age output (ages 0..100, label-distribution loss + L1 on the expected age, as
  for Cydral): a Gaussian around face-api's own regressed age plus a linear term on the
  512-d pooled feature that starts at zero, so training starts from the original estimate;
- the gender output kept (its 2-way softmax folded into one logit) and trained with a
  smoothed binary cross-entropy;
- chips: face-api's own square crop of the detector's box at `size` px for validation and
  inference, and the same square 9/8 as wide at 9/8 the size for training, randomly cropped
  back to `size` (shifts of up to 1/16 of the face), with flips and colour jitter.

The model folder holds `age_gender.onnx` (`input (N, 3, S, S)` -> `age_probabilities
(N, 101)`, `gender_probability (N,)`), `card.json` (`"kind": "agelens-finetuned"`,
`"backbone": "faceapi"`, `"input_size": S`) and `MODEL_CARD.md`; see
agelens.models.finetuned.FinetunedFaceApiEstimator.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agelens.evaluate import LabelledImage, iter_scored_faces, read_labels
from agelens.models.fetch import sha256_file
from agelens.models.finetuned import (
    FACEAPI_FILE,
    FINETUNED_KIND,
    FinetunedFaceApiEstimator,
    FinetunedFaceResEstimator,
)
from agelens.train.finetune import (
    AGE_CLASSES,
    WISE_ALPHAS,
    WISE_TOLERANCE,
    ChipArrays,
    FinetuneConfig,
    FinetuneOutcome,
    FinetuneRequest,
    StudentWeights,
    Validation,
    _normalise,
    _onnx2torch_convert,
    augment,
    batch_chips,
    cached_chips,
    checkpoint_path,
    chip_cache_config,
    choose_wise,
    fit,
    gaussian_targets,
    install_model,
    interval_knots,
    run_fingerprint,
    save_student_graph,
    soft_age_loss,
    stack_chips,
    staging_folder,
    state_copy,
    training_record,
    validation_split,
)
from agelens.train.teacher import TeacherTargets, teacher_targets

logger = logging.getLogger(__name__)

#: Input sizes the network can run at: multiples of 16 (four stride-2 stages).
SIZES = (64, 80, 96, 112)
#: 80 px: 64 px measured worse than the incumbent (README, Fine-tuning a backbone).
DEFAULT_SIZE = 80
#: residual blocks in face-api's middle flow (128 channels at 1/8 of the input); fewer can be
#: kept (`--middle-blocks`): each costs about a tenth of the network's time
MIDDLE_BLOCKS = 2
#: Training chips show the square 9/8 as wide, at 9/8 the pixels, so a random `size` crop of
#: one shifts the face by up to 1/16 of its width each way.
TRAIN_MARGIN = 9 / 8
#: Label smoothing of the gender target (UTKFace's gender labels have some errors).
GENDER_SMOOTHING = 0.05
#: Width in years of the Gaussian the age output starts from (around face-api's regressed age).
INITIAL_SIGMA = 4.0


@dataclass(frozen=True, slots=True)
class FaceApiChipSet:
    """Cached chips of the rows where a face was found, in label order.

    `train_chips` `(n, T, T, 3)` with `T = round(size * 9/8)` and `eval_chips`
    `(n, size, size, 3)`, RGB uint8; `male` is 1.0 / 0.0, NaN where the gender is unknown.
    """

    rows: tuple[LabelledImage, ...]
    train_chips: NDArray[np.uint8]
    eval_chips: NDArray[np.uint8]

    @property
    def ages(self) -> NDArray[np.float32]:
        """Labelled ages, `(n,)`."""
        return np.array([row.age for row in self.rows], dtype=np.float32)

    @property
    def male(self) -> NDArray[np.float32]:
        """1 for M, 0 for F, NaN otherwise, `(n,)`."""
        code = {"M": 1.0, "F": 0.0}
        return np.array([code.get(row.gender or "", math.nan) for row in self.rows], np.float32)


def train_chip_size(size: int) -> int:
    """Side of the training chips for an input of `size` px."""
    return round(size * TRAIN_MARGIN)


def check_size(size: int) -> int:
    """`size`, or ValueError when the network cannot run at it."""
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(map(str, SIZES))}, got {size}")
    return size


# ----------------------------------------------------------------------------- network


def check_middle_blocks(middle_blocks: int) -> int:
    """`middle_blocks`, or ValueError when face-api's middle flow has no such depth."""
    if not 0 <= middle_blocks <= MIDDLE_BLOCKS:
        raise ValueError(f"--middle-blocks must be 0 to {MIDDLE_BLOCKS}, got {middle_blocks}")
    return middle_blocks


def global_pool_graph(path: Path, middle_blocks: int = MIDDLE_BLOCKS) -> Any:
    """face-api's age_gender.onnx with its 7x7 average pool made global and the input's
    height and width left open: the same network at any multiple of 16 px (identical
    outputs at 112 px).

    With `middle_blocks` below 2, the middle flow's last residual blocks are left out (each
    block's output is replaced by its input; fine-tuning then makes up for them)."""
    import onnx

    check_middle_blocks(middle_blocks)
    model = onnx.load(str(path))
    pools = [node for node in model.graph.node if node.op_type == "AveragePool"]
    if len(pools) != 1:
        raise ValueError(f"{path} is not face-api's AgeGenderNet (expected one AveragePool)")
    pools[0].op_type = "GlobalAveragePool"
    del pools[0].attribute[:]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    if middle_blocks < MIDDLE_BLOCKS:
        _drop_middle_blocks(model, middle_blocks)
    return model


def _drop_middle_blocks(model: Any, keep: int) -> None:
    """Remove `middle_flow/main_block_{keep..}`: residual blocks `x + f(x)`, whose output
    `.../add` is replaced by the block's input wherever it is read."""
    graph = model.graph
    replaced: dict[str, str] = {}
    for index in range(MIDDLE_BLOCKS - 1, keep - 1, -1):
        prefix = f"middle_flow/main_block_{index}/"
        block = [node for node in graph.node if node.name.startswith(prefix)]
        adds = [node for node in block if node.name == f"{prefix}add"]
        inside = {output for node in block for output in node.output}
        outside = {name for node in block for name in node.input} - inside
        # the block's input: what its first node and its residual Add both read
        entry = [name for name in adds[0].input if name in outside] if len(adds) == 1 else []
        if len(entry) != 1:
            raise ValueError(f"face-api graph: {prefix} is not a residual block")
        replaced[adds[0].output[0]] = entry[0]
        kept = [node for node in graph.node if not node.name.startswith(prefix)]
        del graph.node[:]
        graph.node.extend(kept)
    for node in graph.node:
        for position, name in enumerate(node.input):
            while name in replaced:
                name = replaced[name]
            node.input[position] = name
    used = {name for node in graph.node for name in node.input}
    kept_weights = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)


def faceapi_network(path: Path, middle_blocks: int = MIDDLE_BLOCKS) -> Any:
    """The trainable network (a torch module): `input (N, 3, S, S)` normalised as face-api
    does -> (age logits `(N, 101)`, male logit `(N,)`)."""
    import torch
    from onnx import numpy_helper

    model = global_pool_graph(path, middle_blocks)
    weights = {t.name: np.array(numpy_helper.to_array(t)) for t in model.graph.initializer}
    body = _onnx2torch_convert()(model)

    class FaceApiNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            self.regression = torch.nn.Linear(512, 1)
            self.age = torch.nn.Linear(512, AGE_CLASSES)
            self.log_sigma = torch.nn.Parameter(torch.tensor(math.log(INITIAL_SIGMA)))
            self.register_buffer("classes", torch.arange(AGE_CLASSES, dtype=torch.float32))
            self.gender = torch.nn.Linear(512, 1)
            w, b = weights["fc/gender/weights"], weights["fc/gender/bias"]  # [512, 2], [2]
            with torch.no_grad():
                self.regression.weight.copy_(torch.from_numpy(weights["fc/age/weights"].T))
                self.regression.bias.copy_(torch.from_numpy(weights["fc/age/bias"]))
                self.age.weight.zero_()
                self.age.bias.zero_()
                # softmax over (male, female) == sigmoid(male - female)
                self.gender.weight.copy_(torch.from_numpy((w[:, 0] - w[:, 1])[None, :]))
                self.gender.bias.fill_(float(b[0] - b[1]))

        def forward(self, images: Any) -> tuple[Any, Any]:
            _age, _gender, embedding = self.body(images)
            # A Gaussian around face-api's regressed age, refined by a free linear term that
            # starts at zero: training starts from the original network's estimate.
            centre = self.regression(embedding)
            classes: Any = self.classes
            prior = -0.5 * ((classes[None, :] - centre) / self.log_sigma.exp()) ** 2
            return prior + self.age(embedding), self.gender(embedding)[:, 0]

    return FaceApiNetwork()


def _head_parameters(network: Any) -> list[Any]:
    """The new layers, which train at the head's learning rate."""
    if hasattr(network, "head_parameters"):
        return list(network.head_parameters())
    return [
        *network.regression.parameters(),
        *network.age.parameters(),
        network.log_sigma,
        *network.gender.parameters(),
    ]


# ----------------------------------------------------------------------------- chips


def build_faceapi_chips(
    request: FinetuneRequest,
    rows: Sequence[LabelledImage],
    cache_root: Path,
    size: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    backbone: str = "faceapi",
) -> FaceApiChipSet:
    """Both chips of every row with a face, from `cache_root` when cached before: the square
    crop of `backbone`'s registry spec (face-api's, or faceres-deep's box x 1.25).

    Rows whose image does not decode or holds no face are left out (logged).
    """
    from agelens.models.backends import create_detector
    from agelens.models.crops import crop_resized
    from agelens.models.faceapi import faceapi_crop_box
    from agelens.models.registry import get_spec

    big = train_chip_size(size)

    def cut() -> ChipArrays:
        detector = create_detector(request.detector, 1)
        spec = get_spec(backbone)
        found = np.zeros(len(rows), dtype=bool)
        train: list[NDArray[np.uint8]] = []
        evaluation: list[NDArray[np.uint8]] = []
        scored = iter_scored_faces(request.dataset_dir, rows, request.pad, detector)
        for position, face in enumerate(scored):
            if face is not None:
                image, detection = face
                box = faceapi_crop_box(spec, detection)
                wide = faceapi_crop_box(spec, detection, TRAIN_MARGIN)
                evaluation.append(crop_resized(image, box, size))
                train.append(crop_resized(image, wide, big))
                found[position] = True
            if progress is not None and ((position + 1) % 16 == 0 or position + 1 == len(rows)):
                progress(position + 1, len(rows))
        return found, stack_chips(train, big), stack_chips(evaluation, size)

    config = chip_cache_config(request, rows, [big, TRAIN_MARGIN, size], backbone=backbone)
    kept, train_chips, eval_chips = cached_chips(config, cache_root, rows, cut)
    return FaceApiChipSet(rows=kept, train_chips=train_chips, eval_chips=eval_chips)


# ----------------------------------------------------------------------------- training


def gender_loss(logits: Any, male: Any) -> Any:
    """Smoothed binary cross-entropy over the rows with a known gender (0 when none)."""
    import torch

    known = ~torch.isnan(male)
    if not bool(known.any()):
        return logits.sum() * 0.0
    target = male[known] * (1 - 2 * GENDER_SMOOTHING) + GENDER_SMOOTHING
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], target)


def student_normalisation(backbone: str) -> tuple[Any, float]:
    """(per-channel mean in RGB order as a tensor, scale) of a student's input: `_normalise`
    gives the network `(chips - mean) * scale`, NCHW, RGB (FaceResNetwork turns it into its
    graph's BGR, channels last)."""
    import torch

    from agelens.models.registry import get_spec

    spec = get_spec(backbone)
    mean = spec.mean[::-1] if spec.channel_order == "BGR" else spec.mean
    return torch.tensor(mean, dtype=torch.float32), spec.scale


def predict(
    network: Any, chips: NDArray[np.uint8], batch_size: int = 256, *, backbone: str = "faceapi"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(expected ages, P(male)) of exact chips `(N, S, S, 3)` uint8."""
    import torch

    mean, scale = student_normalisation(backbone)
    classes = torch.arange(AGE_CLASSES, dtype=torch.float32)
    network.eval()
    ages, male = [], []
    with torch.no_grad():
        for start in range(0, len(chips), batch_size):
            x = torch.from_numpy(chips[start : start + batch_size]).float()
            age_logits, gender_logits = network(_normalise(x, mean, scale))
            ages.append((torch.softmax(age_logits, 1) * classes).sum(1).double().numpy())
            male.append(torch.sigmoid(gender_logits).double().numpy())
    if not ages:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ages), np.concatenate(male)


def _gender_accuracy(male: NDArray[np.float64], labels: NDArray[np.float32]) -> float | None:
    known = ~np.isnan(labels)
    if not known.any():
        return None
    return float(((male[known] >= 0.5) == (labels[known] >= 0.5)).mean())


def distillation_targets(
    ages: Any, male: Any, teacher: TeacherTargets | None, config: FinetuneConfig
) -> tuple[Any, Any, Any]:
    """(age distributions `(N, 101)`, target ages `(N,)`, P(male) targets `(N,)`, NaN where
    unknown) of a batch: the labels' (a Gaussian of `config.label_sigma` years around the
    age; the gender smoothed), mixed with the teacher's answers (a Gaussian of the teacher's
    own width around its age; its P(male)) at `config.teacher_weight` where it has them."""
    import torch

    hard = gaussian_targets(ages, config.label_sigma)
    label_male = male * (1 - 2 * GENDER_SMOOTHING) + GENDER_SMOOTHING
    if teacher is None:
        return hard, ages, label_male
    known = torch.from_numpy(teacher.found)
    weight = torch.where(known, config.teacher_weight, 0.0)
    t_age = torch.from_numpy(np.nan_to_num(teacher.age, nan=0.0))
    t_sigma = torch.from_numpy(np.nan_to_num(teacher.sigma, nan=1.0)).clamp_min(1.0)
    t_male = torch.from_numpy(np.nan_to_num(teacher.male, nan=0.5))
    soft = gaussian_targets(t_age, t_sigma)
    target = (1 - weight[:, None]) * hard + weight[:, None] * soft
    target_ages = (1 - weight) * ages + weight * t_age
    # no gender label: the teacher's alone; no teacher: the label's alone
    mixed_male = torch.where(
        torch.isnan(label_male), torch.where(known, t_male, label_male),
        (1 - weight) * label_male + weight * t_male,
    )  # fmt: skip
    return target, target_ages, mixed_male


def soft_gender_loss(logits: Any, target: Any) -> Any:
    """Binary cross-entropy to P(male) targets over the rows that have one (0 when none)."""
    import torch

    known = ~torch.isnan(target)
    if not bool(known.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], target[known])


def train_faceapi_network(
    network: Any,
    chips: FaceApiChipSet,
    config: FinetuneConfig,
    *,
    teacher: TeacherTargets | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    resume: bool = False,
    backbone: str = "faceapi",
) -> tuple[list[dict[str, Any]], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Train in place (see `fit`): age and gender losses, towards the labels or, with
    `teacher` (its targets for `chips.rows`, in order), a mix of labels and teacher (see
    `distillation_targets`); early stopping on the age MAE against the labels.

    Returns (one record per epoch, validation indices, validation ages and P(male) of the
    kept weights).
    """
    import torch

    mean, scale = student_normalisation(backbone)
    size = chips.eval_chips.shape[1]
    train_index, val_index = validation_split(
        len(chips.rows), config.validation_fraction, config.seed
    )
    train_chips = chips.train_chips[train_index]
    train_ages = torch.from_numpy(chips.ages[train_index])
    train_male = torch.from_numpy(chips.male[train_index])
    train_teacher = teacher.select(train_index) if teacher is not None else None
    val_ages = chips.ages[val_index].astype(np.float64)
    val_male = chips.male[val_index]

    def batch_loss(picked: Any, generator: Any) -> Any:
        source = batch_chips(train_chips, picked, config, generator)
        x = augment(source, config, generator, size=size)
        age_logits, gender_logits = network(_normalise(x, mean, scale))
        index = picked.numpy()
        batch_teacher = train_teacher.select(index) if train_teacher is not None else None
        target, target_ages, target_male = distillation_targets(
            train_ages[picked], train_male[picked], batch_teacher, config
        )
        return soft_age_loss(age_logits, target, target_ages, config.l1_weight) + (
            config.gender_weight * soft_gender_loss(gender_logits, target_male)
        )

    def validate() -> Validation:
        ages, male = predict(network, chips.eval_chips[val_index], backbone=backbone)
        accuracy = _gender_accuracy(male, val_male)
        return Validation(
            float(np.abs(ages - val_ages).mean()),
            {"val_gender_accuracy": None if accuracy is None else round(accuracy, 4)},
            (ages, male),
        )

    history, best = fit(
        network,
        config,
        len(train_index),
        _head_parameters(network),
        batch_loss,
        validate,
        on_step=on_step,
        checkpoint=checkpoint,
        fingerprint=fingerprint,
        resume=resume,
    )
    ages, male = best if best is not None else (np.zeros(0), np.zeros(0))
    return history, val_index, ages, male


# ----------------------------------------------------------------------------- export


def export_faceapi_onnx(
    network: Any, path: Path, size: int, middle_blocks: int = MIDDLE_BLOCKS
) -> None:
    """`input (N, 3, S, S)` -> `age_probabilities (N, 101)`, `gender_probability (N,)`: the
    trained weights written into face-api's own graph (see `write_faceapi_onnx`)."""
    from agelens.models.fetch import model_file
    from agelens.models.registry import get_spec

    state = {key: value.detach().cpu().numpy() for key, value in network.state_dict().items()}
    base = model_file(get_spec("faceapi"), "age_gender.onnx")
    write_faceapi_onnx(base, state, path, size, middle_blocks)


def write_faceapi_onnx(
    base: Path,
    state: Mapping[str, NDArray[Any]],
    path: Path,
    size: int,
    middle_blocks: int = MIDDLE_BLOCKS,
) -> None:
    """Write a trained FaceApiNetwork (its `state_dict` as arrays) as ONNX.

    Not torch.onnx.export: onnx2torch turns each convolution's asymmetric 'same' padding into
    a separate Pad, which the export keeps, and those Pads cost about 15% of the network's
    time (they stop ONNX Runtime's blocked-layout convolutions from chaining). So the
    trained weights go into the graph agelens writes for face-api (`global_pool_graph`,
    padding inside each Conv and MaxPool), and the new outputs are appended with onnx.helper.
    """
    from onnx import helper, numpy_helper

    model = global_pool_graph(base, middle_blocks)
    graph = model.graph
    weights = StudentWeights(graph, state)
    weights.copy_convolutions()
    trained = weights.trained

    # face-api's own heads give way to the trained ones.
    dropped_nodes = {"fc/age/gemm", "age", "fc/gender/gemm", "gender_probabilities"}
    kept = [node for node in graph.node if node.name not in dropped_nodes]
    used = {name for node in kept for name in node.input}
    del graph.node[:]
    graph.node.extend(kept)
    remaining = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)

    def constant(name: str, array: Any, dtype: Any = np.float32) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        graph.node.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(layer: str, output: str) -> str:
        """The trained torch.nn.Linear `layer` on the embedding (weights `(out, 512)`)."""
        weight = constant(f"head/{layer}/weight", trained(f"{layer}.weight"))
        bias = constant(f"head/{layer}/bias", trained(f"{layer}.bias"))
        return node("Gemm", ["embedding", weight, bias], output, transB=1)

    centre = linear("regression", "head/centre")
    age_linear = linear("age", "head/age_linear")
    classes = constant("head/classes", np.arange(AGE_CLASSES, dtype=np.float32)[None, :])
    sigma = constant("head/sigma", np.exp(trained("log_sigma")).reshape(1))
    z = node("Div", [node("Sub", [classes, centre], "head/offset"), sigma], "head/z")
    prior = node(
        "Mul", [node("Mul", [z, z], "head/z2"), constant("head/minus_half", [-0.5])], "head/prior"
    )
    logits = node("Add", [prior, age_linear], "head/age_logits")
    node("Softmax", [logits], "age_probabilities", axis=1)
    gender = linear("gender", "head/gender_logit")
    flat = constant("head/flat", [-1], np.int64)
    node("Sigmoid", [node("Reshape", [gender, flat], "head/gender_flat")], "gender_probability")

    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = size, size
    save_student_graph(model, path)


def onnx_predict(
    path: Path, chips: NDArray[np.uint8], backbone: str = "faceapi"
) -> tuple[NDArray[np.float64], ...]:
    """(expected ages, P(male)) of exact chips by an exported age_gender.onnx."""
    from agelens.models.registry import get_spec
    from agelens.models.runtime import create_session
    from agelens.train.finetune_faceres import faceres_input

    spec = get_spec(backbone)
    mean = np.asarray(spec.mean, np.float32)
    session = create_session(path, 1)
    name = session.get_inputs()[0].name
    ages, male = [], []
    for start in range(0, len(chips), 256):
        batch = chips[start : start + 256]
        if backbone == "faceapi":
            x = (batch.astype(np.float32) - mean) * np.float32(spec.scale)
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        else:
            x = faceres_input(batch, mean)
        probabilities, p_male = session.run(None, {name: x})
        ages.append(probabilities.astype(np.float64) @ np.arange(AGE_CLASSES))
        male.append(p_male.astype(np.float64))
    if not ages:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ages), np.concatenate(male)


# ----------------------------------------------------------------------------- the run


def finetune_faceapi_model(
    request: FinetuneRequest,
    config: FinetuneConfig,
    size: int = DEFAULT_SIZE,
    *,
    middle_blocks: int = MIDDLE_BLOCKS,
    on_rows: Callable[[int, int], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> FinetuneOutcome:
    """Run the whole fine-tuning of a one-network student (`request.backbone`: faceapi or
    faceres-deep); returns the installed model folder and its card."""
    from agelens.models.fetch import model_file
    from agelens.models.registry import get_spec
    from agelens.train.finetune_faceres import (
        FACERES_BACKBONE,
        check_faceres_size,
        faceres_network,
        write_faceres_onnx,
    )

    backbone = request.backbone
    if backbone == "faceapi":
        check_size(size)
        check_middle_blocks(middle_blocks)
    elif backbone == FACERES_BACKBONE:
        check_faceres_size(size)
        if middle_blocks != MIDDLE_BLOCKS:
            raise ValueError("--middle-blocks is only available for --backbone faceapi")
    else:
        raise ValueError(f"finetune_faceapi_model trains faceapi or {FACERES_BACKBONE}")
    started = time.perf_counter()
    rows = read_labels(request.labels_csv, split=request.split, limit=request.limit, seed=0)
    labelled = [r for r in rows if r.age is not None]
    if len(labelled) < 20:
        raise ValueError(
            f"{len(labelled)} rows with an age is too few to fine-tune; give at least 20"
        )
    cache_root = request.cache_root or request.out_dir.parent / ".agelens-train-cache"
    chips = build_faceapi_chips(
        request, labelled, cache_root, size, progress=on_rows, backbone=backbone
    )
    teacher: TeacherTargets | None = None
    if request.teacher is not None:
        every = teacher_targets(
            request.dataset_dir,
            labelled,
            teacher=request.teacher,
            cache_root=cache_root,
            pad=request.pad,
            detector=request.detector,
            workers=request.workers,
            progress=on_rows,
        )
        position = {row.file: index for index, row in enumerate(labelled)}
        teacher = every.select(np.array([position[row.file] for row in chips.rows], np.int64))
        logger.info(
            "teacher %s answered for %d of %d faces",
            request.teacher, int(teacher.found.sum()), len(chips.rows),
        )  # fmt: skip
    chip_seconds = time.perf_counter() - started
    base = model_file(get_spec(backbone), "age_gender.onnx")
    if backbone == "faceapi":
        network = faceapi_network(base, middle_blocks)
    else:
        network = faceres_network(base, size)
    teacher_models = None if teacher is None else teacher.models
    extra: dict[str, Any] = {"size": size, "teacher": teacher_models}
    if backbone == "faceapi":  # as before, so earlier checkpoints still resume
        extra["middle_blocks"] = middle_blocks
    fingerprint = run_fingerprint(request, config, labelled, **extra)
    checkpoint = checkpoint_path(cache_root, fingerprint)
    start = state_copy(network)
    history, val_index, val_ages_pred, val_male_pred = train_faceapi_network(
        network, chips, config, teacher=teacher, on_step=on_step,
        checkpoint=checkpoint, fingerprint=fingerprint, resume=request.resume,
        backbone=backbone,
    )  # fmt: skip
    val_ages = chips.ages[val_index].astype(np.float64)
    val_male = chips.male[val_index]
    wise: dict[str, Any] | None = None
    if config.wise_auto or config.wise != 1.0:
        val_chips = chips.eval_chips[val_index]

        def validation_mae() -> float:
            ages, _ = predict(network, val_chips, backbone=backbone)
            return float(np.abs(ages - val_ages).mean())

        alphas = WISE_ALPHAS if config.wise_auto else (config.wise,)
        alpha, tried = choose_wise(network, start, validation_mae, alphas)
        wise = {"alpha": alpha, "auto": config.wise_auto, "validation_mae": tried}
        logger.info("exporting start + %g x (trained - start); validation MAE %s", alpha, tried)
        val_ages_pred, val_male_pred = predict(network, val_chips, backbone=backbone)

    staging = staging_folder(request.out_dir)
    if backbone == "faceapi":
        export_faceapi_onnx(network, staging / FACEAPI_FILE, size, middle_blocks)
    else:
        state = {key: value.detach().cpu().numpy() for key, value in network.state_dict().items()}
        write_faceres_onnx(
            base, state, network.affine_names, staging / FACEAPI_FILE, size, network.input_conv
        )
    exported_ages, exported_male = onnx_predict(
        staging / FACEAPI_FILE, chips.eval_chips[val_index], backbone
    )
    gap = float(np.abs(exported_ages - val_ages_pred).max())
    if gap > 0.05 or float(np.abs(exported_male - val_male_pred).max()) > 1e-3:
        raise RuntimeError(
            f"exported {FACEAPI_FILE} disagrees with the trained network ({gap:.3f} years)"
        )
    val_mae = float(np.abs(exported_ages - val_ages).mean())
    accuracy = _gender_accuracy(exported_male, val_male)
    metrics: dict[str, Any] = {
        "validation": {
            "rows": len(val_index),
            "age_mae": round(val_mae, 4),
            "gender_accuracy": None if accuracy is None else round(accuracy, 4),
        }
    }
    card: dict[str, Any] = {
        "kind": FINETUNED_KIND,
        "format_version": 1,
        "name": request.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": "age + gender (fine-tuned end to end)",
        "backbone": backbone,
        "input_size": size,
        **({"middle_blocks": middle_blocks} if backbone == "faceapi" else {}),
        "age_classes": AGE_CLASSES,
        "weights": "float32",
        "interval": interval_knots(exported_ages, val_ages),
        "files": {FACEAPI_FILE: sha256_file(staging / FACEAPI_FILE)},
        "training": training_record(
            request,
            config,
            rows=len(labelled),
            faces_used=len(chips.rows),
            validation_rows=len(val_index),
            chips={"train": [train_chip_size(size), TRAIN_MARGIN], "eval": [size, 1.0]},
            history=history,
            chip_seconds=chip_seconds,
            started=started,
        ),
        "metrics": metrics,
        "data_notice": request.data_notice or "",
        "license": STUDENT_LICENSES[backbone],
    }
    if wise is not None:
        card["training"]["wise"] = wise
    if request.teacher is not None:
        card["training"]["teacher"] = {
            "name": request.teacher,
            "version": teacher_models,
            "weight": config.teacher_weight,
            "faces_answered": 0 if teacher is None else int(teacher.found.sum()),
        }
    install_model(
        staging, request.out_dir, card, model_card_markdown(card),
        FinetunedFaceApiEstimator if backbone == "faceapi" else FinetunedFaceResEstimator,
    )  # fmt: skip
    checkpoint.unlink(missing_ok=True)
    return FinetuneOutcome(folder=request.out_dir, card=card)


#: Licence line of each student's card: the network's own terms, and the data's.
STUDENT_LICENSES = {
    "faceapi": (
        "Fine-tuned from face-api's AgeGenderNet (@vladmandic/face-api, MIT); the weights "
        "are derived from the training data named above and its terms apply."
    ),
    "faceres-deep": (
        "Fine-tuned from HSE's FaceRes age/gender MobileNet (faceres-deep, from "
        "@vladmandic/human; Apache-2.0 per HSE); the weights are derived from the training "
        "data named above and its terms apply."
    ),
}
#: What each student is, for its card.
STUDENT_NETWORKS = {
    "faceapi": "face-api's AgeGenderNet",
    "faceres-deep": "HSE's FaceRes age/gender MobileNet (faceres-deep, 224 px originally)",
}


def model_card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown for people."""
    training = card["training"]
    validation = card["metrics"]["validation"]
    network = STUDENT_NETWORKS.get(card.get("backbone", "faceapi"), card.get("backbone"))
    lines = [
        f"# {card['name']}",
        "",
        f"{network} fine-tuned end to end by `agelens finetune` at "
        f"{card['input_size']} px ({card['age_classes']} age classes, ages 0..100, and "
        "P(male)).",
        "",
    ]
    middle = card.get("middle_blocks", MIDDLE_BLOCKS)
    if middle < MIDDLE_BLOCKS:
        lines += [
            f"The network keeps {middle} of face-api's {MIDDLE_BLOCKS} middle-flow blocks "
            "(residual blocks at 1/8 of the input), for speed.",
            "",
        ]
    if card["data_notice"]:
        lines += [f"**Data terms:** {card['data_notice']}", ""]
    lines += [
        "## Training",
        f"- data: `{training['dataset']}/{training['labels']}`, split `{training['split']}`: "
        f"{training['rows']} labelled rows, {training['faces_used']} with a face found "
        f"(detector {training['detector']}, pad {training['pad']}); "
        f"{training['validation_rows']} held out (seeded) for validation",
        f"- command: `{training['command']}`",
        f"- epochs run: {training['epochs_run']}, kept: epoch {training['best_epoch']}, "
        f"seed {training['config']['seed']}, {training['total_seconds']} s in all",
        f"- augmentation: {training['config'].get('augment', 'basic')}",
    ]
    if "teacher" in training:
        teacher = training["teacher"]
        lines += [
            f"- distilled from `{teacher['name']}` ({teacher['version']}): each target mixes "
            f"{teacher['weight']:.0%} of the teacher's answer (a Gaussian of its own width "
            f"around its age; its P(male)) with the label; it answered for "
            f"{teacher['faces_answered']} of the {training['faces_used']} faces",
        ]
    if "wise" in training:
        wise = training["wise"]
        tried = ", ".join(f"{alpha}: {mae:.3f}" for alpha, mae in wise["validation_mae"].items())
        how = (
            f"the smallest within {WISE_TOLERANCE:g} years of the trained weights' MAE"
            if wise["auto"]
            else ""
        )
        lines += [
            f"- exported weights: pretrained + {wise['alpha']:g} x (trained - pretrained) "
            f"(`--wise`{', auto: ' + how if how else ''}); validation age MAE by factor: "
            f"{tried}",
        ]
    lines += [
        "",
        "## Validation by epoch",
        "Held-out rows of the training split: expect higher errors on photos unlike them.",
        "",
        "| epoch | train loss | validation age MAE | validation gender accuracy | seconds |",
        "|---|---|---|---|---|",
    ]
    for h in training["epochs"]:
        gender = "-" if h["val_gender_accuracy"] is None else f"{h['val_gender_accuracy']:.1%}"
        lines.append(
            f"| {h['epoch']} | {h['train_loss']:.3f} | {h['val_mae']:.2f} | {gender} | "
            f"{h['seconds']} |"
        )
    gender = (
        "-" if validation["gender_accuracy"] is None else f"{validation['gender_accuracy']:.1%}"
    )
    lines += [
        "",
        f"Exported {FACEAPI_FILE} on the validation rows: age MAE {validation['age_mae']:.2f}, "
        f"gender accuracy {gender}.",
        "",
        "## Licence",
        card["license"],
        "",
    ]
    return "\n".join(lines)
