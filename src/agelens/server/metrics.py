"""Prometheus metrics of one app instance (its own registry, so several apps can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """Requests, latency, faces, errors by code, queue depth and batch sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "agelens_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agelens_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.faces = Counter("agelens_faces", "Faces found.", registry=self.registry)
        self.images = Counter("agelens_images", "Images analysed.", registry=self.registry)
        self.errors = Counter(
            "agelens_errors", "Error responses by code.", ["code"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "agelens_queue_depth", "Images waiting for inference.", registry=self.registry
        )
        self.batch_images = Histogram(
            "agelens_batch_images",
            "Images per shared inference run.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
