"""Quantization-aware fine-tuning of a faceres network for int8 (`faceres-deep@192-qat`).

Post-training int8 costs faceres-deep more than faceres (its own age error on UTKFace `dev`
faces 5.438 float, 5.656 int8), enough that heads reading both networks in int8 lost 0.027
years on `aaf`. Training the float network for one epoch towards its own float outputs, with
int8 simulated in the loop, recovers most of it (embedding cosine to the float network 0.9953
-> 0.9985, age change 0.90 -> 0.57 years a face; docs/training.md). The tuned float graph then
goes through the same int8 recipe as any other (`convert.int8`: ranges taken on it, then the
int8 graph), and that int8 graph ships with the heads (3.7 MB), since its weights are no
longer the fetched ones. Where int8 does not run, the heads read the fetched float network,
which is what the fine-tuning taught the int8 graph to match.

What is simulated: int8 weights per output channel (symmetric, max / 127) and uint8
activations per tensor at every convolution's and dense layer's input, with ranges taken by
the float network on the first `RANGE_FACES` training faces and kept fixed; gradients pass
straight through the rounding. The first convolution is not trained (its weights are about
0.0015, where an Adam step would be too large; its int8 error is negligible). Loss: KL
divergence of the age distribution, binary cross-entropy of P(male) (less its floor) and the
embedding's squared error over its mean variance, all against the original float network on
the same chip. Seeded: the same faces give the same weights on the same machine and torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from agelens.evaluate import LabelledImage
from agelens.files import write_atomically
from agelens.train.chunks import cache_folder

if TYPE_CHECKING:
    import onnx

    from agelens.train.features import FeatureConfig

logger = logging.getLogger(__name__)

#: Training faces (a seeded sample of the training rows), each also read mirrored.
QAT_FACES = 3000
#: Faces whose float activations give the simulated int8 ranges (the first of the sample).
RANGE_FACES = 256
EPOCHS = 1.0
LEARNING_RATE = 1e-5
BATCH = 32
#: Bumped when the fine-tuning changes, so weights tuned by an older recipe are not reused.
QAT_VERSION = 1
OUTPUTS = ("age_probabilities", "gender_probability", "embedding")

Array = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TuneConfig:
    """What tuned weights are made from; any change gives a different cache folder."""

    faces: FeatureConfig
    count: int
    epochs: float
    learning_rate: float
    version: int


def run_graph(model: bytes, batch: Array, threads: int | None = None) -> list[Array]:
    """`OUTPUTS` of a faceres graph on `batch` (normalised chips), in batches."""
    from agelens.models.runtime import create_session_from_bytes

    session = create_session_from_bytes(model, threads)
    name = session.get_inputs()[0].name
    parts = [
        session.run(list(OUTPUTS), {name: batch[i : i + BATCH]})
        for i in range(0, len(batch), BATCH)
    ]
    return [np.concatenate([part[k] for part in parts]) for k in range(len(OUTPUTS))]


def _fake_quantized(module: Any, ranges: dict[str, tuple[float, float]]) -> None:
    """Each Conv2d / Linear of `module` named in `ranges` reads its input and weights through
    int8 rounding."""
    import torch
    import torch.nn.functional as functional

    def activation(x: Any, low: float, high: float) -> Any:
        scale = max((high - low) / 255.0, 1e-8)
        return torch.fake_quantize_per_tensor_affine(x, scale, round(-low / scale), 0, 255)

    def weight(w: Any) -> Any:
        peak = w.detach().abs().reshape(w.shape[0], -1).max(1).values.clamp_min(1e-12)
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, peak / 127.0, zero, 0, -127, 127)

    for name, layer in module.named_modules():
        if name not in ranges:
            continue
        low, high = ranges[name]
        forward: Callable[[Any], Any]
        if isinstance(layer, torch.nn.Conv2d):

            def forward(x: Any, layer: Any = layer, low: float = low, high: float = high) -> Any:
                return layer._conv_forward(
                    activation(x, low, high), weight(layer.weight), layer.bias
                )

        else:

            def forward(x: Any, layer: Any = layer, low: float = low, high: float = high) -> Any:
                return functional.linear(activation(x, low, high), weight(layer.weight), layer.bias)

        layer.forward = forward


def tune(
    float_graph: onnx.ModelProto,
    calibration: Array,
    train: Array,
    *,
    epochs: float = EPOCHS,
    learning_rate: float = LEARNING_RATE,
) -> onnx.ModelProto:
    """`float_graph` with weights trained on `train` chips under simulated int8, the int8
    ranges taken on `calibration` chips (see the module docstring)."""
    import onnx
    import torch
    import torch.nn.functional as functional

    from agelens.train.finetune import StudentWeights, _onnx2torch_convert

    torch.manual_seed(0)
    teacher = run_graph(float_graph.SerializeToString(), train)
    module = _onnx2torch_convert()(float_graph)
    module.train(False)
    layers = [
        (name, layer)
        for name, layer in module.named_modules()
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    ranges: dict[str, tuple[float, float]] = {}

    def observe(name: str) -> Callable[[Any, Any], None]:
        def hook(_: Any, inputs: Any) -> None:
            low, high = ranges.get(name, (0.0, 0.0))
            ranges[name] = (min(low, float(inputs[0].min())), max(high, float(inputs[0].max())))

        return hook

    hooks = [layer.register_forward_pre_hook(observe(name)) for name, layer in layers]
    with torch.no_grad():
        for i in range(0, len(calibration), BATCH):
            module(torch.from_numpy(calibration[i : i + BATCH]))
    for hook in hooks:
        hook.remove()
    _fake_quantized(module, ranges)
    first = layers[0][0]
    parameters = [p for name, p in module.named_parameters() if not name.startswith(f"{first}.")]
    optimiser = torch.optim.Adam(parameters, lr=learning_rate)
    steps = max(1, int(epochs * len(train) / BATCH))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=learning_rate, total_steps=steps, pct_start=0.1
    )
    age_t, male_t, embedding_t = (torch.from_numpy(a) for a in teacher)
    spread = max(float(teacher[2].std(0).mean()) ** 2, 1e-12)
    order, position = np.random.default_rng(0).permutation(len(train)), 0
    started = time.perf_counter()
    for step in range(steps):
        if position + BATCH > len(order):
            order, position = np.random.default_rng(step).permutation(len(train)), 0
        rows = order[position : position + BATCH]
        position += BATCH
        age, male, embedding = module(torch.from_numpy(train[rows]))
        target = male_t[rows].reshape(-1)
        loss = (
            functional.kl_div(torch.log(age.clamp_min(1e-8)), age_t[rows], reduction="batchmean")
            + functional.binary_cross_entropy(male.reshape(-1).clamp(1e-6, 1 - 1e-6), target)
            - functional.binary_cross_entropy(target.clamp(1e-6, 1 - 1e-6), target)
            + ((embedding - embedding_t[rows]) ** 2).mean() / spread
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info(
                "int8 fine-tuning step %d of %d: loss %.4f, %.0f s",
                step + 1,
                steps,
                loss.item(),
                time.perf_counter() - started,
            )
    state = {f"body.{key}": value.detach().numpy() for key, value in module.state_dict().items()}
    tuned = onnx.ModelProto()
    tuned.CopyFrom(float_graph)
    weights = StudentWeights(tuned.graph, state)
    weights.copy_convolutions()
    weights.copy_dense_layers()
    return tuned


def tune_for_int8(
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    faces: FeatureConfig,
    cache_root: Path,
    *,
    count: int = QAT_FACES,
) -> dict[str, Path]:
    """The tuned float graph of each `-qat` backbone among `faces.backbones` (`tune` on a
    seeded sample of `count` faces of `rows` and their mirrors, found as `faces` says), kept
    in `cache_root` so a resumed run reuses it. {} when no backbone is `-qat`."""
    from agelens.models.embeddings import parse_backbone
    from agelens.train.features import faceres_chips

    names = [name for name in faces.backbones if parse_backbone(name).tuned]
    if not names:
        return {}
    paths = {name: tuned_path(cache_root, faces, name, count) for name in names}
    todo = [name for name in names if not paths[name].is_file()]
    if not todo:
        return paths
    networks, chips, found = faceres_chips(dataset_dir, rows, faces, todo, count=count, seed=1)
    for name, network in networks.items():
        faces_seen = chips.pop(name)
        train = np.concatenate([faces_seen, np.ascontiguousarray(faces_seen[:, :, ::-1, :])])
        logger.info("fine-tuning %s for int8 on %d faces and their mirrors", name, found)
        save_graph(tune(network.float_graph(), faces_seen[:RANGE_FACES], train), paths[name])
    return paths


def tuned_path(cache_root: Path, faces: FeatureConfig, name: str, count: int = QAT_FACES) -> Path:
    """Where `tune_for_int8` keeps backbone `name`'s tuned graph: a folder keyed by the faces,
    this backbone alone (another `-qat` backbone beside it does not change its weights) and
    the recipe."""
    config = TuneConfig(
        replace(faces, backbones=(name,)), count, EPOCHS, LEARNING_RATE, QAT_VERSION
    )
    return cache_folder(cache_root, "qat", config) / f"tuned-{name}.onnx"


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """`model` written to `path` atomically."""
    data = model.SerializeToString()
    write_atomically(path, lambda target: target.write_bytes(data))
