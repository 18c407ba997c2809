"""Jobs of a tenant: submission (job row, outbox entry and idempotency key in one transaction), reads,
lists and cancellation.

A `202` is only answered once the job row and its outbox entry have committed together: the relay
publishes the entry later, so a job accepted while the broker is down still runs.

The two busiest calls, reading a job and submitting a plain one, are each one SQL statement on a bare
connection (`DatabaseManager.connection`): a session's unit of work, BEGIN and COMMIT round trips and
result machinery were most of their cost. A submission with an Idempotency-Key, or of a composite job,
takes the session and its transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from pydantic import ValidationError
from pydantic_core import to_json
from redis.exceptions import RedisError
from sqlalchemy import RowMapping, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_gateway import pagination
from medialens_gateway.jobs.schemas import JobRequest
from medialens_shared import jobstore, metrics, outbox
from medialens_shared.contracts import JOB_TYPES, FileKind, JobMessage, JobStatus
from medialens_shared.db import DatabaseManager
from medialens_shared.envelope import iso
from medialens_shared.errors import (
    Conflict,
    JobNotCancellable,
    NotFound,
    RequestValidationFailed,
    UnsupportedMediaType,
)
from medialens_shared.filestore import FileStore, mark_deleted
from medialens_shared.signals import JobSignals
from medialens_shared.tables import files, idempotency_keys, jobs
from medialens_shared.tasks import RESULT_WRITES
from medialens_shared.telemetry import context_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    #: The job object of API.md.
    job: dict[str, Any]
    created: bool


def _request_hashes(body: JobRequest, params: dict[str, Any]) -> tuple[str, ...]:
    """What an Idempotency-Key's body is known by: the first is stored, any of them is a replay.

    The body as checked, its params with their defaults spelled out (as the job object shows them): a
    replay that spells out a default, or leaves one out, is the same job (it was a 409, while a spelled-out
    `priority` was not). Then the hash of the body as sent, which keys stored by an earlier release (within
    their TTL) hold.
    """
    dumped = body.model_dump(mode="json")
    return tuple(
        hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        for canonical in ({**dumped, "params": params}, dumped)
    )


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


async def _input_file(db: DatabaseManager, *, tenant_id: str, body: JobRequest) -> None:
    """The input must be the tenant's, and of a kind the job type takes (checked by content)."""
    async with db.connection() as conn:
        row = await conn.fetchrow(_INPUT_FILE, body.file_id, tenant_id)
    _check_input(body, None if row is None else (row["kind"], row["filename"], row["size_bytes"]))


def _check_input(body: JobRequest, found: tuple[str, str, int] | None) -> None:
    """404 when the input file is not the tenant's; 415 when its kind is not one the job type takes."""
    if found is None:
        raise NotFound(f"No file {body.file_id} for this API key's tenant.")
    kind, filename, size_bytes = found
    accepts = JOB_TYPES[body.type].accepts
    if FileKind(kind) not in accepts:
        wanted = " or ".join(_KIND_NAMES[accepted] for accepted in sorted(accepts))
        found_to_be = (
            f"{filename!r} is empty (0 bytes)"
            if size_bytes == 0
            else f"by its content, {filename!r} is {_KIND_NAMES[FileKind(kind)]}"
        )
        raise UnsupportedMediaType(f"{body.type} takes {wanted}; {found_to_be}.")


#: How a message names each kind of file.
_KIND_NAMES = {
    FileKind.VIDEO: "a video",
    FileKind.AUDIO: "audio",
    FileKind.TABLE: "a table (CSV, JSON lines or Parquet)",
    FileKind.UNKNOWN: "none of these (not a video, audio or a table this service reads)",
}


#: The job types made of parts (child jobs), whose job objects list them.
COMPOSITE_TYPES = [name for name, spec in JOB_TYPES.items() if spec.children]

#: The file kinds each job type takes, as the text array `_QUEUE_ONE` compares with.
_ACCEPTS = {name: sorted(kind.value for kind in spec.accepts) for name, spec in JOB_TYPES.items()}

_INPUT_FILE = (
    "SELECT kind, filename, size_bytes FROM files WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL"
)

#: The input file's check, the queued job and its outbox entry in one statement, so the job and the entry
#: commit together without a transaction. No row: no such file; a row without a job: a file of a kind the
#: type does not take (its kind and filename say which).
_QUEUE_ONE = """
WITH input AS (
    SELECT kind, filename, size_bytes FROM files WHERE id = $5 AND tenant_id = $2 AND deleted_at IS NULL
), job AS (
    INSERT INTO jobs (id, tenant_id, type, status, file_id, params, labels, priority, callback_url, message)
    SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::jsonb, $7::jsonb, $8::smallint, $9::text,
           'queued'
    FROM input WHERE input.kind = ANY($12::text[])
    RETURNING *
), entry AS (
    INSERT INTO outbox (job_id, routing_key, payload, headers)
    SELECT id, type, $10::jsonb, $11::jsonb FROM job
)
SELECT input.kind AS input_kind, input.filename AS input_filename, input.size_bytes AS input_size, job.*
FROM input LEFT JOIN job ON true
"""


async def submit(
    db: DatabaseManager,
    signals: JobSignals,
    *,
    tenant_id: str,
    body: JobRequest,
    idempotency_key: str | None,
    ttl_s: int,
) -> Submitted:
    params = _checked_params(body)
    if idempotency_key or JOB_TYPES[body.type].children:
        async with db.session() as session:
            if idempotency_key:  # a replay answers with the first job, even if its input was deleted since
                earlier = await _replay(
                    session,
                    tenant_id=tenant_id,
                    key=idempotency_key,
                    request_hashes=_request_hashes(body, params),
                    ttl_s=ttl_s,
                )
                if earlier is not None:
                    return Submitted(job=await view(session, signals, earlier), created=False)
                await session.rollback()
            await _input_file(db, tenant_id=tenant_id, body=body)
            return await _submit_in_transaction(
                session,
                signals,
                tenant_id=tenant_id,
                body=body,
                params=params,
                key=idempotency_key,
                ttl_s=ttl_s,
            )
    message = JobMessage(
        job_id=str(uuid.uuid4()),
        type=body.type,
        tenant_id=tenant_id,
        file_id=body.file_id,
        params=params,
        priority=body.priority,
    )
    async with db.connection() as conn:
        row = await conn.fetchrow(
            _QUEUE_ONE,
            message.job_id,
            tenant_id,
            body.type,
            JobStatus.QUEUED.value,
            body.file_id,
            to_json(params).decode(),
            to_json(body.labels).decode(),
            body.priority,
            body.callback_url,
            message.model_dump_json(),
            to_json(context_headers()).decode(),  # the request's trace context, which the relay publishes in
            _ACCEPTS[body.type],
        )
    if row is None or row["id"] is None:
        _check_input(
            body, None if row is None else (row["input_kind"], row["input_filename"], row["input_size"])
        )
        raise AssertionError(f"no job inserted for an accepted {row['input_kind']} file")  # never reached
    _committed(signals, body.type)
    return Submitted(job=jobstore.job_view(row), created=True)


def _committed(signals: JobSignals, job_type: str) -> None:
    """After a submission's commit: the relays woken for its outbox entry, the submission counted."""
    signals.outbox_written()
    metrics.JOBS_SUBMITTED.labels(job_type).inc()


async def _submit_in_transaction(
    session: AsyncSession,
    signals: JobSignals,
    *,
    tenant_id: str,
    body: JobRequest,
    params: dict[str, Any],
    key: str | None,
    ttl_s: int,
) -> Submitted:
    """A submission with an Idempotency-Key (an earlier one with the key answers instead), or of a composite
    job (one child job per part), in one transaction."""
    request_hashes = _request_hashes(body, params)
    if key:
        await session.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.tenant_id == tenant_id,
                idempotency_keys.c.key == key,
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
    if key:
        claimed = await session.execute(
            insert(idempotency_keys)
            .values(tenant_id=tenant_id, key=key, request_hash=request_hashes[0], job_id=job_id)
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
            .returning(idempotency_keys.c.job_id)
        )
        if claimed.first() is None:  # the key was taken first (perhaps by a concurrent request)
            await session.rollback()
            earlier = await _replay(
                session, tenant_id=tenant_id, key=key, request_hashes=request_hashes, ttl_s=ttl_s
            )
            assert earlier is not None  # the key taken is within its TTL: the expired ones were deleted above
            return Submitted(job=await view(session, signals, earlier), created=False)
    await session.commit()
    _committed(signals, body.type)
    return Submitted(job=await view(session, signals, job), created=True)


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


async def _replay(
    session: AsyncSession, *, tenant_id: str, key: str, request_hashes: tuple[str, ...], ttl_s: int
) -> RowMapping | None:
    """The job of an earlier submission with `key` within the TTL, if any; 409 if its body differed."""
    query = select(idempotency_keys.c.request_hash, idempotency_keys.c.job_id).where(
        idempotency_keys.c.tenant_id == tenant_id,
        idempotency_keys.c.key == key,
        idempotency_keys.c.created_at >= func.now() - timedelta(seconds=ttl_s),
    )
    first = (await session.execute(query)).one_or_none()
    if first is None:
        return None
    if first.request_hash not in request_hashes:
        raise Conflict(
            "This Idempotency-Key was used with a different body; use a new key for a different job."
        )
    return await jobstore.get(session, job_id=first.job_id)


async def get_job(session: AsyncSession, *, tenant_id: str, job_id: str) -> RowMapping:
    job = await jobstore.get(session, job_id=job_id)
    if job is None or job["tenant_id"] != tenant_id:
        raise NotFound(f"No job {job_id} for this API key's tenant.")
    return job


async def read(db: DatabaseManager, signals: JobSignals, *, tenant_id: str, job_id: str) -> dict[str, Any]:
    """The job object of one of the tenant's jobs (its parts' ids included) in one statement, with the live
    progress of a running job laid over it."""
    async with db.connection() as conn:
        row = await conn.fetchrow(_JOB_WITH_PARTS, job_id, tenant_id)
    if row is None:
        raise NotFound(f"No job {job_id} for this API key's tenant.")
    live = await _live(signals, row)
    return jobstore.job_view(row, children=row["children"], live=live)


async def _live(signals: JobSignals, job: Mapping[Any, Any]) -> dict[str, str] | None:
    """The live progress of `job` if it runs and Redis answers in time; None for the row's own."""
    return (await lives(signals, [job])).get(job["id"])


async def lives(signals: JobSignals, rows: Sequence[Mapping[Any, Any]]) -> dict[str, dict[str, str]]:
    """The live progress of those of `rows` that run (the job list's), in one round trip."""
    return await signals.lives([row["id"] for row in rows if row["status"] == JobStatus.RUNNING])


#: A job's parts' ids, in `jobstore.children_of`'s order (oldest first, then as its type lists its parts):
#: one spelling for the job and the job list, joined into their statements as a constant (no input reaches
#: it).
_PARTS = f"""ARRAY(SELECT part.id FROM jobs AS part WHERE part.parent_id = jobs.id
                  ORDER BY part.created_at, {jobstore.PART_POSITION_SQL}, part.id)"""  # noqa: S608

_JOB_WITH_PARTS = (
    "SELECT jobs.*, " + _PARTS + " AS children FROM jobs WHERE jobs.id = $1 AND jobs.tenant_id = $2"  # noqa: S608
)


async def view(session: AsyncSession, signals: JobSignals, job: RowMapping) -> dict[str, Any]:
    live = await _live(signals, job)
    composite = bool(JOB_TYPES[job["type"]].children)
    children = await jobstore.children_of(session, job_id=job["id"]) if composite else []
    return jobstore.job_view(job, children=children, live=live)


#: A page of the tenant's jobs, newest first, each with its parts' ids (`children`; NULL for a job of a type
#: without parts, whose rows skip the subquery); `list_jobs` adds only the filters a request uses, so that
#: each combination is one statement in asyncpg's cache, planned on `ix_jobs_tenant_created`.
_LIST = (
    "SELECT jobs.*, CASE WHEN jobs.type = ANY($2::text[]) THEN " + _PARTS + " END AS children"  # noqa: S608
    " FROM jobs WHERE jobs.tenant_id = $1"
)


async def list_jobs(
    db: DatabaseManager,
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None,
    statuses: Sequence[JobStatus] = (),
    types: Sequence[str] = (),
    labels: Sequence[tuple[str, str]] = (),
) -> list[asyncpg.Record]:
    """A page of the tenant's jobs after `cursor`, newest first, one row more than `limit`: those in any of
    `statuses` and of any of `types` (all where none is given), with every one of `labels`.

    One statement on a bare connection: SQLAlchemy's result rows and statement cache keys were a quarter of
    a 50-job page's CPU."""
    sql, args = [_LIST], [tenant_id, COMPOSITE_TYPES]

    def where(condition: str, *values: Any) -> None:
        numbers = range(len(args) + 1, len(args) + len(values) + 1)
        sql.append(" AND " + condition.format(*(f"${n}" for n in numbers)))
        args.extend(values)

    if statuses:
        where("jobs.status = ANY({})", [status.value for status in statuses])
    if types:
        where("jobs.type = ANY({})", list(types))
    for key, value in labels:  # each pair required: a key given twice matches no job, not the last value
        where("jobs.labels @> {}::jsonb", to_json({key: value}).decode())
    if cursor:
        where("(jobs.created_at, jobs.id) < ({}, {})", *pagination.decode(cursor, listing="jobs"))
    sql.append(f" ORDER BY jobs.created_at DESC, jobs.id DESC LIMIT ${len(args) + 1}")
    async with db.connection() as conn:
        rows: list[asyncpg.Record] = await conn.fetch("".join(sql), *args, limit + 1)
    return rows


async def cancel(
    session: AsyncSession, signals: JobSignals, *, store: FileStore, tenant_id: str, job_id: str
) -> RowMapping:
    """A queued job is cancelled at once; a running one is asked to stop at its next checkpoint; a
    composite job cancels its parts, and ends cancelled once they have."""
    job = await get_job(session, tenant_id=tenant_id, job_id=job_id)
    if JOB_TYPES[job["type"]].children and not JobStatus(job["status"]).terminal:
        for child in await jobstore.children_of(session, job_id=job_id):
            await cancel_part(session, signals, store=store, job_id=child)
        return await get_job(session, tenant_id=tenant_id, job_id=job_id)
    cancelled = await jobstore.transition(
        session,
        job_id=job_id,
        from_statuses=[JobStatus.QUEUED],
        to=JobStatus.CANCELLED,
        # A job queued again after a passing fault has started (`attempts`, `started_at`).
        message="cancelled" if job["attempts"] else "cancelled before it started",
    )
    if cancelled is not None:
        unnamed = await _mark_left_files(session, cancelled)
        await session.commit()
        await _drop_bytes(store, unnamed)
        # A part's change moves its composite job: its followers are told too (they heard only at their
        # stream's next keep-alive read, ~10 s later).
        await _announce(session, signals, cancelled)
        return cancelled
    await session.rollback()
    job = await get_job(session, tenant_id=tenant_id, job_id=job_id)
    if JobStatus(job["status"]).terminal:
        raise JobNotCancellable(f"Job {job_id} has already finished ({job['status']}); nothing to cancel.")
    await signals.request_cancel(job_id)
    return job


async def cancel_part(session: AsyncSession, signals: JobSignals, *, store: FileStore, job_id: str) -> None:
    """Cancel one part of a composite job: at once if queued, at its next checkpoint if running."""
    cancelled = await jobstore.transition(
        session, job_id=job_id, from_statuses=[JobStatus.QUEUED], to=JobStatus.CANCELLED, message="cancelled"
    )
    unnamed = await _mark_left_files(session, cancelled) if cancelled is not None else []
    await session.commit()
    await _drop_bytes(store, unnamed)
    if cancelled is not None:
        await _announce(session, signals, cancelled)
    else:
        await signals.request_cancel(job_id)


async def _mark_left_files(session: AsyncSession, job: RowMapping) -> list[str]:
    """Mark deleted, in the cancel's transaction, the files a job cancelled while queued still has from its
    earlier attempts: one whose worker died could not delete them, and only its rerun, which will not come
    now, would have (they stayed the tenant's for ever without a retention). No result names them: a
    cancelled job has none to read, even one an attempt stored before it died. Their storage ids, whose
    bytes go once the cancel commits (`_drop_bytes`). A job never tried saved none: nothing to look for."""
    if not job["attempts"]:
        return []
    return await mark_deleted(session, files.c.job_id == job["id"])


async def _drop_bytes(store: FileStore, storage_ids: Sequence[str]) -> None:
    """The stored bytes of files marked deleted by a cancel that committed. Best effort, as the relay's
    (`Relay._drop_bytes`): the cancel is made, so MongoDB away must not answer 503 "retry" for it, nor hold
    the answer a timeout per file; what is left, the retention's `purge_deleted_files` drops with the rows."""
    for index, storage_id in enumerate(storage_ids):
        try:
            await store.delete(storage_id)
        except Exception as exc:
            log.warning("the bytes of %d deleted files stay for now (%s)", len(storage_ids) - index, exc)
            return


async def _announce(session: AsyncSession, signals: JobSignals, job: RowMapping) -> None:
    """Tell the followers of `job` (committed) of its change, if Redis answers: the change is made, so a
    Redis away must not answer 503 "retry" for it (the retry said 409, nothing to cancel); the followers'
    streams read the row again at their next keep-alive."""
    try:
        await jobstore.announce(session, signals, job)
    except RedisError as exc:
        log.warning("could not announce job %s's change (%s)", job["id"], exc)


async def composite_result(session: AsyncSession, results: Any, *, job: RowMapping) -> dict[str, Any] | None:
    """A composite job's result: its parts' results under their type names (None for a part that did not
    apply to the input); None while a part that succeeded has no result to read (being written, or being
    deleted by the job retention, which drops results before job rows: every part read null then)."""
    query = select(jobs.c.id, jobs.c.type, jobs.c.status).where(jobs.c.parent_id == job["id"])
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
        if document is None and part.status == JobStatus.SUCCEEDED:
            return None
        gathered[part.type] = None if document is None else part_view(document)
    return gathered


def part_view(document: dict[str, Any]) -> dict[str, Any]:
    """A result document as the API shows it (without its storage keys)."""
    hidden = {"_id", "tenant_id", RESULT_WRITES}
    view = {key: value for key, value in document.items() if key not in hidden}
    if view.get("created_at") is not None:
        view["created_at"] = iso(view["created_at"])
    return view
