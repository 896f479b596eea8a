"""Quantization-aware fine-tuning of faceres-deep at 192 px (an experiment, not yet part of
`agelens train`): the network is trained towards its own float outputs with int8 simulated in
the loop, then quantized by agelens's int8 recipe, and its int8 outputs are compared with the
original float network's on held-out UTKFace `dev` faces.

    python scripts/qat_faceres_deep.py ../shared/data/utkface --out qat/

What it simulates: int8 weights per output channel (symmetric, max / 127) and uint8
activations per tensor at every convolution's and dense layer's input, with ranges taken by
the float network on the calibration faces and kept fixed; gradients pass straight through
the rounding. The first convolution is not trained (its weights are about 0.0015, where an
Adam step would be too large; its int8 error is negligible). Loss: KL divergence of the age
distribution, binary cross-entropy of P(male) (less its floor) and the embedding's squared
error over its mean variance, all against the original float network on the same chip.

Writes `OUT/faceres-deep@192-qat.onnx` (the tuned float graph, which agelens's int8 recipe
then quantizes) and prints, for the original and the tuned network in int8: their own age
MAE, the mean change of the age estimate and the embedding cosine against the original float
network, and gender decisions changed. docs/training.md ("int8 faceres in the heads") gives
what it measured on 2026-12-07.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from agelens.evaluate import LabelledImage, iter_scored_faces, read_labels
from agelens.models.backends import create_detector
from agelens.models.convert.int8 import calibrate, quantized
from agelens.models.faceres import FaceResEstimator
from agelens.models.registry import get_spec
from agelens.models.runtime import create_session_from_bytes
from agelens.train.finetune import StudentWeights, _onnx2torch_convert

logger = logging.getLogger("qat_faceres_deep")

NAME = "faceres-deep"
SIZE = 192
OUTPUTS = ["age_probabilities", "gender_probability", "embedding"]
YEARS = np.arange(1, 101)
BATCH = 32

Array = NDArray[np.float32]


def chips(
    network: FaceResEstimator, dataset: Path, rows: Sequence[LabelledImage]
) -> tuple[Array, NDArray[np.float64], list[str]]:
    """The network's input for each row with a face (as `agelens train` finds them)."""
    found, ages, files = [], [], []
    detector = create_detector("blazeface-full", 1)
    for row, face in zip(rows, iter_scored_faces(dataset, rows, 0.5, detector), strict=True):
        if face is not None and row.age is not None:
            found.append(network.align(face[0], [face[1]])[NAME])
            ages.append(row.age)
            files.append(row.file)
    return np.concatenate(found), np.array(ages, dtype=np.float64), files


def run(model: bytes, batch: Array, threads: int) -> list[Array]:
    session = create_session_from_bytes(model, threads)
    parts = [
        session.run(OUTPUTS, {"input_1": batch[i : i + BATCH]}) for i in range(0, len(batch), BATCH)
    ]
    return [np.concatenate([part[k] for part in parts]) for k in range(len(OUTPUTS))]


def compare_int8(
    name: str,
    model: onnx.ModelProto,
    calibration: Array,
    test: Array,
    ages: NDArray[np.float64],
    reference: list[Array],
) -> dict[str, Any]:
    """`model` in int8 (agelens's recipe, ranges on `calibration`) against the original float
    network's outputs `reference` on `test`."""
    with tempfile.TemporaryDirectory() as work:
        ranges = Path(work) / "ranges.json"
        calibrate(model, calibration, ranges)
        probabilities, male, embedding = run(quantized(model, ranges), test, 1)
    float_probabilities, float_male, float_embedding = reference
    age, float_age = probabilities @ YEARS, float_probabilities @ YEARS
    cosine = (embedding * float_embedding).sum(1) / (
        np.linalg.norm(embedding, axis=1) * np.linalg.norm(float_embedding, axis=1)
    )
    return {
        "network": name,
        "int8_age_mae": round(float(np.abs(age - ages).mean()), 3),
        "float_age_mae": round(float(np.abs(float_age - ages).mean()), 3),
        "mean_age_change_vs_float": round(float(np.abs(age - float_age).mean()), 3),
        "embedding_cosine_vs_float": round(float(cosine.mean()), 5),
        "gender_decisions_changed": round(float(((male > 0.5) != (float_male > 0.5)).mean()), 4),
    }


def fake_quantized(module: Any, ranges: dict[str, tuple[float, float]]) -> None:
    """Each Conv2d / Linear of `module` reads its input and weights through int8 rounding."""
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
    float_graph: onnx.ModelProto, calibration: Array, train: Array, epochs: float, rate: float
) -> onnx.ModelProto:
    """The float graph with weights trained under simulated int8 (see the module docstring)."""
    import torch
    import torch.nn.functional as functional

    torch.manual_seed(0)
    teacher = run(float_graph.SerializeToString(), train, 2)
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
    fake_quantized(module, ranges)
    first = layers[0][0]
    parameters = [p for name, p in module.named_parameters() if not name.startswith(f"{first}.")]
    optimiser = torch.optim.Adam(parameters, lr=rate)
    steps = max(1, int(epochs * len(train) / BATCH))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=rate, total_steps=steps, pct_start=0.1
    )
    age_t, male_t, embedding_t = (torch.from_numpy(a) for a in teacher)
    spread = float(teacher[2].std(0).mean()) ** 2
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
        if step % 50 == 0:
            logger.info(
                "step %d of %d: loss %.4f, %.0f s",
                step,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="UTKFace folder with labels.csv")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tuned graph")
    parser.add_argument("--train-faces", type=int, default=3000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    network = FaceResEstimator(get_spec(NAME), threads=2, input_size=SIZE)
    labels = arguments.dataset / "labels.csv"
    # 900 seeded `dev` rows: the first 256 faces calibrate, the rest are the comparison's.
    held_rows = read_labels(labels, split="dev", limit=900, seed=11)
    held, held_ages, held_files = chips(network, arguments.dataset, held_rows)
    calibration, test, ages = held[:256], held[256:], held_ages[256:]
    others = read_labels(labels, split="dev", limit=arguments.train_faces + 1200, seed=5)
    train_rows = [r for r in others if r.file not in set(held_files)][: arguments.train_faces]
    train, _, _ = chips(network, arguments.dataset, train_rows)
    train = np.concatenate([train, np.ascontiguousarray(train[:, :, ::-1, :])])  # and mirrors
    float_graph = network.float_graph()
    reference = run(float_graph.SerializeToString(), test, 2)
    tuned = tune(float_graph, calibration, train, arguments.epochs, arguments.learning_rate)
    arguments.out.mkdir(parents=True, exist_ok=True)
    onnx.save(tuned, str(arguments.out / f"{NAME}@{SIZE}-qat.onnx"))
    for name, model in (("original", float_graph), ("quantization-aware", tuned)):
        print(json.dumps(compare_int8(name, model, calibration, test, ages, reference)))


if __name__ == "__main__":
    main()
