"""The Ray engine of `agelens batch`, kept importable from its old place: it lives in
`agelens.batch.ray`."""

from agelens.batch.ray import AnalyzerActor, iter_image_rows_ray

__all__ = ["AnalyzerActor", "iter_image_rows_ray"]
