"""Drop-in routes for the systems agelens replaces: `/predict` (the Dockerised TF container),
`/lambda` (the AWS Lambda system's page) and `/healthz`, with their request and response
shapes kept as they were."""

from __future__ import annotations

import base64
import time
from dataclasses import replace

import anyio
from fastapi import APIRouter

from agelens import intake
from agelens.imaging import encode_png
from agelens.render import draw_result
from agelens.server.deps import Authorized, AuthorizedCompat, ServiceDep
from agelens.server.schemas import (
    AnalyzeOptions,
    FaceOut,
    LambdaImageIn,
    LambdaResultOut,
    PredictIn,
    PredictOut,
)
from agelens.server.service import _image_from_json

__all__ = ["PREDICT_DETECTORS", "router"]

router = APIRouter(tags=["compat"])

#: `/predict`'s `face_detector` values. "fast" is the range-switching BlazeFace: it finds the
#: same faces as the tiled full-range model on every photo of ../shared/data/samples
#: (tests/server/test_app_predict.py), where the short-range model alone takes torsos for faces.
PREDICT_DETECTORS = {"fast": "blazeface-fast", "accurate": "blazeface-full"}


@router.post("/predict", response_model=PredictOut, response_model_exclude_none=True)
async def predict(body: PredictIn, service: ServiceDep, _key: AuthorizedCompat) -> PredictOut:
    """Drop-in for the Dockerised TF container: same request and response shapes and types.
    Faces are `[x1, y1, x2, y2, w, h, confidence, age, gender]` (integer pixels and age,
    gender "M" or "F"); `confidence` and `nms` are the detector's own thresholds."""
    start = time.perf_counter()
    data, label = await _image_from_json(service, body.b64, body.url, names=("b64", "url"))
    detector = PREDICT_DETECTORS[body.face_detector]
    options = replace(
        service.options(AnalyzeOptions(detector=detector)),
        score_threshold=body.confidence,
        iou_threshold=body.nms,
    )
    # Reduced decoding for a large JPEG unless the image goes back in the response.
    decoded = await service.decode(data, label, None if body.return_image else options)
    image = decoded.image.pixels
    result = await service.infer(options, decoded)
    faces: list[list[int | float | str | None]] = []
    for face in result.faces:
        x1, y1, x2, y2 = (round(v) for v in face.box_xyxy)
        row: list[int | float | str | None] = [x1, y1, x2, y2, x2 - x1, y2 - y1]
        row.append(round(face.detection_score, 4))
        if body.get_attributes:
            row += [round(face.age_years), face.gender]
        else:
            row += [None, None]
        faces.append(row)
    image_b64 = None
    if body.return_image and body.draw:
        image_b64 = await service.annotated_jpeg_base64(image, result)
    elif body.return_image:
        image_b64 = await service.plain_jpeg_base64(image)
    return PredictOut(
        faces=faces,
        image_size=list(result.image_wh),
        confidence=body.confidence,
        inference_time=round((time.perf_counter() - start) * 1000, 2),
        image=image_b64,
    )


@router.post("/lambda", response_model=LambdaResultOut, response_model_by_alias=True)
async def lambda_compat(
    body: LambdaImageIn, service: ServiceDep, _key: Authorized
) -> LambdaResultOut:
    """Drop-in for the AWS Lambda system's page: `{"image": "<base64>"}` in,
    `{"outputResultsData": "<base64 PNG with boxes and labels>"}` out (plus `faces`). The
    Lambda handler routes its direct (non-proxy) events here too."""
    data = intake.decode_base64(body.image)
    decoded = await service.decode(data, "<image>")  # whole: it is drawn on
    image = decoded.image.pixels
    result = await service.infer(service.options(AnalyzeOptions()), decoded)

    def annotated_png() -> str:
        return base64.b64encode(encode_png(draw_result(image, result))).decode()

    png = await anyio.to_thread.run_sync(annotated_png, limiter=service.decode_limiter)
    return LambdaResultOut(
        output_results_data=png,
        faces=[FaceOut.model_validate(face) for face in result.to_dict()["faces"]],
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Seed 003's health check. No authentication."""
    return {"status": "ok"}
