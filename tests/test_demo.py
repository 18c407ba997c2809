"""`make demo`'s choice of stack, against a real HTTP server standing in for a gateway's readiness."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from scripts import demo


class Readiness(BaseHTTPRequestHandler):
    """Answers /health/ready with 503 and a failed check the first `server.not_ready` times, then 200."""

    def do_GET(self) -> None:
        server: Any = self.server
        server.asked += 1
        ready = server.asked > server.not_ready
        body = b'{"status":"ok"}' if ready else b'{"status":"unavailable","checks":{"rabbitmq":{"ok":false}}}'
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        return None


@pytest.fixture
def gateway() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Readiness)
    server.asked, server.not_ready = 0, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def no_second_stack() -> None:
    raise AssertionError("the demo started a stack beside a gateway that answers")


def test_a_gateway_that_answers_but_is_not_ready_is_waited_for(
    gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not ready for three looks (a server it needs still coming up): the demo waits and uses it, and
    starts no stack of its own, whose processes would fail on the gateway's ports."""
    gateway.not_ready = 3
    monkeypatch.setattr(demo, "start_stack", no_second_stack)
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.server_port}") as client, demo.stack(client):
        assert demo.is_ready(client)
    assert gateway.asked >= 4


def test_a_gateway_that_stays_unready_fails_the_demo_with_its_answer(
    gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.not_ready = 10**6
    monkeypatch.setattr(demo, "start_stack", no_second_stack)
    monkeypatch.setattr(demo, "READY_TIMEOUT_S", 1.0)
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{gateway.server_port}") as client,
        pytest.raises(demo.DemoFailed, match=r"not ready after 1 s \(503: .*rabbitmq"),
        demo.stack(client),
    ):
        pytest.fail("the demo went on with an unready gateway")
