"""Webhooks on real servers: a terminal job owes one signed POST, the dispatcher retries what may heal (no
sooner than a Retry-After asks) and stops on what will not or when its tries run out, never follows a
redirect nor sends to a non-public address unless allowed, keeps one delivery's trouble (a bad URL, an
error, a slow receiver) from the others, and the tenant reads and re-arms its deliveries through the API.

These tests run on a gateway and database of their own, with no relay: the stack's relay refuses loopback
callbacks (as production must), so it would fail the deliveries aimed at this test's receiver on
127.0.0.1. Here the tests drive the dispatcher themselves, one `dispatch_once()` at a time. The last test
uses the stack, to show its relay's loop dispatches (and refuses such a callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select, update

from medialens_gateway import webhooks as hook_module
from medialens_gateway.main import create_app
from medialens_gateway.webhooks import Dispatcher, Target
from medialens_shared import jobstore, migrate, webhooks
from medialens_shared.contracts import JobStatus
from medialens_shared.db import DatabaseManager
from medialens_shared.settings import Settings, WebhookSettings
from medialens_shared.tables import jobs, tenants, webhook_deliveries
from scripts.samples import make_csv
from tests.fixtures.servers import TENANT_KEYS, drop_database, make_settings
from tests.fixtures.stack import Stack, api_client, submit, upload

from .conftest import EnvelopeCheck, HangingDNS


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny real HTTP/1.1 server on 127.0.0.1: records every request and answers each path with the
    (status, headers) scripted for it, in turn (the last one repeats; 200 when none is scripted); a path
    with an event in `hold` is answered only once the event is set."""

    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self, path: str, *, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def to(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {}
            for line in filter(None, head[1:]):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, path, headers, body))
            if path in self.hold:
                await self.hold[path].wait()
            answers = self.script.get(path, [])
            status, extra = answers.pop(0) if len(answers) > 1 else (answers or [(200, {})])[0]
            lines = [
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                "Content-Length: 2",
                "Connection: close",
            ]
            lines += [f"{name}: {value}" for name, value in extra.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\nok").encode())
            await writer.drain()
        finally:
            writer.close()


@dataclass
class Hooks:
    settings: Settings
    db: DatabaseManager
    dispatcher: Dispatcher
    clients: dict[str, httpx.AsyncClient]


@pytest.fixture(scope="module")
async def hooks(run_id: str, mongo_url: str, rabbit_vhost: str) -> AsyncIterator[Hooks]:
    """A gateway on a database of its own that accepts loopback callbacks, and a dispatcher allowed to
    send to them with a short backoff."""
    name = f"{run_id}_hooks"
    base = make_settings(run_id=name, mongo_url=mongo_url, vhost=rabbit_vhost)
    settings = base.model_copy(
        update={
            "gateway": base.gateway.model_copy(update={"callback_allow_private": True}),
            "webhook": WebhookSettings(
                max_attempts=3, timeout_s=5.0, backoff_base_s=0.01, backoff_cap_s=0.02
            ),
        }
    )
    await asyncio.to_thread(migrate.upgrade, settings.postgres.url.get_secret_value())
    app = create_app(settings)
    db = DatabaseManager(settings, name="tests-webhooks")
    try:
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            await db.initialize_all()
            clients = {tenant: api_client(manager.app, key=key) for tenant, key in TENANT_KEYS.items()}
            yield Hooks(settings, db, Dispatcher(settings=settings, db=db), clients)
            for client in clients.values():
                await client.aclose()
    finally:
        await db.close_all()
        await drop_database(f"medialens_test_{name}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    async with server:
        yield receiver


@pytest.fixture
async def csv_id(hooks: Hooks, tmp_path: Path) -> str:
    path = tmp_path / "t.csv"
    make_csv(path, rows=5)
    return await upload(hooks.clients["tenant-a"], path)


async def job_with_callback(hooks: Hooks, file_id: str, url: str, *, tenant: str = "tenant-a") -> str:
    """A job with `url` as its callback; it stays queued (no relay here) until the test ends it."""
    job = await submit(hooks.clients[tenant], "data.profile", file_id, callback_url=url)
    return str(job["id"])


async def job_stored_with_callback(db: DatabaseManager, url: str) -> str:
    """A queued job whose callback_url never met the check at submission (a row stored before the check
    refused such URLs, or one whose name resolves elsewhere since)."""
    job_id = str(uuid.uuid4())
    async with db.session() as session:
        await session.execute(
            jobs.insert().values(
                id=job_id,
                tenant_id="tenant-a",
                type="data.profile",
                status="queued",
                callback_url=url,
                message="queued",
            )
        )
        await session.commit()
    return job_id


async def finish(hooks: Hooks, job_id: str, to: JobStatus = JobStatus.SUCCEEDED) -> None:
    """End the job as a worker does: claimed (queued -> running), then a terminal compare-and-set."""
    async with hooks.db.session() as session:
        await jobstore.transition(
            session, job_id=job_id, from_statuses=[JobStatus.QUEUED], to=JobStatus.RUNNING
        )
        await jobstore.transition(
            session, job_id=job_id, from_statuses=[JobStatus.RUNNING], to=to, message="done"
        )
        await session.commit()


async def deliveries_of(hooks: Hooks, job_id: str) -> list[dict[str, Any]]:
    query = (
        select(webhook_deliveries)
        .where(webhook_deliveries.c.job_id == job_id)
        .order_by(webhook_deliveries.c.created_at)
    )
    async with hooks.db.session() as session:
        return [dict(row) for row in (await session.execute(query)).mappings().all()]


async def statuses_of(hooks: Hooks, *job_ids: str) -> list[str]:
    """The statuses of the jobs' deliveries, job by job."""
    return [delivery["status"] for job_id in job_ids for delivery in await deliveries_of(hooks, job_id)]


async def dispatch_all(hooks: Hooks, dispatcher: Dispatcher | None = None) -> None:
    """Run dispatcher rounds until no delivery is pending or being sent."""
    dispatcher = dispatcher or hooks.dispatcher
    open_ = select(webhook_deliveries.c.id).where(webhook_deliveries.c.status.in_(["pending", "delivering"]))
    for _ in range(200):
        await dispatcher.dispatch_once()
        async with hooks.db.session() as session:
            if not (await session.execute(open_)).first():
                return
        await asyncio.sleep(0.01)
    pytest.fail("deliveries still open after 200 rounds")


async def secret_of(hooks: Hooks, tenant: str) -> str:
    async with hooks.db.session() as session:
        secret = await session.scalar(select(tenants.c.webhook_secret).where(tenants.c.id == tenant))
    assert secret
    return str(secret)


async def test_each_terminal_job_is_posted_once_with_a_valid_signature(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """A job that succeeds and one cancelled through the API each get exactly one signed POST of their job
    object, with a unique delivery id and the event named after the status."""
    api = hooks.clients["tenant-a"]
    done = await job_with_callback(hooks, csv_id, receiver.url("/hook/done"))
    cancelled = await job_with_callback(hooks, csv_id, receiver.url("/hook/cancelled"))
    await finish(hooks, done)
    assert (await api.post(f"/v1/jobs/{cancelled}/cancel")).status_code == 202

    await dispatch_all(hooks)
    await hooks.dispatcher.dispatch_once()  # a later round sends nothing again

    secret = await secret_of(hooks, "tenant-a")
    seen_ids = set()
    for job_id, path, status in (
        (done, "/hook/done", "succeeded"),
        (cancelled, "/hook/cancelled", "cancelled"),
    ):
        [request] = receiver.to(path)
        [delivery] = await deliveries_of(hooks, job_id)
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-medialens-signature"] == webhooks.signature(secret, request.body)
        assert request.headers["x-medialens-event"] == f"job.{status}"
        assert request.headers["x-medialens-delivery"] == delivery["id"]
        seen_ids.add(delivery["id"])
        job = (await api.get(f"/v1/jobs/{job_id}")).json()["data"]
        assert httpx.Response(200, content=request.body).json() == job
        assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
            "succeeded",
            1,
            200,
        )
        assert delivery["delivered_at"] is not None
    assert len(seen_ids) == 2


async def test_a_round_loads_no_certificates(
    hooks: Hooks, receiver: Receiver, csv_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher loads the certificates it checks receivers against once, not in each round (18 ms
    of CPU on the relay's event loop a round)."""
    job = await job_with_callback(hooks, csv_id, receiver.url("/hook/tls"))
    await finish(hooks, job)
    loads: list[object] = []
    loading = ssl.SSLContext.load_verify_locations

    def load(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        loading(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", load)
    await dispatch_all(hooks)
    assert len(receiver.to("/hook/tls")) == 1
    assert loads == []


async def test_a_job_owes_a_delivery_only_when_it_ends_with_a_callback(hooks: Hooks, csv_id: str) -> None:
    """Running owes nothing; ending without a callback_url owes nothing."""
    api = hooks.clients["tenant-a"]
    job = await submit(api, "data.profile", csv_id)
    async with hooks.db.session() as session:
        await jobstore.transition(
            session, job_id=job["id"], from_statuses=[JobStatus.QUEUED], to=JobStatus.RUNNING
        )
        await session.commit()
    assert await deliveries_of(hooks, job["id"]) == []
    await finish(hooks, job["id"], JobStatus.FAILED)  # already running: only the terminal step applies
    assert await deliveries_of(hooks, job["id"]) == []


async def test_a_server_error_is_retried_until_it_succeeds(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """A 500 answer is retried after a backoff, with the same delivery id and body; the 200 ends it."""
    receiver.script["/flaky"] = [(500, {}), (200, {})]
    job_id = await job_with_callback(hooks, csv_id, receiver.url("/flaky"))
    await finish(hooks, job_id)
    await dispatch_all(hooks)
    [delivery] = await deliveries_of(hooks, job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 2, 200)
    first, second = receiver.to("/flaky")
    assert first.headers["x-medialens-delivery"] == second.headers["x-medialens-delivery"] == delivery["id"]
    assert first.body == second.body


async def test_a_client_error_stops_the_retries(hooks: Hooks, receiver: Receiver, csv_id: str) -> None:
    """A 404 answer fails the delivery at once: one try, no more."""
    receiver.script["/gone"] = [(404, {})]
    job_id = await job_with_callback(hooks, csv_id, receiver.url("/gone"))
    await finish(hooks, job_id)
    await dispatch_all(hooks)
    await hooks.dispatcher.dispatch_once()
    [delivery] = await deliveries_of(hooks, job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 1, 404)
    assert delivery["next_attempt_at"] is None
    assert len(receiver.to("/gone")) == 1


async def test_rate_limits_and_network_errors_are_retried_up_to_the_limit(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """429 and 408 are retried like a 5xx, and so is a refused connection; after max_attempts tries it
    fails (a 408 first, then 429s: each try's status counts)."""
    receiver.script["/busy"] = [(408, {}), (429, {})]
    busy = await job_with_callback(hooks, csv_id, receiver.url("/busy"))
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound but not listening: connections are refused
        down = await job_with_callback(hooks, csv_id, f"http://127.0.0.1:{closed_port}/hook")
        await finish(hooks, busy)
        await finish(hooks, down)
        await dispatch_all(hooks)
    [busy_delivery] = await deliveries_of(hooks, busy)
    [down_delivery] = await deliveries_of(hooks, down)
    assert (busy_delivery["status"], busy_delivery["attempts"], busy_delivery["last_status_code"]) == (
        "failed",
        3,
        429,
    )
    assert len(receiver.to("/busy")) == 3
    assert (down_delivery["status"], down_delivery["attempts"]) == ("failed", 3)
    assert down_delivery["last_status_code"] is None
    assert "network error" in down_delivery["last_error"]


async def test_a_redirect_is_not_followed(hooks: Hooks, receiver: Receiver, csv_id: str) -> None:
    """A 302 fails the delivery; nothing is sent to where it points."""
    receiver.script["/moved"] = [(302, {"Location": receiver.url("/elsewhere")})]
    job_id = await job_with_callback(hooks, csv_id, receiver.url("/moved"))
    await finish(hooks, job_id)
    await dispatch_all(hooks)
    [delivery] = await deliveries_of(hooks, job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 1, 302)
    assert "not followed" in delivery["last_error"]
    assert receiver.to("/elsewhere") == []


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "169.254.169.254"])
async def test_a_non_public_address_is_refused_when_not_allowed(
    hooks: Hooks, receiver: Receiver, csv_id: str, host: str
) -> None:
    """A dispatcher not allowed private addresses resolves the host and fails the delivery without
    sending anything (the callback passed submission, as a name that later points inward would)."""
    strict_settings = hooks.settings.model_copy(
        update={"gateway": hooks.settings.gateway.model_copy(update={"callback_allow_private": False})}
    )
    strict = Dispatcher(settings=strict_settings, db=hooks.db)
    job_id = await job_with_callback(hooks, csv_id, receiver.url("/inward", host=host))
    await finish(hooks, job_id)
    await dispatch_all(hooks, strict)
    [delivery] = await deliveries_of(hooks, job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 1, None)
    assert "non-public address" in delivery["last_error"]
    assert receiver.requests == []


async def test_the_tenant_lists_its_deliveries_and_redelivers_one(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """GET deliveries lists the log; redeliver makes a new pending delivery, sent with a new id."""
    api = hooks.clients["tenant-a"]
    job_id = await job_with_callback(hooks, csv_id, receiver.url("/log"))
    await finish(hooks, job_id)
    await dispatch_all(hooks)

    listed = await api.get(f"/v1/jobs/{job_id}/deliveries")
    assert listed.status_code == 200, listed.text
    page = listed.json()["data"]
    assert page["next_cursor"] is None
    [first] = page["items"]
    assert first["url"] == receiver.url("/log")
    assert (first["status"], first["attempts"], first["last_status_code"]) == ("succeeded", 1, 200)
    assert first["event"] == "job.succeeded"
    assert first["created_at"].endswith("Z")
    assert first["delivered_at"].endswith("Z")
    assert (first["last_error"], first["next_attempt_at"]) == (None, None)

    again = await api.post(f"/v1/jobs/{job_id}/deliveries/{first['id']}/redeliver")
    assert again.status_code == 202, again.text
    second = again.json()["data"]
    assert second["id"] != first["id"]
    assert (second["status"], second["attempts"]) == ("pending", 0)
    await dispatch_all(hooks)

    one, two = receiver.to("/log")
    assert one.body == two.body
    assert [one.headers["x-medialens-delivery"], two.headers["x-medialens-delivery"]] == [
        first["id"],
        second["id"],
    ]
    items = (await api.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]["items"]
    assert [(item["id"], item["status"]) for item in items] == [
        (first["id"], "succeeded"),
        (second["id"], "succeeded"),
    ]


async def test_deliveries_page_oldest_first_as_every_list_does(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """The deliveries list takes `limit` and `cursor` as API.md has every list take them (it gave every
    delivery whatever they said, and 200 for a limit of 0 or a cursor it never gave out)."""
    api = hooks.clients["tenant-a"]
    job_id = await job_with_callback(hooks, csv_id, receiver.url("/paged"))
    await finish(hooks, job_id)
    await dispatch_all(hooks)
    [first] = (await api.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]["items"]
    for _ in range(4):
        assert (await api.post(f"/v1/jobs/{job_id}/deliveries/{first['id']}/redeliver")).status_code == 202
    everything = (await api.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]["items"]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get(f"/v1/jobs/{job_id}/deliveries", params=params)).json()["data"]
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [item["id"] for item in everything]
    assert len(seen) == 5
    assert seen[0] == first["id"]
    for params in ({"limit": 0}, {"limit": 201}, {"cursor": "garbage"}):
        response = await api.get(f"/v1/jobs/{job_id}/deliveries", params=params)
        assert response.status_code == 422, (params, response.text)
    # Another job's deliveries refuse this job's cursor (they were listed after its place, silently).
    other = await job_with_callback(hooks, csv_id, receiver.url("/other"))
    mine = (await api.get(f"/v1/jobs/{job_id}/deliveries", params={"limit": 2})).json()["data"]["next_cursor"]
    response = await api.get(f"/v1/jobs/{other}/deliveries", params={"cursor": mine})
    assert response.status_code == 422, response.text


async def test_another_tenants_deliveries_answer_404(hooks: Hooks, receiver: Receiver, csv_id: str) -> None:
    """Tenant B cannot list or redeliver tenant A's deliveries, nor redeliver an unknown one."""
    job_id = await job_with_callback(hooks, csv_id, receiver.url("/private"))
    await finish(hooks, job_id)
    [delivery] = await deliveries_of(hooks, job_id)
    other = hooks.clients["tenant-b"]
    listed = await other.get(f"/v1/jobs/{job_id}/deliveries")
    assert (listed.status_code, listed.json()["error_code"]) == (404, "NOT_FOUND")
    redone = await other.post(f"/v1/jobs/{job_id}/deliveries/{delivery['id']}/redeliver")
    assert (redone.status_code, redone.json()["error_code"]) == (404, "NOT_FOUND")
    unknown = await hooks.clients["tenant-a"].post(f"/v1/jobs/{job_id}/deliveries/no-such-id/redeliver")
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, "NOT_FOUND")
    await dispatch_all(hooks)


async def test_a_name_is_sent_to_its_checked_address_with_its_own_host_header(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """A callback by name (allowed private here) connects to an address the name resolved to, and the
    request still names the original host."""
    job_id = await job_with_callback(hooks, csv_id, receiver.url("/named", host="localhost"))
    await finish(hooks, job_id)
    await dispatch_all(hooks)
    [delivery] = await deliveries_of(hooks, job_id)
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 1)
    [request] = receiver.to("/named")
    assert request.headers["host"] == f"localhost:{receiver.port}"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook\x01",
        "http://127.0.0.1:9/ho\nok",
        " http://127.0.0.1:9/hook",
        "http://exa mple.com/hook",
        "http://a..b/hook",
        "http://" + "a" * 64 + ".example/hook",
    ],
)
async def test_a_url_that_cannot_be_sent_is_refused_at_submission_even_where_private_is_allowed(
    hooks: Hooks, csv_id: str, envelope: EnvelopeCheck, url: str
) -> None:
    """A control character or whitespace anywhere, or a host the resolver cannot take, answers 422, also on
    a gateway that allows private callbacks (and so resolves nothing at submission)."""
    response = await hooks.clients["tenant-a"].post(
        "/v1/jobs", json={"type": "data.profile", "file_id": csv_id, "callback_url": url}
    )
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert body["data"]["details"][0]["loc"] == ["body", "callback_url"]


async def test_a_stored_url_that_cannot_be_sent_fails_only_its_own_delivery(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """In one round with a good delivery, one whose URL has a control character and one whose host IDNA
    refuses each fail at once, nothing sent; the good one is sent once and succeeds."""
    good = await job_with_callback(hooks, csv_id, receiver.url("/beside-bad"))
    control = await job_stored_with_callback(hooks.db, receiver.url("/bad\x01"))
    idna = await job_stored_with_callback(hooks.db, f"http://a..b:{receiver.port}/bad")
    for job_id in (good, control, idna):
        await finish(hooks, job_id)

    assert await hooks.dispatcher.dispatch_once() == 3
    await dispatch_all(hooks)

    [delivered] = await deliveries_of(hooks, good)
    assert (delivered["status"], delivered["attempts"]) == ("succeeded", 1)
    assert len(receiver.to("/beside-bad")) == 1
    for job_id, why in ((control, "control characters"), (idna, "not a valid host name")):
        [refused] = await deliveries_of(hooks, job_id)
        assert (refused["status"], refused["attempts"], refused["next_attempt_at"]) == ("failed", 1, None)
        assert why in refused["last_error"]
    assert [request.path for request in receiver.requests] == ["/beside-bad"]


async def test_an_unexpected_error_in_one_try_fails_only_that_try(
    hooks: Hooks, receiver: Receiver, csv_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A try that raises what nobody foresaw (here a RuntimeError injected into sending) is recorded as a
    failed try and retried until its tries run out; the delivery sharing its rounds succeeds once."""
    real_post = hook_module._post

    async def post(client: httpx.AsyncClient, target: Target, **kwargs: Any) -> httpx.Response:
        if target.urls[0].path == "/boom":
            raise RuntimeError("boom")
        return await real_post(client, target, **kwargs)

    monkeypatch.setattr(hook_module, "_post", post)
    fine = await job_with_callback(hooks, csv_id, receiver.url("/fine"))
    boom = await job_with_callback(hooks, csv_id, receiver.url("/boom"))
    await finish(hooks, fine)
    await finish(hooks, boom)

    await dispatch_all(hooks)

    [delivered] = await deliveries_of(hooks, fine)
    assert (delivered["status"], delivered["attempts"]) == ("succeeded", 1)
    assert len(receiver.to("/fine")) == 1
    [broken] = await deliveries_of(hooks, boom)
    assert (broken["status"], broken["attempts"], broken["next_attempt_at"]) == ("failed", 3, None)
    assert broken["last_error"] == "gave up after 3 tries: unexpected error: RuntimeError: boom"


async def test_a_delivery_whose_last_try_was_never_recorded_is_failed_not_sent_again(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """A delivery left `delivering` past its claim (its relay stopped mid-send) is claimed and sent again
    while tries remain; at the last one it fails, saying why, with nothing sent and no try added."""
    spent = await job_with_callback(hooks, csv_id, receiver.url("/spent"))
    left = await job_with_callback(hooks, csv_id, receiver.url("/left"))
    for job_id, attempts in ((spent, 3), (left, 2)):
        await finish(hooks, job_id)
        async with hooks.db.session() as session:
            await session.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.job_id == job_id)
                .values(
                    status="delivering",
                    attempts=attempts,
                    next_attempt_at=func.now() - timedelta(seconds=1),
                )
            )
            await session.commit()

    await dispatch_all(hooks)

    [given_up] = await deliveries_of(hooks, spent)
    assert (given_up["status"], given_up["attempts"], given_up["next_attempt_at"]) == ("failed", 3, None)
    assert given_up["last_error"].startswith("gave up after 3 tries: the last one's outcome was never")
    assert receiver.to("/spent") == []
    [retried] = await deliveries_of(hooks, left)
    assert (retried["status"], retried["attempts"]) == ("succeeded", 3)
    assert len(receiver.to("/left")) == 1


async def test_a_slow_receiver_delays_no_other_delivery(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """While one receiver has not answered, a delivery of the same round is recorded as soon as its answer
    comes, and one owed later is sent and recorded by a round of its own, well within the slow try's
    timeout."""
    slow_answer = receiver.hold["/slow"] = asyncio.Event()
    slow = await job_with_callback(hooks, csv_id, receiver.url("/slow"))
    same_round = await job_with_callback(hooks, csv_id, receiver.url("/same-round"))
    later = await job_with_callback(hooks, csv_id, receiver.url("/later"))
    await finish(hooks, slow)
    await finish(hooks, same_round)
    dispatcher = Dispatcher(settings=hooks.settings, db=hooks.db)
    deadline = time.monotonic() + hooks.settings.webhook.timeout_s / 2

    async def succeeded(job_id: str) -> bool:
        dispatcher.kick()  # as the relay does every poll interval
        [delivery] = await deliveries_of(hooks, job_id)
        return bool(delivery["status"] == "succeeded")

    try:
        while not (await succeeded(same_round) and receiver.to("/slow")):
            assert time.monotonic() < deadline, "the same round's delivery waited for the slow one"
            await asyncio.sleep(0.02)
        await finish(hooks, later)
        while not await succeeded(later):
            assert time.monotonic() < deadline, "a later delivery waited for the slow one"
            await asyncio.sleep(0.02)
        [waiting] = await deliveries_of(hooks, slow)
        assert (waiting["status"], len(receiver.to("/slow"))) == ("delivering", 1)
    finally:
        slow_answer.set()
        await dispatcher.drain()
    [answered] = await deliveries_of(hooks, slow)
    assert (answered["status"], answered["attempts"]) == ("succeeded", 1)


async def test_callback_names_whose_dns_hangs_delay_no_other_delivery(
    hooks: Hooks, receiver: Receiver, hanging_dns: HangingDNS
) -> None:
    """While six deliveries wait on a callback name whose name server never answers, a job that ends with
    its callback on an IP literal, and one on a name that resolves at once, are each sent and succeed well
    within one try's timeout; the hanging name is looked up once, not once a try. Before, those lookups held
    the loop's default executor for as long as the resolver took (the try's timeout stops the wait, not the
    thread): the healthy delivery to the IP literal failed after 3 tries "network error: TimeoutError", its
    receiver never asked."""
    hanging_dns.hanging.add("hooks.slow-dns.example")
    hanging = [
        await job_stored_with_callback(hooks.db, f"http://hooks.slow-dns.example:{receiver.port}/slow-{i}")
        for i in range(6)
    ]
    for job_id in hanging:
        await finish(hooks, job_id)
    dispatcher = Dispatcher(settings=hooks.settings, db=hooks.db)  # timeout_s 5, max_attempts 3
    dispatcher.kick()
    await asyncio.sleep(0.5)  # the hanging lookups under way
    literal = await job_stored_with_callback(hooks.db, receiver.url("/by-literal"))
    named = await job_stored_with_callback(hooks.db, receiver.url("/by-name", host="localhost"))
    await finish(hooks, literal)
    await finish(hooks, named)
    deadline = time.monotonic() + hooks.settings.webhook.timeout_s / 2
    try:
        while True:
            dispatcher.kick()  # as the relay does every poll interval
            statuses = await statuses_of(hooks, literal, named)
            if statuses == ["succeeded", "succeeded"]:
                break
            assert time.monotonic() < deadline, statuses
            await asyncio.sleep(0.05)
        assert (len(receiver.to("/by-literal")), len(receiver.to("/by-name"))) == (1, 1)
        assert hanging_dns.calls["hooks.slow-dns.example"] == 1
        assert await statuses_of(hooks, *hanging) == ["delivering"] * 6
    finally:
        hanging_dns.release()  # the name server's failure comes: the hanging ones fail their tries at once
        while {"pending", "delivering"} & set(await statuses_of(hooks, *hanging)):
            dispatcher.kick()
            await asyncio.sleep(0.05)
        await dispatcher.drain()
    for job_id in hanging:
        [delivery] = await deliveries_of(hooks, job_id)
        assert (delivery["status"], delivery["attempts"]) == ("failed", 3)
        assert "gaierror" in delivery["last_error"]
    assert not any(request.path.startswith("/slow-") for request in receiver.requests)


async def test_a_retry_waits_as_long_as_retry_after_asks_up_to_the_cap(
    hooks: Hooks, receiver: Receiver, csv_id: str
) -> None:
    """A 429 or 503 with Retry-After (seconds or an HTTP-date) is tried again no sooner than it asks, and
    no later than the backoff's cap (one of 400 digits read as at most a year, not "inf s"); an unreadable
    one leaves the backoff alone."""
    patient = hooks.settings.webhook.model_copy(update={"backoff_base_s": 1.0, "backoff_cap_s": 600.0})
    settings = hooks.settings.model_copy(update={"webhook": patient})
    in_300_s = format_datetime(datetime.now(UTC) + timedelta(seconds=300), usegmt=True)
    answers = {
        "/after-120": (429, {"Retry-After": "120"}),
        "/after-date": (503, {"Retry-After": in_300_s}),
        "/after-3600": (429, {"Retry-After": "3600"}),
        "/after-junk": (503, {"Retry-After": "soon"}),
        "/after-ever": (429, {"Retry-After": "9" * 400}),
    }
    job_ids = {}
    for path, answer in answers.items():
        receiver.script[path] = [answer]
        job_ids[path] = await job_with_callback(hooks, csv_id, receiver.url(path))
        await finish(hooks, job_ids[path])
    try:
        await Dispatcher(settings=settings, db=hooks.db).dispatch_once()
        waits = {}
        async with hooks.db.session() as session:
            now = await session.scalar(select(func.now()))
        for path, job_id in job_ids.items():
            [delivery] = await deliveries_of(hooks, job_id)
            assert (delivery["status"], delivery["attempts"]) == ("pending", 1), delivery
            waits[path] = (delivery["next_attempt_at"] - now).total_seconds()
        assert 115 <= waits["/after-120"] <= 120, waits
        assert 290 <= waits["/after-date"] <= 301, waits
        assert 595 <= waits["/after-3600"] <= 600, waits
        assert 0 <= waits["/after-junk"] <= 1, waits
        assert 595 <= waits["/after-ever"] <= 600, waits
        [forever] = await deliveries_of(hooks, job_ids["/after-ever"])
        assert forever["last_error"] == "HTTP 429 (Retry-After: 31536000 s)", forever
    finally:  # out of the way of the later tests' rounds
        async with hooks.db.session() as session:
            await session.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.job_id.in_(job_ids.values()))
                .values(status="failed", next_attempt_at=None)
            )
            await session.commit()


async def test_the_stacks_relay_dispatches_and_refuses_an_inward_callback(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, receiver: Receiver
) -> None:
    """The relay's own loop sends deliveries: on the stack (private addresses not allowed), a job whose
    callback points at loopback (stored as if its name changed after submission) ends with its delivery
    failed and nothing sent."""
    job_id = await job_stored_with_callback(db, receiver.url("/inward", host="localhost"))
    assert (await api.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
    deadline = time.monotonic() + 20
    while True:
        [item] = (await api.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]["items"]
        if item["status"] == "failed":
            break
        assert time.monotonic() < deadline, item
        await asyncio.sleep(0.05)
    assert "non-public address" in item["last_error"]
    assert item["event"] == "job.cancelled"
    assert receiver.requests == []


async def test_a_delivery_claimed_again_while_its_first_round_waits_keeps_the_bound_of_tries(
    settings: Settings,
) -> None:
    """The dispatcher's own accounting, with its claims and records stubbed: round A sends X and Y, X is
    answered (and due again), round B claims X again while A still waits on Y; when Y ends, A must free
    its own places only. It freed X's too (the places were counted by id), so a third round ran three
    tries at once with `batch_size` 2."""
    queue = [["X", "Y"], ["X"], ["P", "Q"]]  # what successive claims return
    gates: dict[str, asyncio.Event] = {}
    in_flight = peak = 0

    class Stubbed(Dispatcher):
        async def _claim(self, *, limit: int) -> tuple[list[Any], dict[str, str]]:
            ids = queue.pop(0)[:limit] if queue else []
            return [{"id": i, "tenant_id": "t", "job_id": "j", "attempts": 1} for i in ids], {"t": "s"}

        async def _try(self, client: httpx.AsyncClient, row: Any, secret: str) -> hook_module.Outcome:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await gates.setdefault(row["id"], asyncio.Event()).wait()
            finally:
                in_flight -= 1
            return hook_module.Outcome(webhooks.DeliveryStatus.SUCCEEDED, 200)

        async def _record(self, row: Any, outcome: hook_module.Outcome) -> None:
            return None

    bounded = settings.model_copy(update={"webhook": settings.webhook.model_copy(update={"batch_size": 2})})
    dispatcher = Stubbed(settings=bounded, db=None)  # type: ignore[arg-type]
    dispatcher.kick()  # round A: X and Y
    await asyncio.sleep(0.1)
    gates["X"].set()  # X is answered
    await asyncio.sleep(0.1)
    gates["X"] = asyncio.Event()  # and hangs when tried again
    dispatcher.kick()  # round B: X again, in A's freed place
    await asyncio.sleep(0.1)
    gates["Y"].set()  # A's slow try ends: A is done
    await asyncio.sleep(0.1)
    dispatcher.kick()  # round C: one place is free, not two
    await asyncio.sleep(0.1)
    assert peak == 2
    for gate in gates.values():
        gate.set()
    await dispatcher.drain()
