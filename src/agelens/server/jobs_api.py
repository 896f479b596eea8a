"""The `/v1/jobs` routes. The app includes this router and keeps the JobManager in
`app.state.jobs`; authentication and rate limits are the same as every other /v1 route."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response

from agelens.rows import COLUMN_NAMES, rows_to_table
from agelens.server.errors import InvalidRequestError, UnsupportedMediaTypeError, validated
from agelens.server.jobs import JobManager
from agelens.server.jobstore import JobRecord
from agelens.server.schemas import ErrorOut, JobJson, JobLinks, JobOptions, JobOut
from agelens.server.security import authenticate, parse_multipart

ZIP_MEDIA_TYPES = frozenset(
    {"application/zip", "application/x-zip-compressed", "application/octet-stream"}
)
#: the report is self-contained: its inline style and inline SVG, nothing else
REPORT_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses={s: {"model": ErrorOut} for s in (400, 401, 404, 410, 413, 415, 429, 503)},
)


def _manager(request: Request) -> JobManager:
    manager: JobManager = request.app.state.jobs
    return manager


Manager = Annotated[JobManager, Depends(_manager)]


def _owner(request: Request, manager: Manager) -> str | None:
    """Check the key and the rate limit; the owner recorded on jobs (None without keys: then
    a job id is all it takes to read a job, and ids are random 128-bit values)."""
    identity = authenticate(request, manager.key_digests)
    manager.limiter.check(identity)
    return identity if manager.key_digests else None


Owner = Annotated[str | None, Depends(_owner)]


def _iso(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


def job_out(job: JobRecord) -> JobOut:
    """The API's view of a stored job."""
    base = f"/v1/jobs/{job.id}"
    created = _iso(job.created_at)
    assert created is not None
    return JobOut(
        id=job.id,
        status=job.status,
        source=job.source,
        progress=job.images_done / job.images_total if job.images_total else 1.0,
        images_total=job.images_total,
        images_done=job.images_done,
        images_without_faces=job.images_without_faces,
        errors=job.errors,
        faces=job.faces,
        detector=str(job.options.get("detector")),
        estimator=str(job.options.get("estimator")),
        created_at=created,
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        expires_at=_iso(job.expires_at),
        message=job.message,
        links=JobLinks(
            self=base,
            results_jsonl=f"{base}/results?format=jsonl",
            results_parquet=f"{base}/results?format=parquet",
            report=f"{base}/report",
        ),
    )


_CREATE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobJson.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **{
                            name: {"type": "string"}
                            for name in ("detector", "estimator", "min_face", "max_faces")
                        },
                    },
                    "required": ["file"],
                }
            },
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("", status_code=202, response_model=JobOut, openapi_extra=_CREATE_DOC)
async def create_job(
    request: Request, response: Response, manager: Manager, owner: Owner
) -> JobOut:
    """Queue a job: a JSON body `{"urls": [...]}`, a zip of images (multipart field `file`, or
    the zip itself as `application/zip`). Options (detector, estimator, min_face, max_faces)
    come as JSON fields, form fields or query parameters. Answers 202 with the job and its
    `Location`; poll it until `status` is `done`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = dict(request.query_params)
    body = await request.body()
    if media_type == "application/json":
        given = validated(JobJson, body)
        options = _options(
            manager, {**query, **given.model_dump(exclude={"urls"}, exclude_unset=True)}
        )
        job = await manager.submit_urls(owner, given.urls, options)
    elif media_type == "multipart/form-data":
        fields, files = parse_multipart(body, request.headers["content-type"], max_parts=16)
        uploads = [f for f in files if f.field_name == "file"] or files
        if len(uploads) != 1:
            raise InvalidRequestError("send one zip file in the form field `file`")
        options = _options(manager, {**query, **fields})
        job = await manager.submit_zip(owner, uploads[0].data, options)
    elif media_type in ZIP_MEDIA_TYPES:
        job = await manager.submit_zip(owner, body, _options(manager, query))
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {media_type or '(none)'}; send application/json with "
            "`urls`, or a zip (multipart/form-data field `file`, or application/zip)"
        )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job)


def _options(manager: JobManager, values: dict[str, Any]) -> Any:
    given = validated(JobOptions, values)
    return manager.analysis_options(
        given.detector, given.estimator, given.min_face, given.max_faces
    )


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, manager: Manager, owner: Owner) -> JobOut:
    """The job's status, progress and counts."""
    return job_out(await manager.get(owner, job_id))


@router.get(
    "/{job_id}/results",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/x-ndjson": {},
                "application/vnd.apache.parquet": {},
            },
            "description": "the rows of agelens.rows, one per face / face-less / failed image",
        }
    },
)
async def job_results(
    job_id: str,
    manager: Manager,
    owner: Owner,
    format: Annotated[Literal["jsonl", "parquet"], Query()] = "jsonl",
) -> Response:
    """The result rows committed so far (all of them once the job is `done`), as JSON lines
    or Parquet. 410 once the results have expired."""
    job, rows = await manager.result_rows(owner, job_id)
    headers: dict[str, str] = {"X-Job-Status": job.status}
    if format == "parquet":
        data = await anyio.to_thread.run_sync(_parquet_bytes, rows)
        headers["Content-Disposition"] = f'attachment; filename="job-{job.id}.parquet"'
        return Response(data, media_type="application/vnd.apache.parquet", headers=headers)
    text = "".join(
        json.dumps({k: row.get(k) for k in COLUMN_NAMES}, ensure_ascii=False) + "\n" for row in rows
    )
    headers["Content-Disposition"] = f'attachment; filename="job-{job.id}.jsonl"'
    return Response(text, media_type="application/x-ndjson", headers=headers)


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(rows_to_table(rows), buffer)
    return buffer.getvalue()


@router.get("/{job_id}/report", response_class=Response)
async def job_report(job_id: str, manager: Manager, owner: Owner) -> Response:
    """The self-contained HTML report of `agelens report` on the job's rows (so far)."""
    job, rows = await manager.result_rows(owner, job_id)

    def render() -> str:
        from agelens.report.batch_html import render_batch_html

        status = (
            ""
            if job.status == "done"
            else f" ({job.status}: {job.images_done} of {job.images_total} images so far)"
        )
        return render_batch_html(
            rows_to_table(rows), source=f"job {job.id}", title=f"agelens job {job.id}{status}"
        )

    page = await anyio.to_thread.run_sync(render)
    return Response(page, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)


@router.delete("/{job_id}", status_code=204, response_class=Response)
async def delete_job(job_id: str, manager: Manager, owner: Owner) -> Response:
    """Delete the job, its results and its uploaded images (a running job stops)."""
    await manager.delete(owner, job_id)
    return Response(status_code=204)
