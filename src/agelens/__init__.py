"""agelens: apparent age and gender of every face in photos, fast on a plain CPU.

    import agelens
    result = agelens.analyze("photo.jpg")
    for face in result.faces:
        print(face.gender, face.age_years, face.age_interval)

Nothing is loaded at import; the first `analyze` call builds a default Analyzer (models must
have been fetched with `agelens models fetch`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from agelens.errors import (
    AgelensError,
    ImageDecodeError,
    ImageTooLargeError,
    MissingExtraError,
    ModelFetchError,
    ModelNotFetchedError,
    UnknownModelError,
)
from agelens.types import AgeGenderEstimate, Detection, Face, ImageResult

if TYPE_CHECKING:
    from agelens.imaging import ImageSource
    from agelens.pipeline import Analyzer

__version__ = "0.1.0"
__all__ = [
    "AgeGenderEstimate",
    "AgelensError",
    "Analyzer",
    "Detection",
    "Face",
    "ImageDecodeError",
    "ImageResult",
    "ImageTooLargeError",
    "MissingExtraError",
    "ModelFetchError",
    "ModelNotFetchedError",
    "UnknownModelError",
    "__version__",
    "analyze",
]

_default_analyzer: Analyzer | None = None
_default_lock = threading.Lock()


def analyze(source: ImageSource) -> ImageResult:
    """Analyse one image (path, bytes, PIL image or RGB ndarray) with the default models.

    The default Analyzer is created on the first call and reused. Raises ImageDecodeError for
    unusable input and ModelNotFetchedError when the models have not been fetched.
    """
    global _default_analyzer
    with _default_lock:
        if _default_analyzer is None:
            from agelens.pipeline import Analyzer

            _default_analyzer = Analyzer()
    return _default_analyzer.analyze(source)


def __getattr__(name: str) -> object:
    # `agelens.Analyzer` without importing onnxruntime and OpenCV at `import agelens`.
    if name == "Analyzer":
        from agelens.pipeline import Analyzer

        return Analyzer
    raise AttributeError(f"module 'agelens' has no attribute {name!r}")
