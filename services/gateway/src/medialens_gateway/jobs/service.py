"""Jobs of a tenant: submission (job row, outbox entry and idempotency key in one transaction), reads,
lists and cancellation.

A `202` is only answered once the transaction that holds the job row and its outbox entry has committed:
the relay publishes the entry later, so a job accepted while the broker is down still runs.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import RowMapping, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_gateway.jobs.schemas import JobRequest
from medialens_gateway.pagination import page
from medialens_shared import jobstore, metrics, outbox
from medialens_shared.contracts import JOB_TYPES, FileKind, JobStatus
from medialens_shared.envelope import iso
from medialens_shared.errors import (
    Conflict,
    JobNotCancellable,
    NotFound,
    RequestValidationFailed,
    UnsupportedMediaType,
)
from medialens_shared.signals import JobSignals
from medialens_shared.tables import files, idempotency_keys, jobs
from medialens_shared.tasks import RESULT_WRITES


@dataclass(frozen=True, slots=True)
class Submitted:
    job: RowMapping
    created: bool


def _request_hash(body: JobRequest) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _checked_params(body: JobRequest) -> dict[str, Any]:
    spec = JOB_TYPES.get(body.type)
    if spec is None:
        known = ", ".join(sorted(JOB_TYPES))
        raise RequestValidationFailed(
            f"Unknown job type {body.type!r}; known types: {known} (see /v1/job-types).",
            details=[{"loc": ["body", "type"], "msg": f"unknown job type; one of {known}", "type": "enum"}],
        )
    try:
        params = spec.params.model_validate(body.params)
    except ValidationError as exc:
        details = [
            {"loc": ["body", "params", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors()
        ]
        raise RequestValidationFailed(
            f"params do not fit the schema of {body.type}; see data.details and /v1/job-types.",
            details=details,
        ) from exc
    return params.model_dump(mode="json")


async def _input_file(session: AsyncSession, *, tenant_id: str, body: JobRequest) -> None:
    """The input must be the tenant's, and of a kind the job type takes (checked by content)."""
    query = select(files.c.kind, files.c.filename).where(
        files.c.id == body.file_id, files.c.tenant_id == tenant_id, files.c.deleted_at.is_(None)
    )
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise NotFound(f"No file {body.file_id} for this API key's tenant.")
    accepts = JOB_TYPES[body.type].accepts
    if FileKind(row.kind) not in accepts:
        wanted = " or ".join(sorted(kind.value for kind in accepts))
        raise UnsupportedMediaType(
            f"{body.type} takes a {wanted} file; {row.filename!r} looks like {row.kind} by its content."
        )


async def submit(
    session: AsyncSession, *, tenant_id: str, body: JobRequest, idempotency_key: str | None, ttl_s: int
) -> Submitted:
    params = _checked_params(body)
    await _input_file(session, tenant_id=tenant_id, body=body)
    request_hash = _request_hash(body)
    if idempotency_key:
        await session.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.tenant_id == tenant_id,
                idempotency_keys.c.key == idempotency_key,
                idempotency_keys.c.created_at < func.now() - timedelta(seconds=ttl_s),
            )
        )
    job = await _queue(session, tenant_id=tenant_id, body=body, job_type=body.type, params=params)
    job_id = job["id"]
    for child_type in JOB_TYPES[body.type].children:  # a composite job runs as one child job per part
        child_params = JOB_TYPES[child_type].params().model_dump(mode="json")
        await _queue(
            session, tenant_id=tenant_id, body=body, job_type=child_type, params=child_params, parent=job_id
        )
    if idempotency_key:
        claimed = await session.execute(
            insert(idempotency_keys)
            .values(tenant_id=tenant_id, key=idempotency_key, request_hash=request_hash, job_id=job_id)
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
            .returning(idempotency_keys.c.job_id)
        )
        if claimed.first() is None:  # the key was taken first (perhaps by a concurrent request)
            await session.rollback()
            return await _replay(session, tenant_id=tenant_id, key=idempotency_key, request_hash=request_hash)
    await session.commit()
    metrics.JOBS_SUBMITTED.labels(body.type).inc()
    return Submitted(job=job, created=True)


async def _queue(
    session: AsyncSession,
    *,
    tenant_id: str,
    body: JobRequest,
    job_type: str,
    params: dict[str, Any],
    parent: str | None = None,
) -> RowMapping:
    """Insert a queued job and, unless it is composite, its outbox entry; the new row."""
    row = (
        (
            await session.execute(
                jobs.insert()
                .values(
                    id=str(uuid.uuid4()),
                    tenant_id=tenant_id,
                    type=job_type,
                    status=JobStatus.QUEUED.value,
                    file_id=body.file_id,
                    params=params,
                    labels=body.labels,
                    priority=body.priority,
                    callback_url=None if parent else body.callback_url,
                    parent_id=parent,
                    message="queued",
                )
                .returning(*jobs.c)
            )
        )
        .mappings()
        .one()
    )
    if not JOB_TYPES[job_type].children:
        await outbox.enqueue(session, jobstore.message_of(row))
    return row


async def _replay(session: AsyncSession, *, tenant_id: str, key: str, request_hash: str) -> Submitted:
    query = select(idempotency_keys.c.request_hash, idempotency_keys.c.job_id).where(
        idempotency_keys.c.tenant_id == tenant_id, idempotency_keys.c.key == key
    )
    first = (await session.execute(query)).one()
    if first.request_hash != request_hash:
        raise Conflict(
            "This Idempotency-Key was used with a different body; use a new key for a different job."
        )
    job = await jobstore.get(session, job_id=first.job_id)
    assert job is not None  # the key's row references the job (ON DELETE CASCADE)
    return Submitted(job=job, created=False)


async def get_job(session: AsyncSession, *, tenant_id: str, job_id: str) -> RowMapping:
    job = await jobstore.get(session, job_id=job_id)
    if job is None or job["tenant_id"] != tenant_id:
        raise NotFound(f"No job {job_id} for this API key's tenant.")
    return job


async def view(session: AsyncSession, signals: JobSignals, job: RowMapping) -> dict[str, Any]:
    live = await signals.live(job["id"]) if job["status"] == JobStatus.RUNNING else None
    composite = bool(JOB_TYPES[job["type"]].children)
    children = await jobstore.children_of(session, job_id=job["id"]) if composite else []
    return jobstore.job_view(job, children=children, live=live)


async def list_jobs(
    session: AsyncSession,
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None,
    status: JobStatus | None,
    type_: str | None,
    labels: dict[str, str],
) -> list[RowMapping]:
    query = select(jobs).where(jobs.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(jobs.c.status == status.value)
    if type_ is not None:
        query = query.where(jobs.c.type == type_)
    if labels:
        query = query.where(jobs.c.labels.contains(labels))
    query = page(query, created_at=jobs.c.created_at, item_id=jobs.c.id, limit=limit, cursor=cursor)
    return list((await session.execute(query)).mappings().all())


async def cancel(session: AsyncSession, signals: JobSignals, *, tenant_id: str, job_id: str) -> RowMapping:
    """A queued job is cancelled at once; a running one is asked to stop at its next checkpoint; a
    composite job cancels its parts, and ends cancelled once they have."""
    job = await get_job(session, tenant_id=tenant_id, job_id=job_id)
    if JOB_TYPES[job["type"]].children and not JobStatus(job["status"]).terminal:
        for child in await jobstore.children_of(session, job_id=job_id):
            await cancel_part(session, signals, job_id=child)
        return await get_job(session, tenant_id=tenant_id, job_id=job_id)
    cancelled = await jobstore.transition(
        session,
        job_id=job_id,
        from_statuses=[JobStatus.QUEUED],
        to=JobStatus.CANCELLED,
        message="cancelled before it started",
    )
    if cancelled is not None:
        await session.commit()
        await signals.announce(jobstore.job_view(cancelled))
        return cancelled
    await session.rollback()
    job = await get_job(session, tenant_id=tenant_id, job_id=job_id)
    if JobStatus(job["status"]).terminal:
        raise JobNotCancellable(f"Job {job_id} has already finished ({job['status']}); nothing to cancel.")
    await signals.request_cancel(job_id)
    return job


async def cancel_part(session: AsyncSession, signals: JobSignals, *, job_id: str) -> None:
    """Cancel one part of a composite job: at once if queued, at its next checkpoint if running."""
    cancelled = await jobstore.transition(
        session, job_id=job_id, from_statuses=[JobStatus.QUEUED], to=JobStatus.CANCELLED, message="cancelled"
    )
    await session.commit()
    if cancelled is not None:
        await signals.announce(jobstore.job_view(cancelled))
    else:
        await signals.request_cancel(job_id)


async def composite_result(session: AsyncSession, results: Any, *, job: RowMapping) -> dict[str, Any]:
    """A composite job's result: its parts' results under their type names (None for a part that did not
    apply to the input)."""
    query = select(jobs.c.id, jobs.c.type).where(jobs.c.parent_id == job["id"])
    parts = (await session.execute(query)).all()
    documents = {doc["_id"]: doc async for doc in results.find({"_id": {"$in": [part.id for part in parts]}})}
    gathered: dict[str, Any] = {
        "job_id": job["id"],
        "type": job["type"],
        "input_file_id": job["file_id"],
        "created_at": job["finished_at"],
    }
    for part in parts:
        document = documents.get(part.id)
        gathered[part.type] = None if document is None else part_view(document)
    return gathered


def part_view(document: dict[str, Any]) -> dict[str, Any]:
    """A result document as the API shows it (without its storage keys)."""
    hidden = {"_id", "tenant_id", RESULT_WRITES}
    view = {key: value for key, value in document.items() if key not in hidden}
    if view.get("created_at") is not None:
        view["created_at"] = iso(view["created_at"])
    return view
