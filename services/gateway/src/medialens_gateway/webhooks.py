"""The webhook dispatcher, a duty of the relay: sends the deliveries that `jobstore.transition` owes.

Each round claims due deliveries (`pending`, or `delivering` past its claim: a relay stopped mid-send)
with `FOR UPDATE SKIP LOCKED`, marks them `delivering` with a claim that outlasts one try, and commits:
no transaction is held open across the network. Then each is POSTed, and its outcome recorded with a
compare-and-set on (delivering, this try), so a slow relay whose claim was taken over changes nothing.
A due row whose tries are used up (`delivering` again after its last try's outcome was never recorded) is
not claimed but failed, so no delivery is sent more than `webhook.max_attempts` times, nor owed for ever.
Delivery is at least once: a receiver drops repeats by `X-MediaLens-Delivery`.

    2xx                                   -> succeeded
    408, 429, 5xx, network error, timeout -> pending again after an exponential backoff with jitter, or
    or any other error of the try           after the receiver's `Retry-After` if longer (both capped at
                                             `webhook.backoff_cap_s`); failed after `webhook.max_attempts`
    any other status (4xx, 3xx)           -> failed at once (redirects are never followed)
    a URL httpx cannot send as written    -> failed at once, nothing sent (a row stored before the check at
                                             submission refused such URLs: it would fail the same each try)
    host is or resolves to a non-public   -> failed at once, nothing sent
    address (private, loopback, link-local, metadata), unless `gateway.callback_allow_private`

One delivery's trouble stays its own. Each try runs as a task of its own that records its outcome the
moment it ends (an error nobody foresaw counts as a failed try, retried like a network error), so a round
never fails for one URL, and a receiver that takes its whole `webhook.timeout_s` delays no other delivery:
`kick` starts a new round whenever fewer than `webhook.batch_size` tries are in flight, without waiting for
earlier rounds, and the new round claims only as many deliveries as there are free places. That bounds
the concurrent tries, and every claimed delivery starts its try at once, within the claim's time. Rounds
cannot take the same row: the claim is committed before any send, and SKIP LOCKED keeps two claims apart.

SSRF: the host was checked at submission, but a name can point elsewhere by the time a job ends (or
between a check and a connect: DNS rebinding). So the host is resolved here, every address it resolves to
must be public, and the request connects to the checked address itself (the URL's host replaced by that
IP, with the original `Host` header and, for https, the original name as TLS SNI and certificate name):
re-checking before an ordinary request would leave the client free to resolve the name again, to another
address. Proxies from the environment are ignored for the same reason, and response bodies are never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from sqlalchemy import Select, String, case, cast, func, literal, or_, select, update

from medialens_gateway.jobs.callbacks import BadCallbackURL, addresses_of, is_public, parse_callback_url
from medialens_shared import webhooks
from medialens_shared.db import DatabaseManager
from medialens_shared.settings import Settings
from medialens_shared.tables import tenants, webhook_deliveries
from medialens_shared.webhooks import DeliveryStatus

log = logging.getLogger(__name__)

#: Seconds a claim outlasts one try's budget before another round may take the delivery over.
CLAIM_MARGIN_S = 30.0

#: Statuses worth another try: the receiver is busy, slow or broken for now.
RETRYABLE_STATUSES = frozenset({408, 429})

USER_AGENT = "MediaLens-Webhooks/1"


class Refused(Exception):
    """The callback's target may not be sent to (a non-public address, a scheme not allowed, a URL that
    cannot be sent as written)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a try connects: the checked IPs (tried in turn), with the URL's own host name kept for the
    Host header and TLS."""

    urls: list[httpx.URL]
    host_header: str
    sni_hostname: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    status: DeliveryStatus
    status_code: int | None = None
    error: str | None = None
    retry_in_s: float | None = None


def backoff_s(attempts: int, *, base_s: float, cap_s: float) -> float:
    """Wait before the try after `attempts` tries: doubling from `base_s`, capped, with jitter."""
    ceiling = min(cap_s, base_s * 2 ** max(attempts - 1, 0))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not secrecy


#: The longest wait a `Retry-After` is read as (a year): the wait itself is capped by the backoff's cap, but
#: a header of 400 digits read as a float was infinite, and the delivery's `last_error` said "inf s".
RETRY_AFTER_MAX_S = 365 * 86400.0


def retry_after_s(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks to wait, given as seconds or as an HTTP-date, at most
    `RETRY_AFTER_MAX_S`; None when there is none or it cannot be read (the backoff alone then decides)."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP-date is in GMT anyway
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


class Dispatcher:
    def __init__(self, *, settings: Settings, db: DatabaseManager) -> None:
        self.settings = settings
        self.db = db
        self._rounds: set[asyncio.Task[int]] = set()
        #: Tries in flight, and places held by claims under way: together at most `webhook.batch_size`.
        #: A count, not the deliveries' ids: a delivery answered 5xx can be claimed again by a later round
        #: while the round that sent it still waits on another, which must not free the later try's place.
        self._sending = 0
        self._reserved = 0
        #: Outcomes are recorded one at a time: the relay's session pool is a few connections, shared with
        #: the reaper and the retention, and a burst of tries ending together must not take them all.
        self._recording = asyncio.Semaphore(1)
        #: The certificates a receiver's is checked against, loaded once: a client made with httpx's default
        #: loads certifi's bundle again, 18 ms of CPU on the relay's event loop for every round.
        self._tls = httpx.create_ssl_context(trust_env=False)

    def _free(self) -> int:
        return self.settings.webhook.batch_size - self._sending - self._reserved

    def kick(self) -> None:
        """Start a round in the background if a try may start, without waiting for the rounds in flight: a
        slow receiver holds up neither the relay's other duties nor other deliveries."""
        if self._free() <= 0:
            return
        round_ = asyncio.create_task(self.dispatch_once(), name="webhooks")
        self._rounds.add(round_)
        round_.add_done_callback(self._rounds.discard)
        round_.add_done_callback(_log_failure)

    async def drain(self) -> None:
        """Wait for the rounds in flight (at stop), so their outcomes are recorded."""
        await asyncio.gather(*self._rounds, return_exceptions=True)

    async def dispatch_once(self) -> int:
        """Claim as many due deliveries as tries may start, send them, record how each went as it ends; how
        many were tried."""
        places = self._free()
        if places <= 0:
            return 0
        self._reserved += places  # before any await: a round started meanwhile finds these places taken
        try:
            claimed, secrets = await self._claim(limit=places)
        finally:
            self._reserved -= places
        self._sending += len(claimed)
        unfinished = len(claimed)

        def finished() -> None:  # each try frees its own place as it ends
            nonlocal unfinished
            unfinished -= 1
            self._sending -= 1

        try:
            if claimed:
                # A client a round: its connections, made to the addresses a round's names resolved to (each
                # checked against its own name), are not reused for another name on the same address.
                async with httpx.AsyncClient(
                    follow_redirects=False,
                    trust_env=False,
                    timeout=self.settings.webhook.timeout_s,
                    verify=self._tls,
                ) as client:
                    await asyncio.gather(*(self._deliver(client, row, secrets, finished) for row in claimed))
        finally:
            self._sending -= unfinished  # the places of tries a round cut short never started
        return len(claimed)

    async def _claim(self, *, limit: int) -> tuple[list[Any], dict[str, str]]:
        wd = webhook_deliveries
        max_attempts = self.settings.webhook.max_attempts

        def due(*where: Any) -> Select[Any]:
            return (
                select(wd.c.id)
                .where(
                    or_(wd.c.status == DeliveryStatus.PENDING, wd.c.status == DeliveryStatus.DELIVERING),
                    wd.c.next_attempt_at <= func.now(),
                    *where,
                )
                .order_by(wd.c.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )

        tries = cast(wd.c.attempts, String)
        gave_up = case(
            (
                wd.c.status == DeliveryStatus.DELIVERING,
                literal("gave up after ")
                + tries
                + " tries: the last one's outcome was never recorded (its relay stopped mid-send)",
            ),
            # pending with its tries used up: only when webhook.max_attempts was lowered since
            else_=literal("gave up after ") + tries + " tries: " + func.coalesce(wd.c.last_error, ""),
        )
        claim = timedelta(seconds=self.settings.webhook.timeout_s + CLAIM_MARGIN_S)
        async with self.db.session() as session:
            spent = (
                await session.execute(
                    update(wd)
                    .where(wd.c.id.in_(due(wd.c.attempts >= max_attempts).scalar_subquery()))
                    .values(status=DeliveryStatus.FAILED.value, next_attempt_at=None, last_error=gave_up)
                    .returning(wd.c.id, wd.c.job_id, wd.c.last_error)
                )
            ).all()
            rows = (
                (
                    await session.execute(
                        update(wd)
                        .where(wd.c.id.in_(due(wd.c.attempts < max_attempts).scalar_subquery()))
                        .values(
                            status=DeliveryStatus.DELIVERING.value,
                            attempts=wd.c.attempts + 1,
                            next_attempt_at=func.now() + claim,
                        )
                        .returning(*wd.c)
                    )
                )
                .mappings()
                .all()
            )
            secrets: dict[str, str] = {}
            if rows:
                query = select(tenants.c.id, tenants.c.webhook_secret).where(
                    tenants.c.id.in_({row["tenant_id"] for row in rows})
                )
                secrets = {row.id: row.webhook_secret for row in (await session.execute(query)).all()}
            await session.commit()
        for row in spent:
            log.warning(
                "webhook %s of job %s: failed (%s)",
                row.id,
                row.job_id,
                row.last_error,
                extra={"job_id": row.job_id, "delivery_id": row.id},
            )
        return list(rows), secrets

    async def _deliver(
        self, client: httpx.AsyncClient, row: Any, secrets: dict[str, str], finished: Callable[[], None]
    ) -> None:
        """One try, and its outcome recorded as soon as it ends; whatever goes wrong stays this delivery's."""
        try:
            try:
                outcome = await self._try(client, row, secrets[row["tenant_id"]])
            except Exception as exc:  # a bug, or a library's surprise: this delivery's failed try only
                log.warning("webhook %s: its try raised", row["id"], exc_info=True)
                outcome = self._again(row, None, f"unexpected error: {type(exc).__name__}: {exc}"[:500])
            await self._record(row, outcome)
        except Exception as exc:  # the database: the claim runs out, and the delivery is tried again
            log.warning("webhook %s: its outcome was not recorded (%s); it is tried again", row["id"], exc)
        finally:
            finished()

    async def _try(self, client: httpx.AsyncClient, row: Any, secret: str) -> Outcome:
        body = webhooks.body_of(row["payload"])
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            webhooks.SIGNATURE_HEADER: webhooks.signature(secret, body),
            webhooks.DELIVERY_HEADER: row["id"],
            webhooks.EVENT_HEADER: webhooks.event_of(row["payload"]),
        }
        try:
            async with asyncio.timeout(self.settings.webhook.timeout_s):
                target = await self._target(row["url"])
                headers["Host"] = target.host_header
                response = await _post(client, target, body=body, headers=headers)
        except Refused as exc:
            return Outcome(DeliveryStatus.FAILED, error=str(exc))
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return self._again(row, None, f"network error: {type(exc).__name__}: {exc}".strip(": "))
        code = response.status_code
        if 200 <= code < 300:
            return Outcome(DeliveryStatus.SUCCEEDED, status_code=code)
        if code in RETRYABLE_STATUSES or code >= 500:
            asked = retry_after_s(response.headers.get("retry-after"))
            return self._again(row, code, f"HTTP {code}", asked_s=asked)
        if 300 <= code < 400:
            where = response.headers.get("location", "")
            return Outcome(
                DeliveryStatus.FAILED, code, f"HTTP {code}: redirect to {where!r} not followed"[:500]
            )
        return Outcome(DeliveryStatus.FAILED, code, f"HTTP {code}: not retried (only 408, 429, 5xx are)")

    def _again(self, row: Any, code: int | None, error: str, *, asked_s: float | None = None) -> Outcome:
        """A passing failure: another try after a backoff, or after `asked_s` (the receiver's Retry-After)
        if that is longer, never past the backoff's cap; unless the tries are used up."""
        config = self.settings.webhook
        if row["attempts"] >= config.max_attempts:
            return Outcome(DeliveryStatus.FAILED, code, f"gave up after {row['attempts']} tries: {error}")
        wait = backoff_s(row["attempts"], base_s=config.backoff_base_s, cap_s=config.backoff_cap_s)
        if asked_s is not None:
            wait = min(config.backoff_cap_s, max(wait, asked_s))
            error = f"{error} (Retry-After: {asked_s:.0f} s)"
        return Outcome(DeliveryStatus.PENDING, code, error, retry_in_s=wait)

    async def _target(self, url: str) -> Target:
        """Resolve the URL's host and check every address; the URL pinned to each of them."""
        try:
            original = parse_callback_url(url, allow_http=self.settings.gateway.callback_allow_http)
        except BadCallbackURL as exc:  # stored before submission refused such URLs: no try will do better
            raise Refused(str(exc)) from exc
        host = original.raw_host.decode("ascii")  # IDNA applied: what Host, SNI and the resolver all get
        addresses = await addresses_of(original)
        if not addresses:
            raise socket.gaierror(f"{host} resolved to no address")
        if not self.settings.gateway.callback_allow_private:
            for address in addresses:
                if not is_public(address):
                    raise Refused(
                        f"refused: {host!r} resolves to the non-public address {address}; "
                        "webhooks are only sent to public addresses"
                    )
        return Target(
            urls=[original.copy_with(host=address) for address in addresses],
            host_header=original.netloc.decode("ascii"),
            sni_hostname=host if original.scheme == "https" else None,
        )

    async def _record(self, row: Any, outcome: Outcome) -> None:
        wd = webhook_deliveries
        values: dict[str, Any] = {
            "status": outcome.status.value,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "next_attempt_at": None,
        }
        if outcome.status == DeliveryStatus.SUCCEEDED:
            values["delivered_at"] = func.now()
        if outcome.retry_in_s is not None:
            values["next_attempt_at"] = func.now() + timedelta(seconds=outcome.retry_in_s)
        async with self._recording, self.db.session() as session:
            await session.execute(
                update(wd)
                .where(
                    wd.c.id == row["id"],
                    wd.c.status == DeliveryStatus.DELIVERING,
                    wd.c.attempts == row["attempts"],
                )
                .values(values)
            )
            await session.commit()
        level = logging.INFO if outcome.status == DeliveryStatus.SUCCEEDED else logging.WARNING
        log.log(
            level,
            "webhook %s of job %s: %s (try %d%s)",
            row["id"],
            row["job_id"],
            outcome.status.value,
            row["attempts"],
            f", {outcome.error}" if outcome.error else "",
            extra={"job_id": row["job_id"], "delivery_id": row["id"], "attempt": row["attempts"]},
        )


async def _post(
    client: httpx.AsyncClient, target: Target, *, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    """POST to the target's addresses in turn until one takes the connection (a name may have an IPv6
    address this host cannot reach); the response, closed unread: only its status matters, and a
    receiver cannot make the relay hold a large body."""
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
    *others, last = target.urls
    for url in others:
        with contextlib.suppress(httpx.ConnectError):
            return await _send(client, url, body=body, headers=headers, extensions=extensions)
    return await _send(client, last, body=body, headers=headers, extensions=extensions)


async def _send(
    client: httpx.AsyncClient,
    url: httpx.URL,
    *,
    body: bytes,
    headers: dict[str, str],
    extensions: dict[str, Any],
) -> httpx.Response:
    request = client.build_request("POST", url, content=body, headers=headers, extensions=extensions)
    response = await client.send(request, stream=True)
    await response.aclose()
    return response


def _log_failure(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("webhook round failed (%s); the next round retries", exc)
