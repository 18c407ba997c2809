"""Tracing set-up from the standard variables, trace ids in logs, and no secret in any log line."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import create_async_engine

from medialens_gateway.auth import ensure_keys
from medialens_shared.db import DatabaseManager
from medialens_shared.logs import configure_logging
from medialens_shared.settings import LogSettings, Settings
from medialens_shared.telemetry import (
    TraceContextFilter,
    bare_statement,
    configure_tracing,
    context_headers,
    current_trace_id,
    exporting_requested,
    instrument_app,
    instrument_engine,
    job_phase,
    tracing_on,
    untraced,
)
from scripts.samples import make_video
from tests.fixtures.stack import Stack, api_client, run_job, submit, upload, wait_for


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ],
)
def test_exporting_is_on_only_when_the_standard_variables_ask(environ: dict[str, str], on: bool) -> None:
    """An endpoint or an exporter name turns exporting on; none, "none" or a disabled SDK leave it off."""
    assert exporting_requested(environ) is on


def test_without_variables_configuring_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no OTEL_* variable, configure_tracing installs no provider and reports tracing off."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert configure_tracing("video") is False


def test_without_a_provider_the_hooks_instrument_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before tracing is configured, instrument_app adds no middleware and instrument_engine no listener."""
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    app = FastAPI()
    instrument_app(app)
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    instrument_engine(engine)
    assert not tracing_on()
    assert app.user_middleware == []
    assert not list(engine.sync_engine.dispatch.before_cursor_execute)


def test_with_tracing_off_a_phase_makes_no_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a provider, job_phase yields the invalid span and leaves the current context alone."""
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    before = otel_context.get_current()
    with job_phase("handler", job_id="j-1", job_type="video.probe", attempt=2) as span:
        assert span is trace.INVALID_SPAN
        assert otel_context.get_current() is before
    with pytest.raises(ValueError, match="raised inside"), job_phase("claim", job_id="j-1", job_type="x"):
        raise ValueError("raised inside")


def test_a_phase_span_carries_the_job_attributes(spans: InMemorySpanExporter) -> None:
    """job_phase makes a span named for the phase with job.id, job.type and job.attempt."""
    with job_phase("handler", job_id="j-1", job_type="video.probe", attempt=2):
        headers = context_headers()
    # The session's stack may finish spans of its own meanwhile: pick this one by its name and job.
    span = next(
        s
        for s in reversed(spans.get_finished_spans())
        if s.name == "job handler" and (s.attributes or {}).get("job.id") == "j-1"
    )
    assert dict(span.attributes or {}) == {
        "job.id": "j-1",
        "job.type": "video.probe",
        "job.phase": "handler",
        "job.attempt": 2,
    }
    assert span.context is not None
    assert headers["traceparent"].split("-")[1] == format(span.context.trace_id, "032x")


def test_a_statement_on_a_bare_connection_is_a_postgresql_span(spans: InMemorySpanExporter) -> None:
    """bare_statement makes a client span with the attributes of SQLAlchemy's (db.system, db.statement)
    inside the current one, and none inside `untraced`."""
    marker = secrets.token_hex(4)
    with job_phase("claim", job_id=marker, job_type="video.probe"):
        with bare_statement(f"UPDATE jobs SET message = '{marker}'"):
            pass
        with untraced(), bare_statement(f"UPDATE jobs SET message = '{marker}-untraced'"):
            pass
    found = [s for s in spans.get_finished_spans() if marker in str((s.attributes or {}).get("db.statement"))]
    assert [(s.name, s.kind, (s.attributes or {}).get("db.system")) for s in found] == [
        ("UPDATE", SpanKind.CLIENT, "postgresql")
    ]
    phase = next(s for s in spans.get_finished_spans() if (s.attributes or {}).get("job.id") == marker)
    assert phase.context is not None
    assert found[0].parent is not None
    assert found[0].parent.span_id == phase.context.span_id


@pytest.mark.usefixtures("restore_root_logging", "spans")
def test_json_lines_inside_a_span_carry_its_trace_id(capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON log line made inside a span has trace_id and span_id; one made outside has neither."""
    configure_logging(Settings(log=LogSettings(format="json")), service="video")
    logger = logging.getLogger("medialens.test")
    with trace.get_tracer("tests").start_as_current_span("work"):
        trace_id = current_trace_id()
        logger.info("inside")
    logger.info("outside")
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines()[-2:])
    assert trace_id is not None
    assert inside["trace_id"] == trace_id
    assert len(inside["span_id"]) == 16
    assert "trace_id" not in outside


@pytest.mark.integration
async def test_a_log_record_made_inside_a_job_carries_the_requests_trace_id(
    stack: Stack, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The worker's "job started" record has the trace id of the HTTP request that submitted the job."""
    caplog.handler.addFilter(TraceContextFilter())
    caplog.set_level(logging.INFO, logger="medialens_shared.tasks")
    api = stack.client()
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=64, height=48)
    job = await submit(api, "video.probe", await upload(api, path))
    assert (await wait_for(api, job["id"]))["status"] == "succeeded"
    request = [
        s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER and s.name == "POST /v1/jobs"
    ]
    assert request
    assert request[-1].context is not None
    trace_id = format(request[-1].context.trace_id, "032x")

    deadline = time.monotonic() + 5
    while not (
        started := [
            r
            for r in caplog.records
            if getattr(r, "job_id", None) == job["id"] and "started" in r.getMessage()
        ]
    ):
        assert time.monotonic() < deadline, "no 'job started' record"
        await asyncio.sleep(0.05)
    assert getattr(started[0], "trace_id", None) == trace_id


@pytest.mark.integration
@pytest.mark.usefixtures("restore_root_logging")
async def test_no_secret_or_api_key_is_ever_logged(
    stack: Stack, db: DatabaseManager, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Debug logs of authenticated requests, a job, and the settings themselves hold no password or key."""
    passwords = [f"pg-{secrets.token_hex(6)}", f"mq-{secrets.token_hex(6)}", f"rd-{secrets.token_hex(6)}"]
    secret_settings = Settings(
        environment="test",
        postgres={"url": f"postgresql+asyncpg://medialens:{passwords[0]}@db:5432/medialens"},
        rabbitmq={"url": f"amqp://medialens:{passwords[1]}@mq:5672/"},
        redis={"url": f"redis://:{passwords[2]}@cache:6379/0"},
        log={"format": "json", "level": "DEBUG"},
    )  # type: ignore[arg-type]  # pydantic-settings takes the groups as dicts
    configure_logging(secret_settings, service="gateway")
    tenant, key = f"tenant-{secrets.token_hex(4)}", f"sk-{secrets.token_urlsafe(24)}"
    async with db.session() as session:
        await ensure_keys(session, pairs=[(tenant, key)])
    log = logging.getLogger("medialens.test")
    log.info("settings: %s", secret_settings)
    log.info("settings: %r", secret_settings)
    log.info("settings dump: %s", secret_settings.model_dump())
    async with api_client(stack.asgi, key=key) as client:
        path = tmp_path / "clip.mp4"
        make_video(path, duration_s=1.0, fps=10, width=64, height=48)
        assert (await run_job(client, "video.probe", path))["status"] == "succeeded"
        assert (await client.get("/v1/jobs")).status_code == 200
    async with api_client(stack.asgi, key=f"{key}-wrong") as stranger:
        assert (await stranger.get("/v1/jobs")).status_code == 401

    logged = capsys.readouterr().err
    assert "medialens.test" in logged  # the capture did see the log lines
    for secret in [*passwords, key]:
        assert secret not in logged
