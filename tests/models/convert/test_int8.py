"""int8 faceres: ranges taken on real faces, the graph built from them, and where it runs.

The int8 graph must follow the float one closely on a real face (the heads read its features),
be rebuilt from the ranges file alone, be cached under a name that changes with what it was
built from, and refuse ranges that were not taken on it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from agelens.models.backends import create_detector
from agelens.models.convert import int8
from agelens.models.convert.int8 import (
    cached_quantized,
    calibrate,
    int8_enabled,
    int8_is_exact,
    quantized,
)
from agelens.models.faceres import FaceResEstimator
from agelens.models.registry import get_spec
from agelens.models.runtime import create_session_from_bytes

SIZE = 128
OUTPUTS = ["embedding", "age_probabilities", "gender_probability"]


@pytest.fixture(scope="module")
def network() -> FaceResEstimator:
    return FaceResEstimator(get_spec("faceres"), threads=1, input_size=SIZE)


@pytest.fixture(scope="module")
def chips(network: FaceResEstimator, astronaut: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The astronaut's face, its mirror and brighter, darker and shifted copies: real faces."""
    detection = create_detector("blazeface-full", threads=1).detect_many([astronaut])[0][0]
    base = network.align(astronaut, [detection])["faceres"]
    variants = [base, base[:, :, ::-1]]
    variants += [base * factor for factor in (0.8, 1.2)]
    variants += [np.roll(base, shift, axis=(1, 2)) for shift in (-6, 6)]
    return np.ascontiguousarray(np.concatenate(variants), dtype=np.float32)


@pytest.fixture(scope="module")
def ranges(
    network: FaceResEstimator, chips: NDArray[np.float32], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("ranges") / "int8-ranges-faceres@128-int8.json"
    calibrate(network.float_graph(), chips, path)
    return path


def _run(model: bytes, chips: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    session = create_session_from_bytes(model, threads=1)
    return list(session.run(OUTPUTS, {session.get_inputs()[0].name: chips}))


def test_int8_follows_the_float_network_on_real_faces(
    network: FaceResEstimator, chips: NDArray[np.float32], ranges: Path
) -> None:
    data = quantized(network.float_graph(), ranges)
    graph = onnx.load_from_string(data).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 20
    assert len(data) < len(network.float_graph().SerializeToString()) / 3
    embedding8, age8, male8 = _run(data, chips)
    embedding, age, male = network.run_network(OUTPUTS, chips)
    cosine = (embedding8 * embedding).sum(1) / (
        np.linalg.norm(embedding8, axis=1) * np.linalg.norm(embedding, axis=1)
    )
    assert cosine.min() > 0.97
    years = np.arange(1, 101)
    assert np.abs(age8 @ years - age @ years).max() < 3.0
    assert ((male8 > 0.5) == (male > 0.5)).all()


def test_the_ranges_file_is_written_with_sorted_keys(ranges: Path) -> None:
    """ONNX Runtime's own order changes with the hash seed; sorted, the bytes do not."""
    text = ranges.read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True)


def test_the_ranges_file_alone_rebuilds_the_same_graph(
    network: FaceResEstimator, ranges: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.json"
    copy.write_bytes(ranges.read_bytes())
    assert quantized(network.float_graph(), copy) == quantized(network.float_graph(), ranges)
    assert copy.read_bytes() == ranges.read_bytes()  # read, never rewritten


def test_ranges_of_another_graph_are_refused(
    network: FaceResEstimator, ranges: Path, tmp_path: Path
) -> None:
    data = json.loads(ranges.read_text())
    data["data"]["not_a_tensor_here"] = next(iter(data["data"].values()))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not have"):
        quantized(network.float_graph(), other)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not an int8 ranges file"):
        quantized(network.float_graph(), broken)


def test_calibration_needs_faces(network: FaceResEstimator, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one face"):
        calibrate(network.float_graph(), np.zeros((0, SIZE, SIZE, 3), np.float32), tmp_path / "r")


def test_the_built_graph_is_cached_by_what_it_was_built_from(
    network: FaceResEstimator, ranges: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "derived"
    first = cached_quantized(network.float_graph(), ranges, cache, "faceres@128")
    [kept] = cache.iterdir()
    assert kept.name.startswith("faceres@128-int8-")
    assert kept.read_bytes() == first
    calls: list[object] = []
    monkeypatch.setattr(int8, "quantized", lambda *args: calls.append(args) or b"")
    assert cached_quantized(network.float_graph(), ranges, cache, "faceres@128") == first
    assert calls == []
    # Other ranges are another graph: built again, kept beside the first.
    other = tmp_path / "other.json"
    other.write_text(ranges.read_text().replace("6.0", "5.5", 1))
    cached_quantized(network.float_graph(), other, cache, "faceres@128")
    assert len(calls) == 1
    assert len(list(cache.iterdir())) == 2


def test_graphs_unused_for_a_month_go_when_another_is_built(
    network: FaceResEstimator, ranges: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earlier heads, ranges or ONNX Runtime versions leave graphs behind; one a load still
    reads (which touches it) stays, as do other networks' graphs."""
    monkeypatch.setattr(int8, "quantized", lambda *args: b"graph")
    cache = tmp_path / "derived"
    cache.mkdir()
    month_ago = time.time() - (int8.STALE_AFTER_DAYS + 1) * 86400
    stale, other_network = cache / "faceres@128-int8-0000.onnx", cache / "faceres-int8-0000.onnx"
    in_use = cache / "faceres@128-int8-1111.onnx"
    for path in (stale, other_network, in_use):
        path.write_bytes(b"old graph")
        os.utime(path, (month_ago, month_ago))
    os.utime(in_use)  # read by a load today
    data = cached_quantized(network.float_graph(), ranges, cache, "faceres@128")
    assert data == b"graph"
    built = [p for p in cache.iterdir() if p not in (other_network, in_use)]
    assert len(built) == 1
    assert built[0].read_bytes() == b"graph"
    assert sorted(cache.iterdir()) == sorted([built[0], other_network, in_use])
    # A load from the cache touches the graph it reads, so it is never counted unused.
    os.utime(built[0], (month_ago, month_ago))
    assert cached_quantized(network.float_graph(), ranges, cache, "faceres@128") == b"graph"
    assert built[0].stat().st_mtime > month_ago + 86400


def test_an_unwritable_cache_still_gives_the_graph(
    network: FaceResEstimator, ranges: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    data = cached_quantized(network.float_graph(), ranges, blocker / "derived", "faceres@128")
    assert data == quantized(network.float_graph(), ranges)


def test_int8_runs_where_it_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8.platform, "machine", lambda: "x86_64")
    assert int8_is_exact({"avx2", "avx512_vnni"})
    assert int8_is_exact({"avx2", "avx_vnni"})
    assert not int8_is_exact({"avx2", "avx512f", "avx512bw"})  # 16-bit pairs saturate there
    monkeypatch.setattr(int8.platform, "machine", lambda: "arm64")
    assert not int8_is_exact({"avx512_vnni"})


@pytest.mark.parametrize(
    ("setting", "expected"), [("0", False), ("off", False), ("1", True), ("yes", True)]
)
def test_agelens_int8_overrides_the_cpu_check(
    setting: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGELENS_INT8", setting)
    assert int8_enabled() is expected


def test_a_bad_agelens_int8_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGELENS_INT8", "sometimes")
    with pytest.raises(ValueError, match="AGELENS_INT8 must be 0 or 1"):
        int8_enabled()


def test_ranges_that_do_not_fit_leave_the_float_network_running(
    ranges: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ranges of another graph (or another ONNX Runtime's pre-processing) cannot build the int8
    graph: the estimator says so in the log and runs the float network instead of failing."""
    data = json.loads(ranges.read_text())
    data["data"]["not_a_tensor_here"] = next(iter(data["data"].values()))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    monkeypatch.setenv("AGELENS_INT8", "1")
    good = FaceResEstimator(get_spec("faceres"), threads=1, input_size=SIZE, int8_ranges=ranges)
    with caplog.at_level("WARNING", logger="agelens.models.faceres"):
        bad = FaceResEstimator(get_spec("faceres"), threads=1, input_size=SIZE, int8_ranges=other)
    assert good.int8
    assert not bad.int8
    assert "runs in float" in caplog.text
    assert "int8" not in bad.version()
