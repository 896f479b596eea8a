"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def astronaut_folder(astronaut: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 labelled photos of one real face: the astronaut shifted, mirrored and re-lit."""
    root = tmp_path_factory.mktemp("astronaut-data")
    lines = ["file,age,gender,split"]
    for index in range(24):
        image = astronaut[index % 4 * 8 :, index // 4 * 6 :]
        if index % 2:
            image = image[:, ::-1]
        image = np.clip(image.astype(np.float32) * (0.8 + 0.02 * index), 0, 255).astype(np.uint8)
        name = f"astronaut_{index:02d}.jpg"
        Image.fromarray(np.ascontiguousarray(image)).save(root / name, quality=90)
        lines.append(f"{name},{40 + index % 5},F,dev")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root
