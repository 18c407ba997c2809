"""The webhook dispatcher, a duty of the relay: sends the deliveries that `jobstore.transition` owes.

Each round claims the due deliveries (`pending`, or `delivering` past its claim: a relay stopped mid-send)
with `FOR UPDATE SKIP LOCKED`, marks them `delivering` with a claim that outlasts one try, and commits:
no transaction is held open across the network. Then each is POSTed, and its outcome recorded with a
compare-and-set on (delivering, this try), so a slow relay whose claim was taken over changes nothing.
Delivery is at least once: a receiver drops repeats by `X-MediaLens-Delivery`.

    2xx                                   -> succeeded
    408, 429, 5xx, network error, timeout -> pending again after an exponential backoff with jitter;
                                             failed after `webhook.max_attempts` tries
    any other status (4xx, 3xx)           -> failed at once (redirects are never followed)
    host is or resolves to a non-public   -> failed at once, nothing sent
    address (private, loopback, link-local, metadata), unless `gateway.callback_allow_private`

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
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, or_, select, update

from medialens_gateway.jobs.callbacks import is_public
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
    """The callback's target may not be sent to (a non-public address, or a scheme not allowed)."""


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


class Dispatcher:
    def __init__(self, *, settings: Settings, db: DatabaseManager) -> None:
        self.settings = settings
        self.db = db
        self._round: asyncio.Task[int] | None = None

    def kick(self) -> None:
        """Start a round in the background unless one is running: a slow receiver never holds up the
        relay's other duties."""
        if self._round is None or self._round.done():
            self._round = asyncio.create_task(self.dispatch_once(), name="webhooks")
            self._round.add_done_callback(_log_failure)

    async def drain(self) -> None:
        """Wait for the round in flight (at stop), so its outcomes are recorded."""
        if self._round is not None:
            with contextlib.suppress(Exception):
                await self._round

    async def dispatch_once(self) -> int:
        """Claim the due deliveries, send them, record how each went; how many were tried."""
        claimed, secrets = await self._claim()
        if not claimed:
            return 0
        async with httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=self.settings.webhook.timeout_s
        ) as client:
            outcomes = await asyncio.gather(
                *(self._try(client, row, secrets[row["tenant_id"]]) for row in claimed)
            )
        await self._record(list(zip(claimed, outcomes, strict=True)))
        return len(claimed)

    async def _claim(self) -> tuple[list[Any], dict[str, str]]:
        wd = webhook_deliveries
        due = (
            select(wd.c.id)
            .where(
                or_(wd.c.status == DeliveryStatus.PENDING, wd.c.status == DeliveryStatus.DELIVERING),
                wd.c.next_attempt_at <= func.now(),
            )
            .order_by(wd.c.next_attempt_at)
            .limit(self.settings.webhook.batch_size)
            .with_for_update(skip_locked=True)
        )
        claim = timedelta(seconds=self.settings.webhook.timeout_s + CLAIM_MARGIN_S)
        async with self.db.session() as session:
            rows = (
                (
                    await session.execute(
                        update(wd)
                        .where(wd.c.id.in_(due.scalar_subquery()))
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
        return list(rows), secrets

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
            return self._again(row, code, f"HTTP {code}")
        if 300 <= code < 400:
            where = response.headers.get("location", "")
            return Outcome(
                DeliveryStatus.FAILED, code, f"HTTP {code}: redirect to {where!r} not followed"[:500]
            )
        return Outcome(DeliveryStatus.FAILED, code, f"HTTP {code}: not retried (only 408, 429, 5xx are)")

    def _again(self, row: Any, code: int | None, error: str) -> Outcome:
        """A passing failure: another try after a backoff, unless the tries are used up."""
        config = self.settings.webhook
        if row["attempts"] >= config.max_attempts:
            return Outcome(DeliveryStatus.FAILED, code, f"gave up after {row['attempts']} tries: {error}")
        wait = backoff_s(row["attempts"], base_s=config.backoff_base_s, cap_s=config.backoff_cap_s)
        return Outcome(DeliveryStatus.PENDING, code, error, retry_in_s=wait)

    async def _target(self, url: str) -> Target:
        """Resolve the URL's host and check every address; the URL pinned to each of them."""
        parts = urlsplit(url)
        allowed = ("https", "http") if self.settings.gateway.callback_allow_http else ("https",)
        if parts.scheme not in allowed or not parts.hostname:
            raise Refused(f"callback_url must be an absolute {' or '.join(allowed)}:// URL")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in infos))
        if not addresses:
            raise socket.gaierror(f"{host} resolved to no address")
        if not self.settings.gateway.callback_allow_private:
            for address in addresses:
                if not is_public(address):
                    raise Refused(
                        f"refused: {host!r} resolves to the non-public address {address}; "
                        "webhooks are only sent to public addresses"
                    )
        original = httpx.URL(url)
        return Target(
            urls=[original.copy_with(host=address) for address in addresses],
            host_header=original.netloc.decode("ascii"),
            sni_hostname=host if parts.scheme == "https" else None,
        )

    async def _record(self, tried: list[tuple[Any, Outcome]]) -> None:
        wd = webhook_deliveries
        async with self.db.session() as session:
            for row, outcome in tried:
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
                await session.execute(
                    update(wd)
                    .where(
                        wd.c.id == row["id"],
                        wd.c.status == DeliveryStatus.DELIVERING,
                        wd.c.attempts == row["attempts"],
                    )
                    .values(values)
                )
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
            await session.commit()


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
