"""The service's own routes: `/health` and `/ready` (probes, no authentication), `/v1/models`
(what is registered and loaded) and `/metrics` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from agelens.server.deps import Authorized, ServiceDep
from agelens.server.errors import NotReadyError
from agelens.server.metrics import CONTENT_TYPE_LATEST
from agelens.server.schemas import ErrorOut, ModelOut, ModelsOut

__all__ = ["router"]

router = APIRouter(tags=["service"])


@router.get("/v1/models", response_model=ModelsOut)
async def models(service: ServiceDep, _key: Authorized) -> ModelsOut:
    """The registered detectors and estimators, the defaults, and what is loaded."""
    from agelens.models.backends import DETECTORS, estimator_names
    from agelens.models.fetch import is_fetched
    from agelens.models.registry import MODELS

    return ModelsOut(
        default_detector=service.settings.detector,
        default_estimator=service.settings.estimator,
        detectors=sorted(DETECTORS),
        estimators=estimator_names(),
        loaded=service.pool.loaded(),
        models=[
            ModelOut(
                name=spec.name,
                task=spec.task,
                source=f"{spec.source.registry}:{spec.source.pinned}",
                license=spec.license,
                fetched=is_fetched(spec),
            )
            for spec in MODELS.values()
        ],
    )


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. No authentication."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"model": ErrorOut}})
async def ready(service: ServiceDep) -> dict[str, Any]:
    """Readiness: the default models are loaded. No authentication."""
    if not service.pool.ready:
        raise NotReadyError(service.startup_error or "the models are still loading")
    return {"status": "ready", "loaded": service.pool.loaded()}


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep, _key: Authorized) -> Response:
    """Prometheus metrics (authenticated when keys are configured)."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
