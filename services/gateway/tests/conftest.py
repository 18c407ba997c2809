"""Fixtures of the gateway's tests: an envelope checker and a client of a tenant of its own."""

from __future__ import annotations

import re
import secrets
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from medialens_gateway.auth import ensure_keys
from medialens_shared.db import DatabaseManager
from tests.fixtures.stack import Stack, api_client

ENVELOPE_KEYS = {"success", "data", "message", "error_code", "timestamp", "request_id"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

EnvelopeCheck = Callable[..., dict[str, Any]]


def _check_envelope(
    response: httpx.Response, *, status: int, error_code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ENVELOPE_KEYS, body
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    assert body["request_id"]
    assert response.headers["x-request-id"] == body["request_id"]
    assert body["success"] is (error_code is None), body
    assert body["error_code"] == error_code, body
    if error_code is not None:
        assert body["message"], body
    return body


@pytest.fixture
def envelope() -> EnvelopeCheck:
    """Checks a response is the envelope with `status` (and `error_code` on errors); its body."""
    return _check_envelope


@pytest.fixture
async def fresh_client(stack: Stack, db: DatabaseManager) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a tenant made for this test alone, so its lists hold only what the test made."""
    tenant, key = f"tenant-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    async with db.session() as session:
        await ensure_keys(session, pairs=[(tenant, key)])
    client = api_client(stack.asgi, key=key)
    async with client:
        yield client


@dataclass
class HangingDNS:
    """`socket.getaddrinfo` with a name server that does not answer for the names in `hanging` (the call
    blocks its thread until `release`, then fails as glibc does: EAI_AGAIN), answers the names in `answers`
    at once with that one address, and resolves any other host for real; `calls` counts the lookups of
    each of those names (not of other hosts: the call is the process's, and the stack another test left
    running in it looks up its own). There is no slow DNS server to point at here: patching the one
    blocking call keeps the rest (threads, executors, timeouts) real."""

    hanging: set[str] = field(default_factory=set)
    answers: dict[str, str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def hanging_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingDNS]:
    """A `HangingDNS` patched in for the test; released at its end, so no thread stays blocked."""
    dns = HangingDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in dns.hanging or host in dns.answers:
            dns.calls[host] += 1
        if host in dns.hanging:
            dns.released.wait()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host in dns.answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (dns.answers[host], port or 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield dns
    finally:
        dns.release()
