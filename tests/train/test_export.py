"""The exported ONNX graph computes what the trained heads compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

from agelens.train.export import quantize_int8, write_onnx
from agelens.train.heads import AGE_YEARS, HeadWeights, run_heads


def _heads(count: int, inputs: int, hidden: int, seed: int) -> tuple[HeadWeights, ...]:
    rng = np.random.default_rng(seed)

    def array(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.normal(size=shape) * scale).astype(np.float32)

    return tuple(
        HeadWeights(
            mean=array(inputs, scale=1.0),
            scale=(rng.uniform(0.5, 2.0, inputs)).astype(np.float32),
            hidden_weight=array(hidden, inputs),
            hidden_bias=array(hidden),
            output_weight=array(102, hidden),
            output_bias=array(102),
        )
        for _ in range(count)
    )


@pytest.mark.parametrize(("count", "float16"), [(1, False), (3, False), (3, True)])
def test_onnx_matches_numpy(tmp_path: Path, count: int, float16: bool) -> None:
    heads = _heads(count, inputs=40, hidden=16, seed=count)
    path = tmp_path / "head.onnx"
    write_onnx(heads, path, float16_weights=float16)
    x = np.random.default_rng(9).normal(size=(7, 40)).astype(np.float32)
    expected, expected_logit = run_heads(heads, x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities, logit = session.run(None, {"features": x})
    assert probabilities.shape == (7, 101)
    assert logit.shape == (7,)
    tolerance = 2e-2 if float16 else 1e-4
    np.testing.assert_allclose(probabilities @ AGE_YEARS, expected @ AGE_YEARS, atol=tolerance * 10)
    np.testing.assert_allclose(logit, expected_logit, atol=tolerance)


def test_float16_halves_the_file_and_int8_quarters_it(tmp_path: Path) -> None:
    heads = _heads(2, inputs=300, hidden=64, seed=5)
    write_onnx(heads, tmp_path / "f32.onnx", float16_weights=False)
    write_onnx(heads, tmp_path / "f16.onnx", float16_weights=True)
    quantize_int8(tmp_path / "f32.onnx", tmp_path / "i8.onnx")
    f32, f16, i8 = (
        (tmp_path / name).stat().st_size for name in ("f32.onnx", "f16.onnx", "i8.onnx")
    )
    assert f16 < 0.6 * f32
    assert i8 < 0.35 * f32
    x = np.random.default_rng(1).normal(size=(20, 300)).astype(np.float32)
    reference = run_heads(heads, x)[0] @ AGE_YEARS
    session = ort.InferenceSession(str(tmp_path / "i8.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"features": x})[0] @ AGE_YEARS - reference).max() < 2.0
