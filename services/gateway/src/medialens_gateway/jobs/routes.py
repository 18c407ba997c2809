"""`/v1/jobs`: submit, read, list, cancel, result, live events (SSE), and webhook deliveries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field
from sqlalchemy import RowMapping
from starlette.types import Receive, Scope, Send

from medialens_gateway.deps import (
    AppSettings,
    Caller,
    CurrentTenant,
    Databases,
    DbSession,
    Events,
    Files,
    Mongo,
    Signals,
)
from medialens_gateway.envelope import ok
from medialens_gateway.jobs import deliveries, service
from medialens_gateway.jobs.callbacks import check_callback_url
from medialens_gateway.jobs.schemas import JobRequest
from medialens_gateway.openapi import LOCATION, DeliveryObject, Envelope, JobObject, Page, Result, errors
from medialens_gateway.pagination import Cursor, Limit, deliveries_of, next_cursor
from medialens_shared import jobstore
from medialens_shared.contracts import JOB_TYPES, JobStatus
from medialens_shared.envelope import iso
from medialens_shared.errors import JobNotFinished, RequestValidationFailed

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(401, 404, 422, 500))

#: Seconds of silence after which an SSE stream sends a comment and re-reads the job.
KEEP_ALIVE_S = 10.0

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]

#: A `?label=` filter: its form documented, and checked in `list_jobs` with a message of its own (a pattern
#: given to validation would answer with a bare pattern error).
LabelFilter = Annotated[str, Field(json_schema_extra={"pattern": "^[^:]+:"})]

#: The largest submission body: a job's params and labels are small (a data.query's SQL the longest), and a
#: body is read whole before it is validated, so a bound keeps one request from taking the process's memory.
#: `HotPaths` holds every submission to it (413 PAYLOAD_TOO_LARGE), before FastAPI reads a byte: FastAPI's
#: own `max_body_size` answers in plain text, not the envelope.
JOB_BODY_MAX_BYTES = 1024 * 1024


@router.post(
    "",
    status_code=202,
    summary="Submit a job",
    response_model=Envelope[JobObject],
    responses={
        202: {"headers": LOCATION},
        200: {
            "description": "An earlier submission with this Idempotency-Key",
            "model": Envelope[JobObject],
            "headers": LOCATION,
        },
        **errors(409, 413, 415),
    },
)
async def submit_job(
    body: JobRequest, caller: Caller, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    settings = caller.settings
    if body.callback_url is not None:
        await check_callback_url(
            body.callback_url,
            allow_http=settings.gateway.callback_allow_http,
            allow_private=settings.gateway.callback_allow_private,
        )
    submitted = await service.submit(
        caller.db,
        caller.signals,
        tenant_id=caller.tenant.id,
        body=body,
        idempotency_key=idempotency_key,
        ttl_s=settings.gateway.idempotency_ttl_s,
    )
    job = submitted.job
    return ok(
        job,
        status_code=202 if submitted.created else 200,
        headers={"Location": f"/v1/jobs/{job['id']}"},
        message="" if submitted.created else "an earlier submission with this Idempotency-Key",
    )


@router.get("", summary="List the tenant's jobs, newest first", response_model=Envelope[Page[JobObject]])
async def list_jobs(
    caller: Caller,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[
        list[JobStatus] | None, Query(description="A status; repeat for jobs in any of several.")
    ] = None,
    type: Annotated[  # noqa: A002
        list[Annotated[str, Field(json_schema_extra={"enum": list(JOB_TYPES)})]] | None,
        Query(description="A job type, e.g. `video.probe`; repeat for jobs of any of several."),
    ] = None,
    label: Annotated[
        list[LabelFilter] | None, Query(description="`key:value`; repeat to require several.")
    ] = None,
) -> JSONResponse:
    # `status` and `type` repeated select jobs of any of the values (`?status=queued&status=running`: the
    # jobs not yet finished); a `label` repeated requires each. (A repeated filter kept its last value
    # alone: `?status=succeeded&status=queued` listed the queued jobs, silently.) A comment, not a
    # docstring: FastAPI would publish a docstring as the operation's description.
    for name in type or []:
        if name not in JOB_TYPES:
            message = f"type filter {name!r} is no job type; /v1/job-types lists them."
            raise RequestValidationFailed(
                message, details=[{"loc": ["query", "type"], "msg": message, "type": "value_error"}]
            )
    labels: list[tuple[str, str]] = []
    for item in label or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise RequestValidationFailed(
                f"label filter {item!r} is not of the form key:value.",
                details=[{"loc": ["query", "label"], "msg": "expected key:value", "type": "value_error"}],
            )
        labels.append((key, value))
    rows = await service.list_jobs(
        caller.db,
        tenant_id=caller.tenant.id,
        limit=limit,
        cursor=cursor,
        statuses=sorted(set(status or ())),
        types=sorted(set(type or ())),
        labels=labels,
    )
    live = await service.lives(caller.signals, rows[:limit])
    items = [
        jobstore.job_view(row, children=row["children"] or (), live=live.get(row["id"]))
        for row in rows[:limit]
    ]
    return ok({"items": items, "next_cursor": next_cursor(rows, limit=limit, listing="jobs")})


@router.get("/{job_id}", summary="The job object", response_model=Envelope[JobObject])
async def get_job(job_id: str, caller: Caller) -> JSONResponse:
    return ok(await service.read(caller.db, caller.signals, tenant_id=caller.tenant.id, job_id=job_id))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    summary="Cancel a job",
    response_model=Envelope[JobObject],
    responses=errors(409),
)
async def cancel_job(
    job_id: str, tenant: CurrentTenant, session: DbSession, signals: Signals, store: Files
) -> JSONResponse:
    job = await service.cancel(session, signals, store=store, tenant_id=tenant.id, job_id=job_id)
    view = await service.view(session, signals, job)
    note = "cancelled" if view["status"] == JobStatus.CANCELLED else "asked to stop at its next checkpoint"
    return ok(view, status_code=202, message=note)


@router.get(
    "/{job_id}/result",
    summary="The result of a succeeded job",
    response_model=Envelope[Result],
    responses=errors(409),
)
async def get_result(job_id: str, tenant: CurrentTenant, session: DbSession, mongo: Mongo) -> JSONResponse:
    job = await service.get_job(session, tenant_id=tenant.id, job_id=job_id)
    if job["status"] != JobStatus.SUCCEEDED:
        raise JobNotFinished(_no_result(job))
    unreadable = JobNotFinished(f"Job {job_id} succeeded but its result is not readable yet; retry shortly.")
    if JOB_TYPES[job["type"]].children:
        composite = await service.composite_result(session, mongo["results"], job=job)
        if composite is None:
            raise unreadable
        return ok(composite | {"created_at": iso(composite["created_at"])})
    document = await mongo["results"].find_one({"_id": job_id})
    if document is None:
        raise unreadable
    return ok(service.part_view(document))


@router.get(
    "/{job_id}/events",
    summary="Live progress as Server-Sent Events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job_id: str,
    tenant: CurrentTenant,
    session: DbSession,
    signals: Signals,
    events: Events,
    db: Databases,
    settings: AppSettings,
) -> StreamingResponse:
    await service.get_job(session, tenant_id=tenant.id, job_id=job_id)  # 404 before the stream starts
    await session.close()  # a stream can last long; it must not hold a pooled connection meanwhile
    release = events.hold_stream(tenant.id, limit=settings.gateway.event_streams_per_tenant)  # or 429

    async def fresh() -> dict[str, Any]:
        async with db.session() as s:
            return await service.view(
                s, signals, await service.get_job(s, tenant_id=tenant.id, job_id=job_id)
            )

    async def stream() -> AsyncIterator[str]:
        async with events.listen(job_id) as queue:
            current = await fresh()  # read after subscribing, so no change falls between the two
            last: dict[str, Any] | None = None
            while not JobStatus(current["status"]).terminal:
                if current != last:
                    yield _sse("progress", current)
                    last = current
                try:
                    current = await asyncio.wait_for(queue.get(), timeout=KEEP_ALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    current = await fresh()  # pub/sub may drop a message; the row never lies
            yield _sse("done", current)

    return _HeldStream(
        stream(),
        release=release,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _HeldStream(StreamingResponse):
    """A stream that gives its tenant's slot back (`EventHub.hold_stream`) however it ends: done, failed,
    or left by its client, even before its body started (when the body's own `finally` never runs)."""

    def __init__(self, content: AsyncIterator[str], *, release: Callable[[], None], **options: Any) -> None:
        super().__init__(content, **options)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@router.get(
    "/{job_id}/deliveries",
    summary="The job's webhook deliveries, oldest first",
    response_model=Envelope[Page[DeliveryObject]],
)
async def list_deliveries(
    job_id: str, tenant: CurrentTenant, session: DbSession, limit: Limit = 50, cursor: Cursor = None
) -> JSONResponse:
    await service.get_job(session, tenant_id=tenant.id, job_id=job_id)
    rows = await deliveries.list_deliveries(
        session, tenant_id=tenant.id, job_id=job_id, limit=limit, cursor=cursor
    )
    items = [deliveries.delivery_view(row) for row in rows[:limit]]
    return ok({"items": items, "next_cursor": next_cursor(rows, limit=limit, listing=deliveries_of(job_id))})


@router.post(
    "/{job_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Send a delivery's payload again, as a new delivery",
    response_model=Envelope[DeliveryObject],
)
async def redeliver(job_id: str, delivery_id: str, tenant: CurrentTenant, session: DbSession) -> JSONResponse:
    await service.get_job(session, tenant_id=tenant.id, job_id=job_id)
    row = await deliveries.redeliver(session, tenant_id=tenant.id, job_id=job_id, delivery_id=delivery_id)
    return ok(deliveries.delivery_view(row), status_code=202, message="a new delivery is on its way")


def _no_result(job: RowMapping) -> str:
    """Why a job that has not succeeded has no result: one that may still succeed is waited for, one that
    ended otherwise never will (its failure is in the job object, not in a result to come)."""
    status = job["status"]
    if status == JobStatus.FAILED:
        return (
            f"Job {job['id']} failed ({job['error_code']}): it has no result; the job object's error_message "
            "says why."
        )
    if status == JobStatus.CANCELLED:
        return f"Job {job['id']} was cancelled: it has no result."
    return f"Job {job['id']} is {status}; its result exists once it has succeeded."
