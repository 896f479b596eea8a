"""agelens.cluster: the Ray engine gives the same rows as the local one, and resumes the same
way. A local 2-CPU Ray, started once for the module; skipped where ray is not installed."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from agelens.batch import BatchOptions, count_sources, parts_folder, read_output, run_batch
from tests.test_batch import FAST, assert_one_set_per_image, assert_same_rows

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray with 2 CPUs; run_batch joins it instead of starting its own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(utkface_dir: Path, samples_dir: Path) -> list[str]:
    with (utkface_dir / "labels.csv").open() as file:
        rows = [r for r in csv.DictReader(file) if r["split"] == "test"][:30]
    return [*(str(utkface_dir / r["file"]) for r in rows), str(samples_dir)]


def test_ray_gives_the_same_rows_as_local(
    local_ray: None, inputs: list[str], tmp_path: Path
) -> None:
    options = BatchOptions(**FAST, workers=2, batch_size=8)
    run_batch(inputs, tmp_path / "local.parquet", options=options)
    summary = run_batch(inputs, tmp_path / "ray.parquet", options=options, engine="ray")
    assert summary.images == count_sources(inputs)
    assert_same_rows(read_output(tmp_path / "ray.parquet"), read_output(tmp_path / "local.parquet"))


def test_ray_resumes_a_local_run(local_ray: None, inputs: list[str], tmp_path: Path) -> None:
    options = BatchOptions(**FAST, workers=2, batch_size=8)
    out = tmp_path / "r.csv"
    run_batch(inputs[:10], out, options=options)
    summary = run_batch(inputs, out, options=options, engine="ray", resume=True)
    assert (summary.images, summary.skipped_images) == (count_sources(inputs) - 10, 10)
    assert not parts_folder(out).exists()
    table = read_output(out)
    assert_one_set_per_image(table, set(table.column("path").to_pylist()))
    assert table.num_rows > count_sources(inputs)  # the sample photos hold several faces
