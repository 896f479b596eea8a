"""`agelens train` end to end: a labelled folder in, a model folder that loads by path out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from typer.testing import CliRunner

pytest.importorskip("torch")

from agelens.cli import EXIT_USAGE, app
from agelens.errors import ModelNotFetchedError
from agelens.evaluate import scored_face
from agelens.models.heads import HeadsEstimator, read_card
from agelens.pipeline import Analyzer

runner = CliRunner()


@pytest.fixture(scope="module")
def plumbing_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 variants of the astronaut portrait (crop, scale, brightness, mirror) with made-up
    labels: enough rows to run every step of training, not to learn anything real."""
    import skimage.data

    folder = tmp_path_factory.mktemp("plumbing")
    base = Image.fromarray(skimage.data.astronaut())
    rng = np.random.default_rng(0)
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "age", "gender", "split"])
        for index in range(120):
            left, top = (int(v) for v in rng.integers(0, 60, 2))
            image = base.crop((left, top, left + 440, top + 440)).resize((300, 300))
            image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.3)))
            if index % 2:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            image.save(folder / f"{index:03d}.jpg", quality=85)
            writer.writerow([f"{index:03d}.jpg", int(rng.integers(20, 70)), "FM"[index % 2], "dev"])
    return folder


def _train(folder: Path, out: Path, *extra: str) -> dict[str, object]:
    result = runner.invoke(
        app,
        [
            "train", str(folder), "--name", "plumbing", "--out", str(out), "--split", "dev",
            "--backbones", "faceapi", "--folds", "2", "--epochs", "3", "--hidden", "16",
            "--cache", str(out.parent / "cache"), *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card: dict[str, object] = json.loads(result.stdout)
    return card


def test_train_writes_a_complete_model_folder(plumbing_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    card = _train(plumbing_folder, out)
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "card.json", "head.onnx"]
    assert read_card(out) == card
    assert card["backbones"] == ["faceapi"]
    training = card["training"]
    assert isinstance(training, dict)
    assert training["rows"] == 120
    assert training["faces_used"] == 120
    assert training["command"].startswith("agelens train ")
    assert "--backbones faceapi" in training["command"]
    assert "UTKFace" not in (out / "MODEL_CARD.md").read_text()
    # No staging folder is left behind.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_trained_folder_is_an_estimator(
    plumbing_folder: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    out = tmp_path / "model"
    _train(plumbing_folder, out)
    result = Analyzer("blazeface-full", str(out)).analyze(astronaut)
    face = scored_face(result)
    assert face is not None
    assert 20 <= face.age_years <= 70  # the made-up labels' range
    assert face.age_interval[0] <= face.age_years <= face.age_interval[1]
    assert result.models["estimator"].startswith("plumbing (agelens-trained heads over faceapi")


def test_int8_records_its_measured_change(plumbing_folder: Path, tmp_path: Path) -> None:
    card = _train(plumbing_folder, tmp_path / "model", "--int8")
    assert card["weights"] == "int8"
    metrics = card["metrics"]
    assert isinstance(metrics, dict)
    change = metrics["int8"]
    assert change["rows"] == 120
    assert 0 <= change["mean_abs_age_change_years"] < 3
    sizes = change["size_bytes"]
    assert sizes["head.int8.onnx"] < 0.5 * sizes["head.onnx"]  # really quantized
    assert "## int8" in (tmp_path / "model" / "MODEL_CARD.md").read_text()


def test_a_tampered_head_is_refused(plumbing_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    _train(plumbing_folder, out)
    head = out / "head.onnx"
    head.write_bytes(head.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelNotFetchedError, match="sha256"):
        HeadsEstimator(out)


def test_an_int8_backbone_ships_its_ranges(
    plumbing_folder: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    """`faceres@96-int8`: ranges taken on a seeded sample of the training faces, kept in the
    cache (a second run reuses them and the features), copied into the model folder and listed
    in the card with their sha256, so a changed ranges file is refused like a changed head."""
    out = tmp_path / "model"
    card = _train(plumbing_folder, out, "--backbones", "faceres@96-int8,faceapi")
    ranges = "int8-ranges-faceres@96-int8.json"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["MODEL_CARD.md", "card.json", "head.onnx", ranges]
    )
    assert card["backbones"] == ["faceres@96-int8", "faceapi"]
    files = card["files"]
    assert isinstance(files, dict)
    assert set(files) == {"head.onnx", ranges}
    training = card["training"]
    assert isinstance(training, dict)
    assert training["int8_calibration_faces"] == 256
    assert "faceres@96-int8 run int8 where it is exact" in (out / "MODEL_CARD.md").read_text()
    [kept] = (tmp_path / "cache").glob(f"int8-ranges-*/{ranges}")
    assert kept.read_bytes() == (out / ranges).read_bytes()
    estimator = HeadsEstimator(out, threads=1)
    assert "faceres at 96 px, int8" in estimator.version()
    result = Analyzer("blazeface-full", str(out)).analyze(astronaut)
    assert scored_face(result) is not None

    # Resumed: the same ranges and features, so the same head.
    again = _train(plumbing_folder, tmp_path / "again", "--backbones", "faceres@96-int8,faceapi")
    assert again["files"] == card["files"]

    changed = json.loads((out / ranges).read_text())
    changed["data"] = dict(list(changed["data"].items())[:-1])
    (out / ranges).write_text(json.dumps(changed))
    with pytest.raises(ModelNotFetchedError, match="sha256"):
        HeadsEstimator(out)


def test_a_qat_backbone_ships_its_int8_graph(
    plumbing_folder: Path, tmp_path: Path, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`faceres-deep@96-qat`: the network fine-tuned for int8 on the training faces (kept in
    the cache), ranges taken on the tuned graph, its int8 graph shipped and listed with its
    sha256; the heads run that graph where int8 runs and the fetched float network elsewhere,
    and a second run reuses the tuned weights."""
    import onnx

    from agelens.models.faceres import FaceResEstimator
    from agelens.models.registry import get_spec

    out = tmp_path / "model"
    backbones = "faceres-deep@96-qat,faceapi"
    card = _train(plumbing_folder, out, "--backbones", backbones)
    graph = "int8-faceres-deep@96-qat.onnx"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["MODEL_CARD.md", "card.json", "head.onnx", graph]
    )
    files = card["files"]
    assert isinstance(files, dict)
    assert set(files) == {"head.onnx", graph}
    training = card["training"]
    assert isinstance(training, dict)
    assert training["int8_fine_tuning"]["faces"] == 120
    assert training["int8_calibration_faces"] == 256  # its ranges built the shipped graph
    markdown = (out / "MODEL_CARD.md").read_text()
    assert "int8 fine-tuning: faceres-deep@96-qat" in markdown
    assert "ranges taken on 256 training faces" in markdown
    shipped = onnx.load(str(out / graph))
    assert any(node.op_type == "QuantizeLinear" for node in shipped.graph.node)

    # The tuned weights changed, and only the weights: the graph is the 96-px float network's.
    [tuned_file] = (tmp_path / "cache").glob("qat-*/tuned-faceres-deep@96-qat.onnx")
    tuned = onnx.load(str(tuned_file))
    original = FaceResEstimator(get_spec("faceres-deep"), input_size=96).float_graph()
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in original.graph.node]
    changed = [
        x.name
        for x, y in zip(tuned.graph.initializer, original.graph.initializer, strict=True)
        if not np.array_equal(onnx.numpy_helper.to_array(x), onnx.numpy_helper.to_array(y))
    ]
    assert len(changed) > 10

    monkeypatch.setenv("AGELENS_INT8", "1")
    estimator = HeadsEstimator(out, threads=1)
    assert "faceres-deep at 96 px, int8, weights tuned for int8" in estimator.version()
    face = scored_face(Analyzer("blazeface-full", str(out)).analyze(astronaut))
    assert face is not None
    monkeypatch.setenv("AGELENS_INT8", "0")
    in_float = HeadsEstimator(out, threads=1)
    assert "faceres-deep at 96 px (" in in_float.version()
    float_face = scored_face(Analyzer("blazeface-full", str(out)).analyze(astronaut))
    assert float_face is not None
    assert float_face.age_years is not None
    assert face.age_years is not None
    assert abs(float_face.age_years - face.age_years) < 3.0
    monkeypatch.delenv("AGELENS_INT8")

    stamp = tuned_file.stat().st_mtime_ns
    again = _train(plumbing_folder, tmp_path / "again", "--backbones", backbones)
    assert again["files"] == card["files"]
    assert tuned_file.stat().st_mtime_ns == stamp  # not tuned again

    (out / graph).write_bytes((out / graph).read_bytes()[:-4] + b"0000")
    with pytest.raises(ModelNotFetchedError, match="sha256"):
        HeadsEstimator(out)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--backbones", "resnet"], "unknown backbone 'resnet'"),
        (["--backbones", "faceres@100"], "the size after @ must be one of"),
        (["--backbones", "faceapi@96"], "runs at its own input size only"),
        (["--backbones", "faceapi-int8"], "has no int8 version"),
        (["--backbones", "cydral-qat"], "has no int8 version"),
        (["--backbones", "faceres-deep@192-qat,faceres-deep"], "each network may be given once"),
        (["--backbones", "faceres@160-int8,faceres@192"], "each network may be given once"),
        (["--backbones", "faceres,faceres@160"], "each network may be given once"),
        (["--backbones", ","], "no backbones given"),
        (["--labels", "missing.csv"], "labels file not found"),
        (["--split", "nothing"], "too few to train"),
    ],
)
def test_usage_errors(
    plumbing_folder: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(
        app, ["train", str(plumbing_folder), "--out", str(tmp_path / "m"), *arguments]
    )
    assert result.exit_code == EXIT_USAGE
    assert message in result.output


def test_a_qat_backbone_without_onnx2torch_is_a_usage_error(
    plumbing_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Said before any work starts, with the install command, not as a traceback later."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx2torch" else real(name)
    )
    result = runner.invoke(
        app,
        ["train", str(plumbing_folder), "--out", str(tmp_path / "m"), "--backbones",
         "faceres-deep@96-qat,faceapi", "--cache", str(tmp_path / "cache")],
    )  # fmt: skip
    assert result.exit_code == EXIT_USAGE
    assert "pip install --no-deps onnx2torch" in result.output
    assert not (tmp_path / "cache").exists()


def test_real_faces_train_a_head_that_reads_age(utkface_dir: Path, tmp_path: Path) -> None:
    """400 UTKFace `dev` rows, face-api features: out of fold it must already read age and
    gender far better than chance, and the card must carry UTKFace's terms."""
    out = tmp_path / "utk"
    result = runner.invoke(
        app,
        [
            "train", str(utkface_dir), "--name", "utk-small", "--out", str(out),
            "--split", "dev", "--limit", "400", "--pad", "0.5", "--backbones", "faceapi",
            "--folds", "2", "--epochs", "15", "--cache", str(tmp_path / "cache"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    oof = card["metrics"]["out_of_fold"]["calibrated"]
    assert oof["age_mae"] < 8.0
    assert oof["gender_accuracy"] > 0.85
    assert card["training"]["faces_used"] >= 390
    notice = (out / "MODEL_CARD.md").read_text()
    assert "non-commercial research only" in notice
