"""Request and response schemas of the REST API (`/v1`) and the TF-container compatible `/predict`.

The `/v1` response fields are exactly `ImageResult.to_dict()` (the same JSON as
`agelens analyze --json`), plus `image_jpeg_base64` when an annotated image was asked for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class FaceOut(BaseModel):
    """One face. Boxes and keypoints are pixels of the upright (EXIF-oriented) image."""

    box_xyxy: list[float] = Field(description="x1, y1, x2, y2 in pixels")
    detection_score: float = Field(ge=0, le=1)
    keypoints: list[list[float]] = Field(
        description="six (x, y) points: eyes, nose tip, mouth centre, ears"
    )
    age_years: float = Field(ge=0)
    age_interval: list[float] = Field(
        description="low, high: meant to hold the true age 80% of the time"
    )
    gender: Literal["F", "M"]
    gender_probability: float = Field(ge=0.5, le=1, description="probability of `gender`")


class ImageResultOut(BaseModel):
    """Every face of one image; `faces` is empty when there is none."""

    source: str | None = None
    image_wh: list[int] = Field(description="width, height in pixels after EXIF orientation")
    faces: list[FaceOut]
    timings_ms: dict[str, float]
    models: dict[str, str]
    image_jpeg_base64: str | None = Field(
        default=None, description="the annotated image, when `return_image` was true"
    )


class ErrorDetail(BaseModel):
    """A stable machine-readable `code` and a message for people."""

    code: str
    message: str


class ErrorOut(BaseModel):
    """The one error shape of every endpoint."""

    error: ErrorDetail


class AnalyzeOptions(BaseModel):
    """Options of `/v1/analyze` (JSON fields, form fields or query parameters)."""

    model_config = ConfigDict(extra="forbid")

    detector: str | None = Field(default=None, description="default: the server's detector")
    estimator: str | None = Field(default=None, description="default: the server's estimator")
    min_face: float = Field(default=0.0, ge=0, description="smallest face side in pixels")
    max_faces: int | None = Field(default=None, ge=1, description="keep the best N faces")
    return_image: bool = Field(default=False, description="add the annotated JPEG as base64")


class AnalyzeJson(AnalyzeOptions):
    """`/v1/analyze` with a JSON body: exactly one of `image_base64` and `image_url`."""

    image_base64: str | None = Field(default=None, description="the encoded image file, base64")
    image_url: str | None = Field(default=None, description="an http(s) URL on the public internet")


class BatchImageIn(BaseModel):
    """One image of a JSON batch."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str | None = None
    image_url: str | None = None


class BatchJson(AnalyzeOptions):
    """`/v1/analyze/batch` with a JSON body."""

    images: list[BatchImageIn]


class BatchItemOut(BaseModel):
    """The result or the error of one image of a batch, in request order."""

    index: int
    result: ImageResultOut | None = None
    error: ErrorDetail | None = None


class BatchOut(BaseModel):
    """One item per image, in the order they were sent."""

    results: list[BatchItemOut]


class ModelOut(BaseModel):
    """A registered model and whether it is fetched and loaded."""

    name: str
    task: str
    source: str
    license: str
    fetched: bool


class ModelsOut(BaseModel):
    """What the server can run and what it runs by default."""

    default_detector: str
    default_estimator: str
    detectors: list[str]
    estimators: list[str]
    loaded: dict[str, list[str]]
    models: list[ModelOut]


class PredictIn(BaseModel):
    """The Dockerised TF container's request: an image as `url` or `b64`, and its options.

    Its documented template sends both fields with one left empty (`"b64": ""`): an empty
    string counts as absent.
    """

    confidence: float = Field(
        default=0.5, ge=0, le=1, description="minimum detection score (the detector's own: 0.5)"
    )
    nms: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="IoU above which overlapping detections are merged into one face",
    )
    draw: bool = Field(default=False, description="draw the boxes on the returned image")
    face_detector: Literal["fast", "accurate"] = "accurate"
    get_attributes: bool = True
    return_image: bool = Field(
        default=False, description="return the image at all (false for production)"
    )
    url: str | None = None
    b64: str | None = None

    @field_validator("url", "b64", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class PredictOut(BaseModel):
    """The container's response. Each face is `[x1, y1, x2, y2, w, h, confidence, age,
    gender]`: integer pixels, a float score, an integer age (None without attributes)."""

    faces: list[list[int | float | str | None]]
    image_size: list[int] = Field(description="width, height")
    confidence: float = Field(description="the minimum detection score applied")
    inference_time: float = Field(description="milliseconds")
    image: str | None = Field(
        default=None, description="JPEG, base64, when `return_image` (boxes drawn when `draw`)"
    )


class LambdaImageIn(BaseModel):
    """The AWS Lambda system's request: the image file as base64 (a data URL is fine)."""

    image: str = Field(min_length=1, description="the encoded image file, base64")


class LambdaResultOut(BaseModel):
    """The AWS Lambda system's answer: the annotated image as base64 PNG, and the faces."""

    output_results_data: str = Field(
        serialization_alias="outputResultsData",
        description="the image with boxes and labels drawn, PNG, base64",
    )
    faces: list[FaceOut]


class JobOptions(BaseModel):
    """Options of a job (JSON fields, form fields or query parameters)."""

    model_config = ConfigDict(extra="forbid")

    detector: str | None = Field(default=None, description="default: the server's detector")
    estimator: str | None = Field(default=None, description="default: the server's estimator")
    min_face: float = Field(default=0.0, ge=0, description="smallest face side in pixels")
    max_faces: int | None = Field(default=None, ge=1, description="keep the best N faces")


class VideoJobOptions(JobOptions):
    """Options of a video job: those of every job, plus how often to detect and estimate."""

    detect_every: int = Field(default=1, ge=1, le=30, description="detect on every k-th frame")
    estimate_every: int = Field(
        default=10, ge=1, le=300, description="estimate a person at most every n frames"
    )


class JobJson(JobOptions):
    """`POST /v1/jobs` with a JSON body: the images' URLs (http(s), on the public internet)."""

    urls: list[str] = Field(min_length=1, description="image URLs, analysed in this order")


class JobLinks(BaseModel):
    """Where the job and its outputs are."""

    self: str
    results_jsonl: str
    results_parquet: str
    report: str
    people_jsonl: str | None = Field(default=None, description="video jobs: one row a person")
    people_parquet: str | None = None
    video: str | None = Field(default=None, description="video jobs: the annotated MP4")


class JobOut(BaseModel):
    """A job's state. Counts are of images analysed so far (faces: of faces found). A video
    job counts frames instead of images (`images_total`, `images_done`) and people (`faces`),
    and its results are its track rows (`agelens video`'s)."""

    id: str
    status: Literal["queued", "running", "done", "failed", "expired"]
    source: Literal["urls", "zip", "video"]
    progress: float = Field(ge=0, le=1, description="share of the images (frames) analysed")
    images_total: int
    images_done: int
    images_without_faces: int
    errors: int = Field(description="images that could not be fetched, read or decoded")
    faces: int
    detector: str
    estimator: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(
        default=None, description="when the results are deleted (set when the job ends)"
    )
    message: str | None = Field(default=None, description="why the job failed")
    links: JobLinks
