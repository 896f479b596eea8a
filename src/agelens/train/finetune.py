"""`agelens finetune`: the Cydral age network trained end to end on a labelled folder.

The recipe is the one measured in MEASUREMENTS.md ("Cydral upgrade"): age-v1 converted to
PyTorch with onnx2torch (after relabelling its opset 18 -> 13: onnx2torch cannot read Pad-18,
and these Pad nodes mean the same under opset 13), dlib's folded scale/offset layers made
trainable, the 81-way age output widened to 101 classes (ages 0..100; the first 81 start from
the original, whose oldest class is 80), trained on 72-px dlib chips (padding 0.2875, the same
face scale as the estimator's 64-px chips at padding 0.2) randomly cropped to 64 px, with
flips, colour jitter and some grayscale; validated on the exact 64-px chip the estimator cuts.
gender-v1 is kept unchanged (a new gender head did not beat it).

Faces are found once (detector on the padded image, the face `agelens eval` would score, dlib
landmarks) and both chips are cached as uint8 arrays in one .npz, so epochs only run the
network. The model folder (see agelens.models.finetuned) holds `age.onnx`, `card.json` and
`MODEL_CARD.md`; it is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import shutil
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agelens.evaluate import LabelledImage, iter_scored_faces, read_labels
from agelens.files import write_atomically
from agelens.models.fetch import sha256_file
from agelens.models.finetuned import (
    AGE_FILE,
    FINETUNED_KIND,
    MODEL_CARD_FILE,
    FinetunedCydralEstimator,
)
from agelens.models.heads import CARD_FILE

logger = logging.getLogger(__name__)

#: Ages of the widened age output's classes.
AGE_CLASSES = 101
#: Training chips: 72 px at padding 0.2875 shows the face at the scale of the estimator's
#: 64-px chip at padding 0.2 (64 / 1.4 = 72 / 1.575 face pixels), with 8 px to crop from.
TRAIN_CHIP = 72
TRAIN_PADDING = 0.2875
CHIP = 64
BACKBONES = ("cydral", "faceapi", "faceres-deep")
#: Augmentation recipes (`FinetuneConfig.augment`).
AUGMENTS = ("basic", "strong")
#: onnx2torch's requirements pull torchvision and a CUDA torch: it is installed on its own.
ONNX2TORCH_INSTALL = "pip install --no-deps onnx2torch==1.5.15"


@dataclass(frozen=True, slots=True)
class FinetuneConfig:
    """Hyper-parameters of a fine-tuning run (defaults: the measured recipe)."""

    epochs: int = 8
    batch_size: int = 128
    lr_body: float = 3e-4
    lr_head: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.15
    label_sigma: float = 2.0
    l1_weight: float = 0.1
    jitter: float = 0.2
    grayscale: float = 0.05
    validation_fraction: float = 0.1
    patience: int = 3
    seed: int = 0
    threads: int = 1
    #: faceapi only (it trains gender too): weight of the gender loss beside the age loss.
    gender_weight: float = 3.0
    #: distillation (`--teacher`): share of the teacher's answer in each target, the rest
    #: being the label (rows the teacher has no answer for learn from the label alone)
    teacher_weight: float = 0.5
    #: "basic" (crops, flips, colour, grayscale) or "strong" (also scale, rotation, blur,
    #: low resolution, JPEG artefacts and gamma: see `degrade`)
    augment: str = "basic"
    #: one-network students: the exported weights are `start + wise * (trained - start)`,
    #: the trained network moved back towards the pretrained one (`interpolate_weights`);
    #: 1 exports the trained weights as they are
    wise: float = 1.0
    #: choose `wise` on the validation rows instead (`choose_wise`)
    wise_auto: bool = False


@dataclass(frozen=True, slots=True)
class FinetuneRequest:
    """Everything `agelens finetune` was asked to do."""

    dataset_dir: Path
    labels_csv: Path
    out_dir: Path
    name: str
    backbone: str = "cydral"
    split: str | None = "dev"
    limit: int | None = None
    pad: float = 0.5
    detector: str = "blazeface-full"
    cache_root: Path | None = None
    int8: bool = False
    data_notice: str | None = None
    command: str = ""
    #: distil from this estimator (name or folder): see agelens.train.teacher
    teacher: str | None = None
    #: processes that compute the teacher's targets
    workers: int = 1
    #: continue from the last epoch's checkpoint of the same run (see `fit`)
    resume: bool = False


@dataclass(frozen=True, slots=True)
class FinetuneOutcome:
    """Where the model went and its card."""

    folder: Path
    card: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChipSet:
    """Cached chips of the rows where a face was found, in label order.

    `train_chips` `(n, 72, 72, 3)` and `eval_chips` `(n, 64, 64, 3)` are RGB uint8.
    """

    rows: tuple[LabelledImage, ...]
    train_chips: NDArray[np.uint8]
    eval_chips: NDArray[np.uint8]

    @property
    def ages(self) -> NDArray[np.float32]:
        """Labelled ages, `(n,)`."""
        return np.array([row.age for row in self.rows], dtype=np.float32)


# ----------------------------------------------------------------------------- conversion


def _onnx2torch_convert() -> Callable[..., Any]:
    """onnx2torch's `convert`. onnx2torch imports torchvision (for NMS and RoIAlign, which
    these networks do not use) at import; when torchvision is absent a stub stands in, since
    a torchvision wheel that matches a CPU torch is not always installable."""
    from agelens.errors import MissingExtraError

    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        stub = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        ops.roi_align = None  # type: ignore[attr-defined]
        stub.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.ops"] = ops
    if importlib.util.find_spec("onnx2torch") is None:
        raise MissingExtraError(f"'onnx2torch' is not installed; run: {ONNX2TORCH_INSTALL}")
    from onnx2torch import convert

    return convert  # type: ignore[no-any-return]


def convert_age_network(path: Path) -> Any:
    """Cydral's age.onnx as a torch module computing the same probabilities `(N, 81)`."""
    import onnx

    model = onnx.load(str(path))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 13
    module = _onnx2torch_convert()(model)
    module.eval()
    return module


def age_network(path: Path) -> Any:
    """The trainable network: converted age-v1 without its softmax, folded scale/offset
    layers as parameters, the age output widened to 101 logits (ages 0..100)."""
    import torch

    module = convert_age_network(path)
    initializers = module.initializers
    for name, buffer in list(initializers.named_buffers(recurse=False)):
        if buffer.is_floating_point():
            delattr(initializers, name)
            initializers.register_parameter(name, torch.nn.Parameter(buffer.detach().clone()))
    old = module.layer_1_fc
    wide = torch.nn.Linear(old.in_features, AGE_CLASSES)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[: old.out_features] = old.weight
        # New classes (81..100) start far less likely than any original one.
        wide.bias.fill_(float(old.bias.min()) - 4.0)
        wide.bias[: old.out_features] = old.bias
    module.layer_1_fc = wide
    module.probabilities = torch.nn.Identity()
    return module


def _head_parameters(network: Any) -> list[Any]:
    return list(network.layer_1_fc.parameters())


# ----------------------------------------------------------------------------- chips


def chip_cache_config(
    request: FinetuneRequest, rows: Sequence[LabelledImage], chips: list[Any], **extra: Any
) -> dict[str, Any]:
    """What a chip cache depends on (its key is the hash of this): the data, the detector and
    the chip geometry `chips`, plus `extra` facts of the recipe."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.file}\n".encode())
    return {
        **extra,
        "dataset_dir": str(request.dataset_dir.resolve()),
        "pad": float(request.pad),
        "detector": request.detector,
        "chips": chips,
        "files_sha256": digest.hexdigest(),
    }


ChipArrays = tuple[NDArray[np.bool_], NDArray[np.uint8], NDArray[np.uint8]]


def cached_chips(
    config: dict[str, Any],
    cache_root: Path,
    rows: Sequence[LabelledImage],
    cut: Callable[[], ChipArrays],
) -> tuple[tuple[LabelledImage, ...], NDArray[np.uint8], NDArray[np.uint8]]:
    """(rows with a face, their training chips, their evaluation chips), from `cache_root` when
    cached under `config` before, else from `cut()` (found per row, train chips, eval chips),
    saved atomically. Rows without a face are left out (logged); ValueError when none has one.
    """
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_root / f"chips-{key}.npz"
    if not target.is_file():
        found, train, evaluation = cut()

        def write(path: Path) -> None:
            with open(path, "wb") as handle:
                np.savez(handle, found=found, train=train, eval=evaluation)

        write_atomically(target, write)
        (cache_root / f"chips-{key}.json").write_text(json.dumps(config, indent=2) + "\n")
    with np.load(target) as data:
        found, train_chips, eval_chips = data["found"], data["train"], data["eval"]
    kept = tuple(row for row, hit in zip(rows, found, strict=True) if hit)
    if len(kept) < len(rows):
        logger.info(
            "%d of %d rows had no usable face and are left out", len(rows) - len(kept), len(rows)
        )
    if not kept:
        raise ValueError("no face was found in any labelled image: check --pad and the folder")
    return kept, train_chips, eval_chips


def stack_chips(chips: list[NDArray[np.uint8]], size: int) -> NDArray[np.uint8]:
    """`(n, size, size, 3)` uint8, also when there are none."""
    return np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8)


def build_chips(
    request: FinetuneRequest,
    rows: Sequence[LabelledImage],
    cache_root: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ChipSet:
    """Both chips of every row with a face, from `cache_root` when cached before.

    Rows whose image does not decode or holds no face are left out (logged).
    """
    from agelens.models.backends import create_detector
    from agelens.models.cydral import CydralEstimator
    from agelens.models.registry import get_spec

    def cut() -> ChipArrays:
        detector = create_detector(request.detector, 1)
        cydral = CydralEstimator(get_spec("cydral"), threads=1)
        found = np.zeros(len(rows), dtype=bool)
        train: list[NDArray[np.uint8]] = []
        evaluation: list[NDArray[np.uint8]] = []
        scored = iter_scored_faces(request.dataset_dir, rows, request.pad, detector)
        for position, face in enumerate(scored):
            if face is not None:
                image, detection = face
                image = np.ascontiguousarray(image)
                shape = cydral.landmarks(image, detection)
                train.append(cydral.chip(image, shape, TRAIN_CHIP, TRAIN_PADDING))
                evaluation.append(cydral.chip(image, shape, CHIP, cydral.padding))
                found[position] = True
            if progress is not None and ((position + 1) % 16 == 0 or position + 1 == len(rows)):
                progress(position + 1, len(rows))
        return found, stack_chips(train, TRAIN_CHIP), stack_chips(evaluation, CHIP)

    config = chip_cache_config(request, rows, [TRAIN_CHIP, TRAIN_PADDING, CHIP])
    kept, train_chips, eval_chips = cached_chips(config, cache_root, rows, cut)
    return ChipSet(rows=kept, train_chips=train_chips, eval_chips=eval_chips)


# ----------------------------------------------------------------------------- training


def _normalise(chips: Any, mean: Any, scale: float) -> Any:
    """uint8-valued float `(N, H, W, 3)` -> the network's input `(N, 3, H, W)`."""
    return ((chips - mean) * scale).permute(0, 3, 1, 2).contiguous()


def augment(chips: Any, config: FinetuneConfig, generator: Any, *, size: int = CHIP) -> Any:
    """Random `size`-px crops of larger chips, flips, brightness/contrast/saturation, grayscale.

    `chips` is a uint8 tensor `(N, T, T, 3)` (Cydral: 72 px); returns float32
    `(N, size, size, 3)` in 0..255.
    """
    import torch

    n = chips.shape[0]
    margin = chips.shape[1] - size
    offsets = torch.randint(0, margin + 1, (n, 2), generator=generator)
    rows = offsets[:, 0, None] + torch.arange(size)[None, :]
    cols = offsets[:, 1, None] + torch.arange(size)[None, :]
    batch = torch.arange(n)[:, None, None]
    x = chips[batch, rows[:, :, None], cols[:, None, :]].float()
    flip = torch.rand(n, generator=generator) < 0.5
    x[flip] = x[flip].flip(2)

    def factor() -> Any:
        low, high = 1 - config.jitter, 1 + config.jitter
        return (low + (high - low) * torch.rand(n, generator=generator))[:, None, None, None]

    weights = torch.tensor([0.299, 0.587, 0.114])
    x = x * factor()
    gray = (x * weights).sum(-1, keepdim=True)
    x = gray.mean((1, 2), keepdim=True) + (x - gray.mean((1, 2), keepdim=True)) * factor()
    gray = (x * weights).sum(-1, keepdim=True)
    x = gray + (x - gray) * factor()
    to_gray = torch.rand(n, generator=generator) < config.grayscale
    x[to_gray] = (x[to_gray] * weights).sum(-1, keepdim=True).expand(-1, -1, -1, 3)
    return x.clamp(0, 255)


def gaussian_targets(centres: Any, sigmas: Any) -> Any:
    """Discretised Gaussians over the age classes, `(N, 101)`, each summing to 1; `sigmas` is
    a float or one width per row."""
    import torch

    classes = torch.arange(AGE_CLASSES, dtype=torch.float32)
    widths = torch.as_tensor(sigmas, dtype=torch.float32)
    if widths.ndim == 1:
        widths = widths[:, None]
    target = torch.exp(-0.5 * ((classes[None, :] - centres[:, None]) / widths) ** 2)
    return target / target.sum(1, keepdim=True).clamp_min(1e-12)


def soft_age_loss(logits: Any, target: Any, target_ages: Any, l1_weight: float) -> Any:
    """Cross-entropy to the age distributions `target` `(N, 101)` + `l1_weight` × L1 between
    the expected age and `target_ages`."""
    import torch

    classes = torch.arange(AGE_CLASSES, dtype=torch.float32)
    log_probabilities = torch.log_softmax(logits, 1)
    expected = (log_probabilities.exp() * classes).sum(1)
    cross_entropy = -(target * log_probabilities).sum(1).mean()
    return cross_entropy + l1_weight * (expected - target_ages).abs().mean()


def age_loss(logits: Any, ages: Any, config: FinetuneConfig) -> Any:
    """Cross-entropy to a Gaussian label distribution (σ years) + weight × L1 on the
    expected age."""
    return soft_age_loss(logits, gaussian_targets(ages, config.label_sigma), ages, config.l1_weight)


def degrade(chips: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """The "strong" augmentation's image-level part, per chip `(N, T, T, 3)` uint8: what
    photos unlike the training set do to a face.

    - pose and box jitter (p 0.5): rotation within ±12°, scale 0.9-1.15, shift within 4%
      of the side, borders reflected;
    - blur (p 0.2): Gaussian, σ 0.4-1.4 px;
    - low resolution (p 0.15): down to 35-70% of the side and back up;
    - JPEG artefacts (p 0.3): quality 25-85;
    - gamma (p 0.3): 0.7-1.4.

    Colour, flips, crops and grayscale follow in `augment`. OpenCV, one chip at a time: about
    0.1 ms a chip, small beside the network's training step.
    """
    import cv2

    out = chips.copy()
    side = chips.shape[1]
    for index in range(len(out)):
        chip = out[index]
        if rng.random() < 0.5:
            angle = rng.uniform(-12, 12)
            scale = rng.uniform(0.9, 1.15)
            shift = rng.uniform(-0.04, 0.04, 2) * side
            centre = (side / 2 + shift[0], side / 2 + shift[1])
            matrix = cv2.getRotationMatrix2D(centre, angle, scale)
            matrix[:, 2] += (side / 2 - centre[0], side / 2 - centre[1])
            chip = cv2.warpAffine(
                chip, matrix, (side, side), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT_101,
            )  # fmt: skip
        if rng.random() < 0.2:
            chip = cv2.GaussianBlur(chip, (0, 0), rng.uniform(0.4, 1.4))
        if rng.random() < 0.15:
            small = max(8, round(side * rng.uniform(0.35, 0.7)))
            chip = cv2.resize(chip, (small, small), interpolation=cv2.INTER_AREA)
            chip = cv2.resize(chip, (side, side), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.3:
            quality = int(rng.integers(25, 86))
            ok, encoded = cv2.imencode(".jpg", chip, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                chip = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        if rng.random() < 0.3:
            gamma = rng.uniform(0.7, 1.4)
            table = np.clip(255 * (np.arange(256) / 255) ** gamma + 0.5, 0, 255).astype(np.uint8)
            chip = table[chip]
        out[index] = chip
    return out


def batch_chips(
    chips: NDArray[np.uint8], picked: Any, config: FinetuneConfig, generator: Any
) -> Any:
    """The training chips of batch rows `picked` as a uint8 tensor; with the strong
    augmentation, `degrade`d first, seeded from `generator` (so a resumed run repeats it)."""
    import torch

    batch = chips[picked.numpy()]
    if config.augment == "strong":
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        batch = degrade(batch, np.random.default_rng(seed))
    return torch.from_numpy(batch)


def check_augment(name: str) -> str:
    """`name`, or ValueError when it is not an augmentation agelens knows."""
    if name not in AUGMENTS:
        raise ValueError(f"--augment must be one of {', '.join(AUGMENTS)}, got {name!r}")
    return name


def predict_ages(
    network: Any, chips: NDArray[np.uint8], batch_size: int = 256
) -> NDArray[np.float64]:
    """Expected ages of exact 64-px chips `(N, 64, 64, 3)` uint8."""
    import torch

    from agelens.models.registry import get_spec

    spec = get_spec("cydral")
    mean = torch.tensor(spec.mean, dtype=torch.float32)
    classes = torch.arange(AGE_CLASSES, dtype=torch.float32)
    network.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(chips), batch_size):
            x = torch.from_numpy(chips[start : start + batch_size]).float()
            logits = network(_normalise(x, mean, spec.scale))
            out.append((torch.softmax(logits, 1) * classes).sum(1).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def validation_split(
    count: int, fraction: float, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(train indices, validation indices): a seeded `fraction` of rows held out."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, round(count * fraction))
    return np.sort(order[held:]), np.sort(order[:held])


def optimizer_and_schedule(
    network: Any, head: list[Any], config: FinetuneConfig, steps_per_epoch: int
) -> tuple[Any, Any]:
    """AdamW with the body and the `head` parameters at their own rates, and the one-cycle
    schedule over every step of the run."""
    import torch

    head_ids = {id(p) for p in head}
    body = [p for p in network.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": config.lr_body}, {"params": head, "lr": config.lr_head}],
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[config.lr_body, config.lr_head],
        total_steps=max(2, steps_per_epoch * config.epochs),
        pct_start=config.warmup_fraction,
        anneal_strategy="cos",
    )
    return optimizer, scheduler


@dataclass(frozen=True, slots=True)
class Validation:
    """One epoch's validation: the age MAE early stopping watches, other figures for the
    epoch's record (e.g. gender accuracy), and the predictions kept with the best epoch."""

    mae: float
    figures: dict[str, Any]
    predictions: Any


#: `--wise auto` tries these, from the trained weights towards the pretrained ones...
WISE_ALPHAS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
#: ...and keeps the smallest whose validation age MAE is within this many years of the
#: trained weights' own.
WISE_TOLERANCE = 0.01


def check_wise(text: str) -> tuple[float, bool]:
    """`--wise`: "auto" -> (1.0, True); a number in (0, 1] -> (it, False); else ValueError."""
    if text.strip().lower() == "auto":
        return 1.0, True
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0 < alpha <= 1:
        raise ValueError(f"--wise must be 'auto' or a number in (0, 1], got {text!r}")
    return alpha, False


def interpolate_weights(
    network: Any, start: Mapping[str, Any], trained: Mapping[str, Any], alpha: float
) -> None:
    """Load `start + alpha * (trained - start)` into `network` (every floating-point
    tensor; the others as trained).

    Why: weight-space interpolation between a pretrained network and its fine-tuned version
    (WiSE-FT, Wortsman et al., CVPR 2022) keeps much of the pretrained network's robustness
    on photos unlike the training set at little cost on photos like it. For
    `faceapi112-distilled`, 0.95 cost UTKFace test nothing measurable (4.543 -> 4.549 MAE) and
    took `aaf` from 6.36 to 6.19 (docs/accuracy.md, "Moving the student back towards
    face-api").
    """
    network.load_state_dict(
        {
            key: start[key] + alpha * (value - start[key]) if value.is_floating_point() else value
            for key, value in trained.items()
        }
    )


def choose_wise(
    network: Any,
    start: Mapping[str, Any],
    validation_mae: Callable[[], float],
    alphas: Sequence[float] = WISE_ALPHAS,
    tolerance: float = WISE_TOLERANCE,
) -> tuple[float, dict[str, float]]:
    """(alpha, validation MAE of each alpha tried): the smallest of `alphas` whose MAE is
    within `tolerance` of the first alpha's, trying them in order and stopping at the first
    one over it (one alpha: that one). The network ends at the chosen alpha."""
    trained = state_copy(network)
    tried: dict[str, float] = {}
    chosen, reference = alphas[0], None
    for alpha in alphas:
        interpolate_weights(network, start, trained, alpha)
        mae = validation_mae()
        tried[f"{alpha:g}"] = round(mae, 4)
        if reference is None:
            reference = mae
        elif mae > reference + tolerance:
            break
        chosen = alpha
    interpolate_weights(network, start, trained, chosen)
    return chosen, tried


def state_copy(network: Any) -> dict[str, Any]:
    """A detached copy of every tensor of `network.state_dict()`."""
    return {key: value.detach().clone() for key, value in network.state_dict().items()}


def run_fingerprint(
    request: FinetuneRequest,
    config: FinetuneConfig,
    rows: Sequence[LabelledImage],
    **extra: Any,
) -> str:
    """What a training run's checkpoint depends on, hashed: the data, the request's options
    (not its command line or whether it resumes), the configuration (not its threads or
    patience) and `extra` facts (input size, teacher version, ...). A checkpoint is resumed
    only by a run with the same one."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.file},{row.age},{row.gender}\n".encode())
    fields = {
        key: str(value)
        for key, value in asdict(request).items()
        if key not in ("command", "resume", "workers", "data_notice")
    }
    fields["dataset_dir"] = str(request.dataset_dir.resolve())
    fields["out_dir"] = str(request.out_dir.resolve())
    settings = asdict(config)
    # These change nothing an epoch computes: threads only its speed, patience only when the
    # run stops, so a run may be resumed with more threads or more patience.
    settings.pop("threads", None)
    settings.pop("patience", None)
    # Applied after the last epoch: an interrupted run may resume with another factor.
    settings.pop("wise", None)
    settings.pop("wise_auto", None)
    payload = {"request": fields, "config": settings, "extra": extra, "rows": digest.hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_path(cache_root: Path, fingerprint: str) -> Path:
    """Where a run with this fingerprint keeps its checkpoint."""
    return cache_root / f"checkpoint-{fingerprint[:16]}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (temporary name, fsync, rename): a checkpoint
    is whole or absent whatever stops the run."""
    import torch

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)

    write_atomically(path, write)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` (None when there is none); ValueError when it was written by
    a run with other data, options or models (`fingerprint`)."""
    import torch

    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{path} was written by a run with other data, options or models; "
            "run without --resume to start again"
        )
    return state


def fit(
    network: Any,
    config: FinetuneConfig,
    train_count: int,
    head_parameters: list[Any],
    batch_loss: Callable[[Any, Any], Any],
    validate: Callable[[], Validation],
    *,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    resume: bool = False,
) -> tuple[list[dict[str, Any]], Any]:
    """The training loop both fine-tunings share: seeded shuffled batches of the
    `train_count` training rows, `batch_loss(picked_indices, generator)` minimised with the
    one-cycle schedule, `validate()` after each epoch, early stopping on its MAE after
    `config.patience` epochs without a gain. Trains in place and ends on the best epoch's
    weights; returns (one record per epoch, that epoch's validation predictions).

    With `checkpoint`, everything the loop depends on (weights, optimiser, schedule, random
    generators, history, best weights) is saved there after every epoch; with `resume`, a run
    starts from that checkpoint (when it exists and matches `fingerprint`) and goes on exactly
    as the uninterrupted run would have: same batches, same augmentation, same weights.
    """
    import torch

    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, config.threads))
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(train_count / config.batch_size)
    optimizer, scheduler = optimizer_and_schedule(network, head_parameters, config, steps_per_epoch)
    history: list[dict[str, Any]] = []
    best_mae, best_state, best_predictions, stale = math.inf, None, None, 0
    first_epoch = 0
    saved = load_checkpoint(checkpoint, fingerprint) if checkpoint and resume else None
    if saved is not None:
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        history, first_epoch = saved["history"], saved["epoch"]
        best_mae, best_state = saved["best_mae"], saved["best_state"]
        best_predictions, stale = saved["best_predictions"], saved["stale"]
        logger.info("resuming from %s after epoch %d", checkpoint, first_epoch)
    elif resume:
        logger.info("no checkpoint to resume from at %s: starting from the first epoch", checkpoint)
    done = saved is not None and (saved["stopped"] or first_epoch >= config.epochs)
    for epoch in range(first_epoch, 0 if done else config.epochs):
        started = time.perf_counter()
        network.train()
        order = torch.randperm(train_count, generator=generator)
        total, seen = 0.0, 0
        for step, start in enumerate(range(0, train_count, config.batch_size)):
            picked = order[start : start + config.batch_size]
            loss = batch_loss(picked, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(picked)
            seen += len(picked)
            if on_step is not None:
                on_step({"epoch": epoch, "step": step + 1, "steps": steps_per_epoch})
        network.eval()
        validation = validate()
        record = {
            "epoch": epoch + 1,
            "train_loss": round(total / max(1, seen), 4),
            "val_mae": round(validation.mae, 4),
            **validation.figures,
            "seconds": round(time.perf_counter() - started, 1),
        }
        history.append(record)
        logger.info(
            "epoch %d: train loss %.3f, validation MAE %.3f%s",
            epoch + 1,
            record["train_loss"],
            validation.mae,
            "".join(f", {name} {value}" for name, value in validation.figures.items()),
        )
        if on_step is not None:
            on_step({"epoch": epoch, "step": steps_per_epoch, "steps": steps_per_epoch, **record})
        if validation.mae < best_mae:
            best_mae, stale, best_predictions = validation.mae, 0, validation.predictions
            best_state = state_copy(network)
        else:
            stale += 1
        stop = stale >= config.patience
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch + 1,
                    "stopped": stop,
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best_mae": best_mae,
                    "best_state": best_state,
                    "best_predictions": best_predictions,
                    "stale": stale,
                },
            )
        if stop:
            break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return history, best_predictions


def train_network(
    network: Any,
    chips: ChipSet,
    config: FinetuneConfig,
    *,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    resume: bool = False,
) -> tuple[list[dict[str, Any]], NDArray[np.int64], NDArray[np.float64]]:
    """Train Cydral's age network in place (see `fit`, which also explains `checkpoint`).

    Returns (one record per epoch, validation indices, validation predictions of the kept
    weights).
    """
    import torch

    from agelens.models.registry import get_spec

    spec = get_spec("cydral")
    mean = torch.tensor(spec.mean, dtype=torch.float32)
    train_index, val_index = validation_split(
        len(chips.rows), config.validation_fraction, config.seed
    )
    train_chips = chips.train_chips[train_index]
    train_ages = torch.from_numpy(chips.ages[train_index])
    val_ages = chips.ages[val_index].astype(np.float64)

    def batch_loss(picked: Any, generator: Any) -> Any:
        source = batch_chips(train_chips, picked, config, generator)
        x = _normalise(augment(source, config, generator), mean, spec.scale)
        return age_loss(network(x), train_ages[picked], config)

    def validate() -> Validation:
        predictions = predict_ages(network, chips.eval_chips[val_index])
        return Validation(float(np.abs(predictions - val_ages).mean()), {}, predictions)

    history, predictions = fit(
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
    return history, val_index, predictions if predictions is not None else np.zeros(0)


# ----------------------------------------------------------------------------- export


class _Probabilities:
    """Factory of the export wrapper (a torch module: softmax over the network's logits)."""

    @staticmethod
    def wrap(network: Any) -> Any:
        import torch

        class Probabilities(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, images: Any) -> Any:
                return torch.softmax(self.inner(images), 1)

        return Probabilities(network).eval()


def export_onnx(network: Any, path: Path) -> None:
    """`images (N, 3, 64, 64)` -> `probabilities (N, 101)`, with the TorchScript exporter."""
    import warnings

    import torch

    wrapped = _Probabilities.wrap(network)
    example = torch.zeros(1, 3, CHIP, CHIP)
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation; it is the one that exports
        # onnx2torch's modules without onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_axes={"images": {0: "faces"}, "probabilities": {0: "faces"}},
            opset_version=17,
            dynamo=False,
        )


def onnx_ages(path: Path, chips: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Expected ages of exact 64-px chips by an exported age.onnx."""
    from agelens.models.registry import get_spec
    from agelens.models.runtime import create_session

    spec = get_spec("cydral")
    session = create_session(path, 1)
    out = []
    for start in range(0, len(chips), 256):
        x = (
            chips[start : start + 256].astype(np.float32) - np.asarray(spec.mean, np.float32)
        ) * spec.scale
        probabilities = session.run(
            None, {"images": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
        )[0]
        out.append(probabilities.astype(np.float64) @ np.arange(AGE_CLASSES))
    return np.concatenate(out) if out else np.zeros(0)


def quantize_static_int8(source: Path, target: Path, calibration: NDArray[np.uint8]) -> None:
    """Static QDQ int8 (per channel, MinMax) calibrated on exact 64-px chips."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from agelens.models.registry import get_spec

    spec = get_spec("cydral")
    x = (calibration.astype(np.float32) - np.asarray(spec.mean, np.float32)) * spec.scale
    batches = iter(
        [
            {"images": np.ascontiguousarray(x[i : i + 1].transpose(0, 3, 1, 2))}
            for i in range(len(x))
        ]
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            return next(batches, None)

    prepared = target.with_suffix(".prep.onnx")
    quant_pre_process(str(source), str(prepared))
    quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()


def interval_knots(
    predictions: NDArray[np.float64], ages: NDArray[np.float64], coverage: float = 0.8
) -> dict[str, list[float]]:
    """Half-width of the central `coverage` interval by predicted age: the `coverage`
    quantile of |residual| in predicted-age bins of at least 30 validation rows."""
    residual = np.abs(predictions - ages)
    if len(residual) < 60:
        width = float(np.quantile(residual, coverage)) if len(residual) else 5.0
        return {"knots_x": [0.0], "knots_y": [round(width, 3)]}
    order = np.argsort(predictions)
    bins = np.array_split(order, max(1, min(10, len(order) // 30)))
    return {
        "knots_x": [round(float(np.median(predictions[b])), 3) for b in bins],
        "knots_y": [round(float(np.quantile(residual[b], coverage)), 3) for b in bins],
    }


# ----------------------------------------------------------------------------- the run


def finetune_model(
    request: FinetuneRequest,
    config: FinetuneConfig,
    *,
    on_rows: Callable[[int, int], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> FinetuneOutcome:
    """Run the whole fine-tuning; returns the installed model folder and its card."""
    from agelens.models.fetch import model_file
    from agelens.models.registry import get_spec
    from agelens.models.spec import DlibChipParams

    if request.backbone != "cydral":
        raise ValueError(f"finetune_model trains Cydral; got {request.backbone!r}")
    if request.teacher is not None:
        raise ValueError("distillation (--teacher) trains --backbone faceapi")
    started = time.perf_counter()
    rows = read_labels(request.labels_csv, split=request.split, limit=request.limit, seed=0)
    labelled = [r for r in rows if r.age is not None]
    if len(labelled) < 20:
        raise ValueError(
            f"{len(labelled)} rows with an age is too few to fine-tune; give at least 20"
        )
    cache_root = request.cache_root or request.out_dir.parent / ".agelens-train-cache"
    chips = build_chips(request, labelled, cache_root, progress=on_rows)
    chip_seconds = time.perf_counter() - started
    spec = get_spec("cydral")
    network = age_network(model_file(spec, "age.onnx"))
    fingerprint = run_fingerprint(request, config, labelled)
    checkpoint = checkpoint_path(cache_root, fingerprint)
    history, val_index, val_predictions = train_network(
        network, chips, config, on_step=on_step,
        checkpoint=checkpoint, fingerprint=fingerprint, resume=request.resume,
    )  # fmt: skip
    val_ages = chips.ages[val_index].astype(np.float64)

    staging = staging_folder(request.out_dir)
    export_onnx(network, staging / AGE_FILE)
    exported = onnx_ages(staging / AGE_FILE, chips.eval_chips[val_index])
    gap = float(np.abs(exported - val_predictions).max())
    if gap > 0.05:
        raise RuntimeError(
            f"exported age.onnx disagrees with the trained network ({gap:.3f} years)"
        )
    val_mae = float(np.abs(exported - val_ages).mean())
    metrics: dict[str, Any] = {"validation": {"rows": len(val_index), "age_mae": round(val_mae, 4)}}
    if request.int8:
        train_index = np.setdiff1d(np.arange(len(chips.rows)), val_index)
        calibration = np.random.default_rng(config.seed).choice(
            train_index, min(512, len(train_index)), replace=False
        )
        quantized = staging / "age.int8.onnx"
        quantize_static_int8(staging / AGE_FILE, quantized, chips.eval_chips[np.sort(calibration)])
        int8_ages = onnx_ages(quantized, chips.eval_chips[val_index])
        int8_mae = float(np.abs(int8_ages - val_ages).mean())
        metrics["int8"] = {
            "calibration_chips": len(calibration),
            "validation_age_mae": round(int8_mae, 4),
            "validation_age_mae_change_years": round(int8_mae - val_mae, 4),
            "size_bytes": {
                "float32": (staging / AGE_FILE).stat().st_size,
                "int8": quantized.stat().st_size,
            },
        }
        quantized.replace(staging / AGE_FILE)
        exported = int8_ages
    card: dict[str, Any] = {
        "kind": FINETUNED_KIND,
        "format_version": 1,
        "name": request.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": "age (fine-tuned) + gender (gender-v1 unchanged)",
        "backbone": request.backbone,
        "age_classes": AGE_CLASSES,
        "weights": "int8" if request.int8 else "float32",
        "interval": interval_knots(exported, val_ages),
        "files": {AGE_FILE: sha256_file(staging / AGE_FILE)},
        "training": training_record(
            request,
            config,
            rows=len(labelled),
            faces_used=len(chips.rows),
            validation_rows=len(val_index),
            chips={
                "train": [TRAIN_CHIP, TRAIN_PADDING],
                "eval": [CHIP, spec.params_as(DlibChipParams).chip_padding],
            },
            history=history,
            chip_seconds=chip_seconds,
            started=started,
        ),
        "metrics": metrics,
        "data_notice": request.data_notice or "",
        "license": (
            "Fine-tuned from Cydral age-v1 (dlib-models, CC0-1.0); the weights are derived from "
            "the training data named above and its terms apply. gender-v1 is used unchanged."
        ),
    }
    install_model(
        staging, request.out_dir, card, model_card_markdown(card), FinetunedCydralEstimator
    )
    checkpoint.unlink(missing_ok=True)
    return FinetuneOutcome(folder=request.out_dir, card=card)


def training_record(
    request: FinetuneRequest,
    config: FinetuneConfig,
    *,
    rows: int,
    faces_used: int,
    validation_rows: int,
    chips: dict[str, Any],
    history: list[dict[str, Any]],
    chip_seconds: float,
    started: float,
) -> dict[str, Any]:
    """The card's `training` section: data, chips, command, configuration, epochs, times."""
    return {
        "dataset": request.dataset_dir.name,
        "labels": request.labels_csv.name,
        "split": request.split,
        "rows": rows,
        "faces_used": faces_used,
        "validation_rows": validation_rows,
        "pad": request.pad,
        "detector": request.detector,
        "chips": chips,
        "command": request.command,
        "config": asdict(config),
        "epochs": history,
        "epochs_run": len(history),
        "best_epoch": 1 + int(np.argmin([h["val_mae"] for h in history])),
        "chip_seconds": round(chip_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }


class StudentWeights:
    """Writes a trained network's `state_dict` (as arrays; onnx2torch's module names) into the
    initializers of the ONNX graph it was converted from, checking every name and shape, so a
    student is exported into its source graph rather than by `torch.onnx.export` (which keeps
    onnx2torch's separate Pads)."""

    def __init__(self, graph: Any, state: Mapping[str, NDArray[Any]]) -> None:
        self.graph = graph
        self.state = state
        self._initializers = {t.name: t for t in graph.initializer}

    def trained(self, key: str) -> NDArray[np.float32]:
        """The trained array `key`; ValueError when the weights lack it."""
        if key not in self.state:
            raise ValueError(f"the trained weights lack {key!r}")
        return np.ascontiguousarray(self.state[key], dtype=np.float32)

    def replace(self, name: str, array: NDArray[np.float32], key: str) -> None:
        """Initializer `name` := `array` (trained weight `key`), which must have its shape."""
        from onnx import numpy_helper

        if tuple(self._initializers[name].dims) != array.shape:
            raise ValueError(f"{key} has shape {array.shape}, not {name}'s")
        self._initializers[name].CopyFrom(numpy_helper.from_array(array, name))

    def copy_convolutions(self, *, divide: Mapping[str, float] | None = None) -> None:
        """Every Conv's trained weight and bias; `divide` maps a Conv's name to a number its
        trained weight is divided by."""
        for conv in self.graph.node:
            if conv.op_type != "Conv":
                continue
            prefix = f"body.{conv.name}"
            if f"{prefix}.weight" not in self.state:
                prefix += ".1"  # padded convolutions became Sequential(pad, conv)
            for name, suffix in zip(conv.input[1:], ("weight", "bias"), strict=False):
                array = self.trained(f"{prefix}.{suffix}")
                if suffix == "weight" and divide and conv.name in divide:
                    array = array / np.float32(divide[conv.name])
                self.replace(name, array, f"{prefix}.{suffix}")

    def copy_dense_layers(self) -> None:
        """Every Gemm's trained weight and bias (onnx2torch made each a torch.nn.Linear, which
        holds `(out, in)`; a Gemm without transB holds `(in, out)`)."""
        for node in self.graph.node:
            if node.op_type != "Gemm":
                continue
            key = f"body.{node.name}"
            weight = self.trained(f"{key}.weight")
            transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            self.replace(node.input[1], weight if transposed else weight.T.copy(), f"{key}.weight")
            self.replace(node.input[2], self.trained(f"{key}.bias"), f"{key}.bias")


def save_student_graph(model: Any, path: Path) -> None:
    """Give a student's graph its two outputs, `age_probabilities (N, 101)` and
    `gender_probability (N,)`, check it and save it (without the source's metadata)."""
    import onnx
    from onnx import TensorProto, helper

    del model.graph.output[:]
    model.graph.output.extend(
        [
            helper.make_tensor_value_info(
                "age_probabilities", TensorProto.FLOAT, ["N", AGE_CLASSES]
            ),
            helper.make_tensor_value_info("gender_probability", TensorProto.FLOAT, ["N"]),
        ]
    )
    del model.metadata_props[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def staging_folder(out_dir: Path) -> Path:
    """A new, empty sibling of `out_dir` where a model folder is written before it is
    installed."""
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def install_model(
    staging: Path,
    out_dir: Path,
    card: dict[str, Any],
    markdown: str,
    load: Callable[..., Any],
) -> None:
    """Write MODEL_CARD.md and card.json (with the Markdown's sha256) into `staging`, load it
    with `load(folder, threads=1)` the way users will (which proves the folder complete), then
    move it to `out_dir`, replacing what was there."""
    (staging / MODEL_CARD_FILE).write_text(markdown, encoding="utf-8")
    card["files"][MODEL_CARD_FILE] = sha256_file(staging / MODEL_CARD_FILE)
    (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    load(staging, threads=1)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.replace(out_dir)
    logger.info("model %s written to %s", card["name"], out_dir)


def model_card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown for people."""
    training = card["training"]
    lines = [
        f"# {card['name']}",
        "",
        f"Cydral age-v1 fine-tuned end to end by `agelens finetune` ({card['age_classes']} age "
        f"classes, ages 0..100, weights {card['weights']}); gender from Cydral gender-v1, "
        "unchanged.",
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
        "",
        "## Validation by epoch",
        "Held-out rows of the training split: expect higher errors on photos unlike them.",
        "",
        "| epoch | train loss | validation age MAE | seconds |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {h['epoch']} | {h['train_loss']:.3f} | {h['val_mae']:.2f} | {h['seconds']} |"
        for h in training["epochs"]
    ]
    lines += [
        "",
        "Exported age.onnx on the validation rows: "
        f"MAE {card['metrics']['validation']['age_mae']:.2f}.",
    ]
    if "int8" in card["metrics"]:
        q = card["metrics"]["int8"]
        lines += [
            "",
            "## int8",
            f"Static QDQ, per channel, {q['calibration_chips']} calibration chips: validation MAE "
            f"{q['validation_age_mae']:.2f} ({q['validation_age_mae_change_years']:+.3f} years), "
            f"{q['size_bytes']['float32']} -> {q['size_bytes']['int8']} bytes.",
        ]
    lines += ["", "## Licence", card["license"], ""]
    return "\n".join(lines)
