"""Job rows in PostgreSQL: the public job object, and status changes as compare-and-set.

Every status change is one `UPDATE ... WHERE status IN (<allowed from>)`: when two deliveries of one job
race, exactly one wins, and a terminal job never changes again. Live progress lives in Redis
(`medialens_shared.signals`) and is laid over the row when a job is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    RowMapping,
    Text,
    Update,
    any_,
    bindparam,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import Grouping

from medialens_shared import outbox, webhooks
from medialens_shared.contracts import JOB_TYPES, PART_ORDER, TERMINAL_STATUSES, JobMessage, JobStatus
from medialens_shared.envelope import iso
from medialens_shared.errors import MediaLensError
from medialens_shared.signals import JobSignals
from medialens_shared.tables import jobs
from medialens_shared.telemetry import bare_statement, context_headers

#: A job's row, read by column name: a RowMapping from a session, an asyncpg Record from a bare connection
#: (`LoneTransition`), which iterates its values rather than its names.
JobRow = RowMapping


@dataclass(frozen=True, slots=True)
class Claim:
    """Who runs a job: the worker that claimed it and the attempt that claim counted.

    Ownership is per claim, not per worker: when a job's lease ran out while it ran and the reaper requeued
    it, the same worker may claim it again from the new message; its first attempt, still running, must
    then find the job no longer its own, as it would if another worker had claimed it.
    """

    worker: str
    attempt: int

    @classmethod
    def of(cls, row: JobRow) -> Claim:
        """The claim a claim's returned row records."""
        return cls(row["worker"], row["attempts"])

    def holds(self) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
        """The clauses of a job this claim still holds (with a running status, its lease is this claim's)."""
        return held_by(self.worker, self.attempt)


def held_by(worker: Any, attempt: Any) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """A job's row still held by the claim of `worker` and `attempt` (values, or SQL expressions of them)."""
    return jobs.c.worker == worker, jobs.c.attempts == attempt


#: The error of a composite job's part that does not apply to the input; the other parts still count.
PART_NOT_APPLICABLE = "UNSUPPORTED_INPUT"
#: On a job's message: its previous attempt died with its worker (see `medialens_shared.isolation`).
WORKER_DIED_HEADER = "x-medialens-worker-died"


def is_this_attempts(live: Mapping[str, Any], row: JobRow) -> bool:
    """Whether the live progress `live` (`JobSignals.live`) was reported by the attempt `row` is at: a
    rerun's row showed the progress its dead or failed attempt last reported (60 %, "decoding 1830/4500
    frames") until its own first report. A value stored without its attempt (before this was kept) counts
    as the row's."""
    return str(live.get("attempt", row["attempts"])) == str(row["attempts"])


def job_view(
    row: JobRow, *, children: Iterable[str] = (), live: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The job object of API.md from its row (plus live progress for a job still running)."""
    progress, message = float(row["progress"]), row["message"]
    if live and row["status"] == JobStatus.RUNNING and is_this_attempts(live, row):
        progress, message = float(live.get("progress", progress)), str(live.get("message", message))
    return {
        "id": row["id"],
        "type": row["type"],
        "status": row["status"],
        "progress": progress,
        "message": message,
        "file_id": row["file_id"],
        "params": row["params"],
        "labels": row["labels"],
        "priority": row["priority"],
        "attempts": row["attempts"],
        "error_code": row["error_code"],
        "error_message": row["error_message"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "parent_id": row["parent_id"],
        "children": list(children),
    }


def message_of(row: JobRow) -> JobMessage:
    """The bus message that runs the job of `row`."""
    return JobMessage(
        job_id=row["id"],
        type=row["type"],
        tenant_id=row["tenant_id"],
        file_id=row["file_id"],
        params=row["params"],
        priority=row["priority"],
    )


async def get(session: AsyncSession, *, job_id: str) -> JobRow | None:
    return (await session.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one_or_none()


#: Where a part's type comes in its composite's list of parts (`contracts.PART_ORDER`), as SQL over a table
#: aliased `part`: joined into statements as a constant (job type names, no input reaches it).
PART_POSITION_SQL = (
    "array_position(ARRAY[" + ", ".join(f"'{name}'" for name in PART_ORDER) + "]::text[], part.type)"
)


async def children_of(session: AsyncSession, *, job_id: str) -> list[str]:
    """A composite job's parts' ids in its list's order: the parts of one submission share their created_at
    (one transaction), and were listed by their random ids before."""
    part = jobs.alias("part")
    position = func.array_position(literal(list(PART_ORDER), ARRAY(Text)), part.c.type)
    query = (
        select(part.c.id).where(part.c.parent_id == job_id).order_by(part.c.created_at, position, part.c.id)
    )
    return list((await session.scalars(query)).all())


async def announce(session: AsyncSession, signals: JobSignals, row: JobRow) -> None:
    """Tell the job's listeners of its new state; for a part, its composite job's listeners too, since the
    part's change may have moved it."""
    await signals.announce(job_view(row))
    if row["parent_id"] is None:
        return
    parent = await get(session, job_id=row["parent_id"])
    if parent is not None:
        await signals.announce(job_view(parent, children=await children_of(session, job_id=parent["id"])))


async def cancel_as_asked(session: AsyncSession, *, job_id: str) -> JobRow | None:
    """End a running job whose worker is gone or going, and of which a cancel was asked, `cancelled`:
    nothing runs to stop, so it ends as asked rather than run again; None if it no longer runs."""
    return await transition(
        session,
        job_id=job_id,
        from_statuses=[JobStatus.RUNNING],
        to=JobStatus.CANCELLED,
        message="cancelled",
        worker=None,
        lease_expires_at=None,
    )


async def transition(
    session: AsyncSession,
    *,
    job_id: str,
    from_statuses: Iterable[JobStatus],
    to: JobStatus,
    count_attempt: bool = False,
    owner: Claim | None = None,
    returning: Iterable[ColumnElement[Any]] = (),
    **values: Any,
) -> JobRow | None:
    """Move a job to `to` if it is in one of `from_statuses` (and, with `owner`, still held by that
    claim); the new row (with the further columns of `returning`), or None if it was not.

    Terminal statuses are never left: asking to move out of one is a programming error. Reaching one,
    a job with a `callback_url` gets its webhook delivery row in the same transaction.
    """
    statement = _transition_statement(
        job_id=job_id,
        from_statuses=from_statuses,
        to=to,
        count_attempt=count_attempt,
        owner=owner,
        returning=returning,
        values=values,
    )
    row = (await session.execute(statement)).mappings().one_or_none()
    if row is not None and row["parent_id"] is not None:
        await _follow_children(session, parent_id=row["parent_id"])
    if row is not None and to in TERMINAL_STATUSES and row["callback_url"]:
        # In the status change's own transaction: the webhook is owed if and only if the change commits.
        children = await children_of(session, job_id=job_id)
        await webhooks.enqueue(
            session,
            job_id=job_id,
            tenant_id=row["tenant_id"],
            url=row["callback_url"],
            payload=job_view(row, children=children),
        )
    return row


def _transition_statement(
    *,
    job_id: str | ColumnElement[Any],
    from_statuses: Iterable[JobStatus],
    to: JobStatus,
    count_attempt: bool,
    owner: Claim | tuple[ColumnElement[Any], ColumnElement[Any]] | None,
    returning: Iterable[ColumnElement[Any]],
    values: Mapping[str, Any],
) -> Update:
    """The UPDATE ... RETURNING of `transition` (without what follows it)."""
    allowed = set(from_statuses)
    if allowed & TERMINAL_STATUSES:
        raise ValueError(f"a terminal job never changes again (asked to leave {sorted(allowed)})")
    changes: dict[str, Any] = {"status": to.value, "updated_at": func.now(), **values}
    if count_attempt:
        changes["attempts"] = jobs.c.attempts + 1
    if to == JobStatus.RUNNING:
        changes.setdefault("started_at", func.coalesce(jobs.c.started_at, func.now()))
    if to in TERMINAL_STATUSES:
        changes.setdefault("finished_at", func.now())
    statement = (
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status.in_(sorted(status.value for status in allowed)))
        .values(changes)
        .returning(*jobs.c, *returning)
    )
    if owner is not None:
        statement = statement.where(*(owner.holds() if isinstance(owner, Claim) else held_by(*owner)))
    return statement


class LoneTransition:
    """One kind of `transition`, compiled once into a statement for a bare asyncpg connection
    (`DatabaseManager.connection`), for the jobs it is the whole of: a job that is no part of a composite
    job and, when the change ends it, has no `callback_url`. For such a job the UPDATE is all `transition`
    does (no parent to follow, no webhook owed), so on its own connection it commits by itself: no BEGIN
    and COMMIT round trips, and none of a session's unit of work or SQLAlchemy's per-statement machinery,
    which were most of a light job's bookkeeping in a worker (the claim and the end run for every job).

    The statement matches only such jobs: None from `run` means this statement changed nothing, and the
    job may still be one that `in_session` (the general path, `transition` itself) changes. The change's
    plain values become parameters, so `run` and `in_session` take others of the same names (an end's
    message or error); SQL expressions among them (a lease's `now() + interval`) are fixed.

    An `owned` one changes a job only while the claim it is given still holds it (see `Claim`). A
    `batched` one changes several jobs in one statement (`run_many`: the same change for each, e.g. the
    successes of a worker's concurrent jobs, each under its own claim); `run` is then unavailable.
    """

    def __init__(
        self,
        dialect: Dialect,
        *,
        from_statuses: Iterable[JobStatus],
        to: JobStatus,
        count_attempt: bool = False,
        owned: bool = False,
        returning: Iterable[ColumnElement[Any]] = (),
        batched: bool = False,
        **values: Any,
    ) -> None:
        self.from_statuses = tuple(from_statuses)
        self.to = to
        self.count_attempt = count_attempt
        self.returning = tuple(returning)
        self.values = values
        job_id: ColumnElement[Any] = bindparam("job_id", type_=Text)
        owner: tuple[ColumnElement[Any], ColumnElement[Any]] | None = None
        if owned:
            owner = (bindparam("owner", type_=Text), bindparam("attempt", type_=Integer))
        if batched:
            ids = bindparam("job_id", type_=ARRAY(Text))
            job_id = any_(ids)
            if owned:  # each job's own claim: the worker and attempt at its place in the arrays
                at = func.array_position(ids, jobs.c.id)
                # Grouped: PostgreSQL reads `$7::TEXT[][i]` as a cast to a type, `($7::TEXT[])[i]` not.
                owner = (
                    Grouping(bindparam("owner", type_=ARRAY(Text)))[at],
                    Grouping(bindparam("attempt", type_=ARRAY(Integer)))[at],
                )
        statement = _transition_statement(
            job_id=job_id,
            from_statuses=self.from_statuses,
            to=to,
            count_attempt=count_attempt,
            owner=owner,
            returning=self.returning,
            values=values,
        ).where(jobs.c.parent_id.is_(None))
        if to in TERMINAL_STATUSES:
            statement = statement.where(jobs.c.callback_url.is_(None))
        state = statement.compile(dialect=dialect).construct_expanded_state(
            {"job_id": [""], "owner": [""], "attempt": [0]}
            if batched
            else {"job_id": "", "owner": "", "attempt": 0}
        )
        if state.processors:  # asyncpg takes these columns' values as they are; one needing SQLAlchemy's
            raise ValueError(f"values needing conversion for asyncpg: {sorted(state.processors)}")
        self.sql = state.statement
        self._args = list(state.positional_parameters)
        #: Where each per-call parameter goes: the job, its owner's claim and the change's plain values.
        self._slots = {name: index for index, name in enumerate(state.positiontup or ())}
        self._owned = owned
        self.batched = batched

    async def run(
        self, conn: Any, *, job_id: str, owner: Claim | None = None, **values: Any
    ) -> JobRow | None:
        """Change the job on `conn` (an asyncpg connection); its new row, or None (see the class)."""
        if self.batched:
            raise ValueError("a batched change runs with run_many")
        args = self._arguments(job_id, owner, values)
        with bare_statement(self.sql):
            row: JobRow | None = await conn.fetchrow(self.sql, *args)
        return row

    async def run_many(
        self, conn: Any, *, job_ids: list[str], owners: list[Claim] | None = None, **values: Any
    ) -> list[JobRow]:
        """Change the jobs of `job_ids` on `conn` in one statement (an owned change: each while still held
        by its claim in `owners`, in the same order; a job listed twice is held to its first claim); the new
        rows of those it changed."""
        if not self.batched:
            raise ValueError("only a batched change runs with run_many")
        if owners is not None and len(owners) != len(job_ids):
            raise ValueError("one owner for each job")
        args = self._arguments(job_ids, owners, values)
        with bare_statement(self.sql):
            rows: list[JobRow] = await conn.fetch(self.sql, *args)
        return rows

    def _arguments(
        self, job_id: str | list[str], owner: Claim | list[Claim] | None, values: Mapping[str, Any]
    ) -> list[Any]:
        if self._owned != (owner is not None):
            raise ValueError("an owned change needs its owner, and only it does")
        args = self._args.copy()
        args[self._slots["job_id"]] = job_id
        if isinstance(owner, Claim):
            args[self._slots["owner"]], args[self._slots["attempt"]] = owner.worker, owner.attempt
        elif owner is not None:
            args[self._slots["owner"]] = [claim.worker for claim in owner]
            args[self._slots["attempt"]] = [claim.attempt for claim in owner]
        for name, value in values.items():
            args[self._slots[name]] = value
        return args

    async def in_session(
        self, session: AsyncSession, *, job_id: str, owner: Claim | None = None, **values: Any
    ) -> JobRow | None:
        """The same change through `transition`, for any job, in the session's transaction."""
        return await transition(
            session,
            job_id=job_id,
            from_statuses=self.from_statuses,
            to=self.to,
            count_attempt=self.count_attempt,
            owner=owner,
            returning=self.returning,
            **(self.values | values),
        )


async def requeue(
    session: AsyncSession,
    *,
    job: JobRow,
    message: str,
    owner: Claim | None = None,
    delay_s: int = 0,
    worker_died: bool = False,
) -> JobRow | None:
    """Hand a running job back to the queue (its lease cleared) and its message to the outbox, after
    `delay_s`; the new row, or None if the job was no longer running (for `owner`). `worker_died` marks
    the message (`WORKER_DIED_HEADER`) so that the next attempt runs its CPU part isolated."""
    row = await transition(
        session,
        job_id=job["id"],
        from_statuses=[JobStatus.RUNNING],
        to=JobStatus.QUEUED,
        owner=owner,
        message=message[:200],
        worker=None,
        lease_expires_at=None,
    )
    if row is not None:
        headers = context_headers() | {WORKER_DIED_HEADER: "1"} if worker_died else None
        await outbox.enqueue(session, message_of(row), delay_s=delay_s, headers=headers)
    return row


async def fail(
    session: AsyncSession,
    *,
    job_id: str,
    error: MediaLensError,
    from_statuses: Iterable[JobStatus] = (JobStatus.RUNNING,),
    owner: Claim | None = None,
) -> JobRow | None:
    """Fail a job with `error`'s code and message (its lease cleared); the new row, or None if it was not
    in one of `from_statuses`."""
    return await transition(
        session,
        job_id=job_id,
        from_statuses=from_statuses,
        to=JobStatus.FAILED,
        owner=owner,
        message="failed",
        error_code=error.error_code,
        error_message=error.message,
        worker=None,
        lease_expires_at=None,
    )


async def _follow_children(session: AsyncSession, *, parent_id: str) -> None:
    """A composite job follows its children, in the transaction of the child's change: running once a
    worker has one (running or ended), its progress the share of children succeeded, terminal once all end:
    failed with the first failure's code if a part failed (first in the job type's order of parts), else
    cancelled if a part was cancelled, else succeeded. An optional part (the job type's `optional`) that
    failed with UNSUPPORTED_INPUT (a video without an audio track, for the audio parts) is a gap in the
    result, not a failure, as long as another part succeeded.

    Its progress counts only the parts that succeeded, so that it never goes back: a composite job that
    does not succeed ends with that share, its message saying how it ended ("cancelled; 2/5 parts done").
    One cancelled before any part ran never passes through running and ends "cancelled before it started",
    as a single job does; it read "5/5 parts done" with a start time, having run nothing.
    """
    parent = (
        (await session.execute(select(jobs).where(jobs.c.id == parent_id).with_for_update()))
        .mappings()
        .one_or_none()
    )
    if parent is None or JobStatus(parent["status"]).terminal:
        return
    query = select(
        jobs.c.type, jobs.c.status, jobs.c.error_code, jobs.c.error_message, jobs.c.started_at
    ).where(jobs.c.parent_id == parent_id)
    order = {name: index for index, name in enumerate(JOB_TYPES[parent["type"]].children)}
    children = sorted(
        (await session.execute(query)).all(), key=lambda child: order.get(child.type, len(order))
    )
    done = [child for child in children if JobStatus(child.status).terminal]
    succeeded = sum(child.status == JobStatus.SUCCEEDED for child in children)
    # Progress counts the parts that succeeded, never those ended otherwise: a cancel read "4/5 parts
    # done" (0.8) as its parts ended cancelled one by one, then "cancelled; 3/5 parts done" (0.6).
    ended_otherwise = len(done) - succeeded
    values: dict[str, Any] = {
        "progress": succeeded / len(children),
        "message": f"{succeeded}/{len(children)} parts done"
        + (f", {ended_otherwise} ended without a result" if ended_otherwise else ""),
    }
    # An optional part whose input lacks what it analyses (no audio track) leaves a gap, not a failure. Any
    # other part fails the whole: an MP4 holding only a soundtrack succeeded with every video part null.
    optional = JOB_TYPES[parent["type"]].optional
    failed = [
        child
        for child in children
        if child.status == JobStatus.FAILED
        and not (child.error_code == PART_NOT_APPLICABLE and child.type in optional)
    ]
    if not failed and not succeeded:
        failed = [child for child in children if child.status == JobStatus.FAILED]
    # A worker has had a part (a claim stamps its start): not one failed by a dead letter while queued.
    worked = any(child.started_at is not None for child in children)
    if len(done) < len(children):
        if not worked:  # queued, or ended before any ran
            return
        to = JobStatus.RUNNING
    elif failed:
        to = JobStatus.FAILED
        values |= {
            "progress": succeeded / len(children),
            "message": f"failed; {succeeded}/{len(children)} parts done",
            "error_code": failed[0].error_code,
            "error_message": f"{failed[0].type} failed: {failed[0].error_message}",
        }
    elif any(child.status == JobStatus.CANCELLED for child in children):
        to = JobStatus.CANCELLED
        values |= (
            {
                "progress": succeeded / len(children),
                "message": f"cancelled; {succeeded}/{len(children)} parts done",
            }
            if parent["status"] != JobStatus.QUEUED
            else {"progress": 0.0, "message": "cancelled before it started"}
        )
    else:
        to = JobStatus.SUCCEEDED
        values["progress"] = 1.0  # done, gaps included: they are parts that do not apply
        gaps = [child for child in children if child.status == JobStatus.FAILED]
        if gaps:  # say which parts the result leaves out, and why, where a client reads the job
            values["message"] = (
                f"{len(children) - len(gaps)}/{len(children)} parts done; "
                f"{', '.join(sorted(child.type for child in gaps))} do not apply: {gaps[0].error_message}"
            )
    await transition(
        session, job_id=parent_id, from_statuses=[JobStatus.QUEUED, JobStatus.RUNNING], to=to, **values
    )
