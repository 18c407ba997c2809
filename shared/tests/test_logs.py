"""Logging set up once per process: JSON lines or text, with the job's context."""

from __future__ import annotations

import json
import logging

import pytest

from medialens_shared.logs import configure_logging
from medialens_shared.settings import LogSettings, Settings


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
