"""Logging set up once per process: JSON lines or text, with the job's context."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import urlsplit

import aio_pika
import pytest

from medialens_shared.logs import _Reconnecting, configure_logging
from medialens_shared.settings import LogSettings, Settings
from tests.fixtures.proxy import TcpProxy


@pytest.mark.usefixtures("restore_root_logging")
def test_json_lines_carry_service_and_job_extras(capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON log line names the service, level, logger, message and the job_id/job_type extras."""
    configure_logging(Settings(log=LogSettings(format="json", level="debug")), service="video")
    logging.getLogger("medialens.test").info(
        "job %s started", "j-1", extra={"job_id": "j-1", "job_type": "t"}
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["service"] == "video"
    assert entry["level"] == "info"
    assert entry["logger"] == "medialens.test"
    assert entry["message"] == "job j-1 started"
    assert (entry["job_id"], entry["job_type"]) == ("j-1", "t")
    assert "error_code" not in entry
    assert entry["ts"].endswith("Z")
    assert logging.getLogger().level == logging.DEBUG


@pytest.mark.usefixtures("restore_root_logging")
def test_json_lines_carry_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    """A logged exception is in the JSON line's exception field."""
    configure_logging(Settings(log=LogSettings(format="json")), service="data")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("medialens.test").exception("failed")
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "RuntimeError: boom" in entry["exception"]


@pytest.mark.usefixtures("restore_root_logging")
def test_text_lines_append_the_extras(capsys: pytest.CaptureFixture[str]) -> None:
    """A text log line ends with the context extras in brackets; a line without extras has none."""
    configure_logging(Settings(log=LogSettings(format="text")), service="audio")
    logger = logging.getLogger("medialens.test")
    logger.warning("job failed", extra={"job_id": "j-2", "error_code": "TIMEOUT"})
    logger.warning("plain")
    first, second = capsys.readouterr().err.strip().splitlines()[-2:]
    assert first.endswith("medialens.test: job failed [job_id=j-2 error_code=TIMEOUT]")
    assert "WARNING" in first
    assert second.endswith("medialens.test: plain")


def test_logs_are_json_in_production_and_text_elsewhere_unless_set() -> None:
    """With no format set, production logs JSON lines and development readable text; a set format wins."""
    assert LogSettings().json_for("production")
    assert not LogSettings().json_for("development")
    assert not LogSettings(format="text").json_for("production")
    assert LogSettings(format="json").json_for("development")


@pytest.mark.usefixtures("restore_root_logging")
def test_a_variable_that_names_no_setting_is_logged_at_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt MEDIALENS_* variable (the settings ignore it: its setting keeps its default) is named in
    a warning when a process sets up its logging; the real settings and the tools' variables are not."""
    monkeypatch.setenv("MEDIALENS_WORKER_SHUTDOWN_GRACE", "300")  # the setting ends in _S
    monkeypatch.setenv("MEDIALENS_GATEWY_MAX_IN_FLIGHT", "10")
    monkeypatch.setenv("MEDIALENS_WORKER_SHUTDOWN_GRACE_S", "300")
    monkeypatch.setenv("MEDIALENS_LOG_LEVEL", "info")
    monkeypatch.setenv("MEDIALENS_DEMO_KEY", "dev-key")
    configure_logging(Settings(log=LogSettings(format="json")), service="video")
    warned = [json.loads(line)["message"] for line in capsys.readouterr().err.strip().splitlines()]
    assert [message.split()[0] for message in warned if "names no setting" in message] == [
        "MEDIALENS_GATEWY_MAX_IN_FLIGHT",
        "MEDIALENS_WORKER_SHUTDOWN_GRACE",
    ]


@pytest.mark.usefixtures("restore_root_logging")
def test_a_failed_connection_attempt_is_not_logged_twice(capsys: pytest.CaptureFixture[str]) -> None:
    """aiormq's ERROR for a connection attempt that failed is dropped (what made the attempt gets the error
    and says so); its other lines stay."""
    configure_logging(Settings(log=LogSettings(format="text", level="info")), service="relay")
    aiormq = logging.getLogger("aiormq.connection")
    aiormq.error("error when creating transport: %r", ConnectionRefusedError(111, "Connect call failed"))
    aiormq.error("Unexpected frame %r", "frame")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Unexpected frame" in lines[0]


@pytest.mark.usefixtures("restore_root_logging")
async def test_a_broker_away_is_said_once_not_at_every_reconnection_attempt(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """aio-pika's own reconnection to a broker that went away (through a proxy cut here) tries every
    interval and warned at each try, once a second for as long as the broker was away: the first failed
    attempt is logged, the following ones of the same cause are not (until a minute has passed), and the
    connection comes back when the broker does."""
    configure_logging(Settings(log=LogSettings(format="text", level="info")), service="audio")
    url = urlsplit(settings.rabbitmq.url.get_secret_value())
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5672)
    await proxy.start()
    proxied = url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}").geturl()
    connection = await aio_pika.connect_robust(proxied, reconnect_interval=0.05)
    try:
        capsys.readouterr()
        await proxy.cut()
        await asyncio.sleep(1.0)  # about 20 attempts, each refused
        await proxy.restore()
        deadline = time.monotonic() + 10
        await asyncio.sleep(0.1)  # the restore seen, not the connection as it was before the cut
        while not connection.connected.is_set():
            assert time.monotonic() < deadline, "the connection did not come back"
            await asyncio.sleep(0.05)
        lines = capsys.readouterr().err.splitlines()
    finally:
        await connection.close()
        await proxy.cut()
    attempts = [line for line in lines if "Connection attempt to" in line]
    assert len(attempts) == 1, lines
    assert "failed" in attempts[0]


def test_a_broker_away_for_long_is_said_again_with_the_attempts_between() -> None:
    """Past `every_s`, the next failed attempt of the same cause is logged with the number not logged since;
    another cause is logged at once."""
    thinning = _Reconnecting(every_s=0.2)
    refused, reset = ConnectionRefusedError(111, "refused"), ConnectionResetError(104, "reset")

    def attempt(cause: Exception) -> logging.LogRecord | None:
        record = logging.LogRecord(
            "aio_pika.robust_connection",
            logging.WARNING,
            __file__,
            1,
            _Reconnecting.MESSAGE,
            ("amqp://broker", cause, 1.0),
            None,
        )
        return record if thinning.filter(record) else None

    assert attempt(refused) is not None
    assert [attempt(refused) for _ in range(3)] == [None] * 3
    time.sleep(0.25)
    again = attempt(refused)
    assert again is not None
    assert again.getMessage().endswith("(3 more attempts failed alike since the last such line)")
    assert attempt(reset) is not None


def test_a_new_outage_after_a_quiet_spell_is_said_at_once() -> None:
    """An attempt that fails `quiet_s` after the last one is a new outage (the broker came back between
    them), logged even with the same cause and within `every_s`: the second outage was not said at all."""
    thinning = _Reconnecting(every_s=60.0, quiet_s=0.2)
    refused = ConnectionRefusedError(111, "refused")

    def attempt() -> bool:
        record = logging.LogRecord(
            "aio_pika.robust_connection", logging.WARNING, __file__, 1, _Reconnecting.MESSAGE,
            ("amqp://broker", refused, 1.0), None,
        )  # fmt: skip
        return thinning.filter(record)

    assert [attempt() for _ in range(3)] == [True, False, False]
    time.sleep(0.3)
    assert [attempt() for _ in range(2)] == [True, False]
