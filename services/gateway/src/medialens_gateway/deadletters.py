"""`medialens-deadletters`: the operator's view of the dead-letter queue, and a way back for its jobs.

    medialens-deadletters list                 every dead letter: job, type, why and how often it died
    medialens-deadletters requeue JOB_ID...    run those jobs again, as new jobs
    medialens-deadletters requeue --all

A dead letter's job has usually failed (RETRIES_EXHAUSTED, or MEDIA_DECODE_ERROR for an input that
crashed its decoder): a terminal job never changes again, so "requeue" submits a copy of it (same tenant,
type, input, params and labels, plus the label `requeued_from=<old id>`) through the outbox, and removes the
letter from the queue. A job is copied once, however many letters it has or runs requeue it (the copy
made before is named). Only a failed job is copied: a letter can be a duplicate's (the outbox publishing a
job twice, the relay's republish of a long-queued one), whose job the relay leaves be. A letter of a job
that ended otherwise (succeeded, cancelled) is removed, nothing to run again; one of a job still queued or
running is kept, to requeue once the job has ended; each is said in a line. Letters are read with
basic.get and put back untouched unless they are requeued or removed.
A job id with no letter in the queue (a typo, or requeued before) is named on stderr; the others are
requeued all the same. Before anything was dead-lettered the queue may not exist yet (the relay and the
services declare it at their start): `list` then says so and lists nothing. Exit codes:

    0  done
    1  some job ids had no letter in the queue (the others were requeued, removed or kept, each said so)
    2  a bad command line or a bad setting
    3  PostgreSQL cannot be used (unreachable, refusing MEDIALENS_POSTGRES_URL, or its schema not this
       release's); one line says which, and every letter stays in the queue
    4  some letters were kept, their jobs still queued or running (the others were requeued or removed):
       run requeue again once those jobs have ended
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError
from sqlalchemy import select

from medialens_shared import outbox
from medialens_shared.bus import Topology
from medialens_shared.contracts import JobMessage, JobStatus
from medialens_shared.db import DatabaseManager, postgres_problem
from medialens_shared.settings import load_settings
from medialens_shared.tables import jobs

#: The exit code when some job ids had no letter in the queue (2 stays argparse's and the settings').
EXIT_NOT_FOUND = 1
#: The exit code when PostgreSQL cannot be used (as medialens-keys').
EXIT_NO_DATABASE = 3
EXIT_KEPT = 4


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: AbstractIncomingMessage
    job: JobMessage | None
    reason: str
    queue: str
    deaths: int


def _letter(message: AbstractIncomingMessage) -> DeadLetter:
    try:
        job: JobMessage | None = JobMessage.model_validate(json.loads(message.body))
    except (ValidationError, ValueError):
        job = None
    deaths: list[dict[str, Any]] = list(message.headers.get("x-death") or [])  # type: ignore[arg-type]
    first = deaths[0] if deaths else {}
    return DeadLetter(
        message=message,
        job=job,
        reason=str(message.headers.get("x-first-death-reason") or first.get("reason") or "published dead"),
        queue=str(message.headers.get("x-first-death-queue") or first.get("queue") or "-"),
        deaths=sum(int(death.get("count", 1)) for death in deaths),
    )


async def read_letters(channel: aio_pika.abc.AbstractChannel, queue_name: str) -> list[DeadLetter] | None:
    """Every letter in the queue, fetched and held unacked (so each is read once); None when there is no
    such queue yet (the broker's NOT_FOUND, which closes the channel, ended the command in a traceback)."""
    try:
        queue = await channel.declare_queue(queue_name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    letters = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        letters.append(_letter(message))
    return letters


@dataclass(frozen=True, slots=True)
class Requeued:
    """What `requeue` did with a letter's job: `job_id` is its copy's, `before` says the copy was made by an
    earlier requeue (of another letter of the job, or a run that died before it removed the letter)."""

    job_id: str
    before: bool = False


@dataclass(frozen=True, slots=True)
class NotFailed:
    """A letter's job that did not fail, with its `status`: not copied. One that `ended` (succeeded,
    cancelled) has nothing to run again; one still queued or running may yet fail."""

    status: JobStatus

    @property
    def ended(self) -> bool:
        return self.status.terminal


async def requeue(db: DatabaseManager, letter: DeadLetter) -> Requeued | NotFailed | None:
    """Submit a copy of the letter's failed job through the outbox, once per job: a job with two letters
    (its decoder's crash and its delivery limit), or a letter left by a run that stopped between the copy's
    commit and the letter's removal, gets the copy made before. A job that did not fail is not copied
    (NotFailed): it was, whatever its status, so a job that had succeeded ran again, one its tenant
    cancelled ran anyway, and one still running got a twin. None if the letter is unreadable or its job no
    longer exists (deleted past `relay.job_retention_s`)."""
    if letter.job is None:
        return None
    async with db.session() as session:
        # Locked: two commands requeueing one job at once make one copy.
        locked = select(jobs).where(jobs.c.id == letter.job.job_id).with_for_update()
        old = (await session.execute(locked)).mappings().one_or_none()
        if old is None:
            return None
        if (status := JobStatus(old["status"])) != JobStatus.FAILED:
            return NotFailed(status)
        made_before = await session.scalar(
            select(jobs.c.id).where(
                jobs.c.tenant_id == old["tenant_id"],
                jobs.c.created_at >= old["created_at"],
                jobs.c.labels["requeued_from"].astext == old["id"],
            )
        )
        if made_before is not None:
            return Requeued(made_before, before=True)
        new_id = str(uuid.uuid4())
        await session.execute(
            jobs.insert().values(
                id=new_id,
                tenant_id=old["tenant_id"],
                type=old["type"],
                status=JobStatus.QUEUED.value,
                file_id=old["file_id"],
                params=old["params"],
                labels={**old["labels"], "requeued_from": old["id"]},
                priority=old["priority"],
                callback_url=old["callback_url"],
                message="queued (requeued from the dead letters)",
            )
        )
        await outbox.enqueue(session, letter.job.model_copy(update={"job_id": new_id}))
        await session.commit()
    return Requeued(new_id)


async def main_async(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medialens-deadletters",
        description=__doc__.splitlines()[0],
        epilog="exit codes:\n" + __doc__.split("Exit codes:\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the dead letters")
    again = commands.add_parser("requeue", help="run dead-lettered jobs again, as new jobs")
    again.add_argument("job_ids", nargs="*")
    again.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "requeue" and not (args.all or args.job_ids):
        parser.error("requeue needs job ids or --all")

    settings = load_settings()
    queue_name = Topology(settings).dead.name
    connection = await aio_pika.connect(settings.rabbitmq.url.get_secret_value())
    db = DatabaseManager(settings, name="deadletters")
    try:
        letters = await read_letters(await connection.channel(), queue_name)
        if letters is None:
            print(
                f"no dead-letter queue {queue_name} yet: nothing has been dead-lettered "
                "(the relay or a service declares it at start)"
            )
        if args.command == "list":
            if letters is not None:
                await list_letters(letters, queue_name=queue_name)
            return 0
        return await requeue_letters(db, letters or [], job_ids=args.job_ids, every=args.all)
    finally:
        await connection.close()
        await db.close_all()


async def list_letters(letters: list[DeadLetter], *, queue_name: str) -> None:
    """Print the letters and put each back in the queue."""
    print(f"{len(letters)} dead letter(s) in {queue_name}")
    for letter in letters:
        job = letter.job
        print(
            f"{job.job_id if job else '?':36}  {job.type if job else '(unreadable)':16}  "
            f"{letter.reason:14}  deaths={letter.deaths}  from={letter.queue}"
        )
        await letter.message.nack(requeue=True)


async def requeue_letters(
    db: DatabaseManager, letters: list[DeadLetter], *, job_ids: list[str], every: bool
) -> int:
    """Requeue the letters of `job_ids` (all with `every`) and put the others back; EXIT_NOT_FOUND, after
    naming them, when some ids had no letter (a silent 0 read as done for a mistyped id); else EXIT_KEPT when
    some letters were kept for jobs not ended yet (a 0 read as done by a script, those jobs never rerun)."""
    wanted = set(job_ids)
    chosen: list[tuple[DeadLetter, JobMessage]] = []
    for letter in letters:
        if letter.job is not None and (every or letter.job.job_id in wanted):
            chosen.append((letter, letter.job))
        else:
            await letter.message.nack(requeue=True)
    if chosen and (problem := await postgres_problem(db)):
        # Only PostgreSQL is used (it waited for MongoDB and Redis too, and a failure was a traceback); the
        # letters held go back to the queue as the connection closes.
        print(f"medialens-deadletters: {problem}", file=sys.stderr)
        return EXIT_NO_DATABASE
    kept = 0
    for letter, job in chosen:
        requeued = await requeue(db, letter)
        if isinstance(requeued, NotFailed) and not requeued.ended:
            # Its job may still fail (the relay fails a queued one, or a running one whose lease runs out,
            # on its own copy of the letter): kept for a requeue once the job has ended.
            await letter.message.nack(requeue=True)
            kept += 1
            print(
                f"job {job.job_id} is still {requeued.status.value}, it has not failed: its letter kept "
                "(requeue it again once the job has ended)"
            )
            continue
        await letter.message.ack()
        if requeued is None:
            # Its job was deleted with its retention: nothing to run again, and kept, the letter could
            # never leave the queue.
            print(f"job {job.job_id} no longer exists (past its retention): its letter removed")
        elif isinstance(requeued, NotFailed):
            # A duplicate's letter of a job that ended otherwise: nothing to run again.
            print(
                f"job {job.job_id} {requeued.status.value}, it did not fail: "
                "not run again, its letter removed"
            )
        elif requeued.before:
            print(f"job {job.job_id} was requeued before, as job {requeued.job_id}: this letter removed")
        else:
            print(f"requeued {job.job_id} as new job {requeued.job_id}")
    found = {job.job_id for _, job in chosen}
    if missing := [job_id for job_id in dict.fromkeys(job_ids) if job_id not in found]:
        print(f"no dead letter for job(s): {', '.join(missing)}", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_KEPT if kept else 0


def main() -> None:
    sys.exit(asyncio.run(main_async(sys.argv[1:])))


if __name__ == "__main__":
    main()
