"""`/v1/analyze` and `/v1/analyze/batch`: every face of one image, or of several images in
one request (each image's result or error on its own)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request

from agelens.errors import AgelensError
from agelens.server.deps import Authorized, ServiceDep
from agelens.server.errors import InvalidRequestError, UnsupportedMediaTypeError, validated
from agelens.server.schemas import (
    AnalyzeJson,
    AnalyzeOptions,
    BatchItemOut,
    BatchJson,
    BatchOut,
    ErrorDetail,
    ImageResultOut,
)
from agelens.server.security import parse_multipart
from agelens.server.service import Service, _image_from_json

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["analyze"])

_IMAGE_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "detector": {"type": "string"},
                        "estimator": {"type": "string"},
                        "min_face": {"type": "number"},
                        "max_faces": {"type": "integer"},
                        "return_image": {"type": "boolean"},
                    },
                    "required": ["image"],
                }
            },
            "application/json": {"schema": AnalyzeJson.model_json_schema()},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_BATCH_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                    },
                    "required": ["images"],
                }
            },
            "application/json": {"schema": BatchJson.model_json_schema()},
        },
    }
}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@router.post(
    "/v1/analyze",
    response_model=ImageResultOut,
    response_model_exclude_none=True,
    openapi_extra=_IMAGE_BODY_DOC,
)
async def analyze(request: Request, service: ServiceDep, _key: Authorized) -> dict[str, Any]:
    """Every face of one image: a multipart upload (field `image`), a JSON body with
    `image_base64` or `image_url`, or the raw image bytes (`Content-Type: image/...`).
    Options come as JSON fields, form fields or query parameters."""
    media_type = _media_type(request)
    query = dict(request.query_params)
    body = await request.body()
    if media_type == "multipart/form-data":
        fields, files = parse_multipart(body, request.headers["content-type"])
        uploads = [f for f in files if f.field_name == "image"] or files
        if len(uploads) != 1:
            raise InvalidRequestError("send one file in the form field `image`")
        given = validated(AnalyzeOptions, {**query, **fields})
        data, label = uploads[0].data, uploads[0].filename or "<upload>"
    elif media_type == "application/json":
        request_json = validated(AnalyzeJson, body)
        given = validated(
            AnalyzeOptions,
            {
                **query,
                **request_json.model_dump(
                    exclude={"image_base64", "image_url"}, exclude_unset=True
                ),
            },
        )
        data, label = await _image_from_json(
            service, request_json.image_base64, request_json.image_url
        )
    elif media_type.startswith("image/") or media_type == "application/octet-stream":
        given = validated(AnalyzeOptions, query)
        data, label = body, "<upload>"
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {media_type or '(none)'}; send multipart/form-data, "
            "application/json or the image itself (image/jpeg, image/png, ...)"
        )
    return await service.analyze(
        data, label, service.options(given), return_image=given.return_image
    )


@router.post(
    "/v1/analyze/batch",
    response_model=BatchOut,
    response_model_exclude_none=True,
    openapi_extra=_BATCH_BODY_DOC,
)
async def analyze_batch(request: Request, service: ServiceDep, _key: Authorized) -> BatchOut:
    """Several images in one request: multipart files (field `images`) or JSON
    `{"images": [{"image_base64"|"image_url": ...}, ...]}`. One result or one error per
    image, in request order; one bad image does not fail the others."""
    media_type = _media_type(request)
    query = dict(request.query_params)
    body = await request.body()
    sources: list[Callable[[], Awaitable[tuple[bytes, str]]]] = []
    if media_type == "multipart/form-data":
        fields, files = parse_multipart(
            body,
            request.headers["content-type"],
            max_parts=service.settings.max_batch_images + 8,
        )
        given = validated(AnalyzeOptions, {**query, **fields})
        for upload in files:
            sources.append(_constant_source(upload.data, upload.filename or "<upload>"))
    elif media_type == "application/json":
        batch = validated(BatchJson, body)
        given = validated(
            AnalyzeOptions,
            {**query, **batch.model_dump(exclude={"images"}, exclude_unset=True)},
        )
        for item in batch.images:
            sources.append(_json_source(service, item.image_base64, item.image_url))
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {media_type or '(none)'}; send multipart/form-data "
            "or application/json"
        )
    if not sources:
        raise InvalidRequestError("the batch holds no image")
    if len(sources) > service.settings.max_batch_images:
        raise InvalidRequestError(
            f"{len(sources)} images in one batch, over the limit of "
            f"{service.settings.max_batch_images}"
        )
    options = service.options(given)

    async def one(index: int, source: Callable[[], Awaitable[tuple[bytes, str]]]) -> BatchItemOut:
        try:
            data, label = await source()
            result = await service.analyze(data, label, options, return_image=given.return_image)
        except AgelensError as error:
            service.metrics.errors.labels(error.code).inc()
            return BatchItemOut(index=index, error=ErrorDetail(code=error.code, message=str(error)))
        except Exception:  # one image's failure never fails the batch
            logger.exception("unexpected error on image %d of a batch", index)
            service.metrics.errors.labels("internal_error").inc()
            return BatchItemOut(
                index=index,
                error=ErrorDetail(
                    code="internal_error",
                    message="an unexpected error happened; it has been logged",
                ),
            )
        return BatchItemOut(index=index, result=ImageResultOut.model_validate(result))

    items = await asyncio.gather(*(one(i, s) for i, s in enumerate(sources)))
    return BatchOut(results=list(items))


def _constant_source(data: bytes, label: str) -> Callable[[], Awaitable[tuple[bytes, str]]]:
    async def source() -> tuple[bytes, str]:
        return data, label

    return source


def _json_source(
    service: Service, image_base64: str | None, image_url: str | None
) -> Callable[[], Awaitable[tuple[bytes, str]]]:
    async def source() -> tuple[bytes, str]:
        return await _image_from_json(service, image_base64, image_url)

    return source
