"""Tracing with OpenTelemetry: set up once per process, off unless the standard `OTEL_*` variables ask.

    configure_tracing(service)   at process start: an SDK provider exporting over OTLP (HTTP) when
                                 OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
                                 OTEL_TRACES_EXPORTER (not "none") is set; otherwise nothing: the API's
                                 no-op provider stays, every span below is a non-recording no-op, no thread
                                 runs and nothing is exported
    instrument_app / _engine /   the hooks the core and the gateway call where they build an app, an
    instrument_clients           engine or a client (FastAPI, SQLAlchemy, Redis, PyMongo); they install
                                 nothing unless tracing was configured first (`tracing_on`): even
                                 non-recording spans cost a request a noticeable share of its CPU
    bare_statement               the span of a statement sent on a bare asyncpg connection, which
                                 SQLAlchemy's instrumentation does not see (a worker's claim and end)
    broker middleware            FastStream's RabbitTelemetryMiddleware (see `bus.make_broker`): a span per
                                 publish and per consume, the W3C context in the message headers
    context_headers / attached   the outbox carries the submitting request's context (`traceparent`) in its
                                 `headers` column, and the relay publishes inside it, so one trace covers
                                 gateway -> relay -> service
    job_phase                    one span per job phase (claim, fetch input, handler, store result, finish)
    TraceContextFilter           puts trace_id and span_id on every log record made inside a span

The `OTEL_*` variables are read by the OpenTelemetry SDK itself (endpoint, headers, sampler, resource);
they are the one documented exception to "no setting is read outside `settings.py`", because they are the
standard every collector and operator expects.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace.export import SpanExporter
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

_TRACER_NAME = "medialens"
_ON_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def exporting_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables ask for traces to be exported."""
    env = os.environ if environ is None else environ
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(exporter) or any(env.get(name) for name in _ON_VARIABLES)


def configure_tracing(service: str, *, exporter: SpanExporter | None = None) -> bool:
    """Install an SDK tracer provider for `service` if asked to; whether tracing records spans now.

    With `exporter` (tests: an in-memory exporter) spans go there synchronously; otherwise, when the
    `OTEL_*` variables ask, to the OTLP exporter in batches. Calling it again adds the exporter to the
    provider already installed (OpenTelemetry allows one provider per process).
    """
    if exporter is None and not exporting_requested():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, override this name.
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"medialens-{service}"}))
        trace.set_tracer_provider(provider)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The provider flushes its batches at interpreter exit (shutdown_on_exit).
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("tracing on: exporting spans over OTLP")
    return True


# --- instrumentation hooks ---------------------------------------------------------------------------


def tracing_on() -> bool:
    """Whether a tracer provider is installed (by `configure_tracing`): only then do the hooks instrument."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def instrument_app(app: FastAPI) -> None:
    """A server span per HTTP request (route template as its name); health and metrics are left out."""
    if not tracing_on():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="/health/.*,/metrics")


def instrument_clients() -> None:
    """Spans for Redis commands and MongoDB commands (process-wide, idempotent).

    PyMongo takes its listeners when a client is made, so this runs before the database manager makes one.
    """
    if not tracing_on():
        return
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (RedisInstrumentor(), PymongoInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def instrument_engine(engine: AsyncEngine) -> None:
    """Spans for the SQL statements of one engine (its sync core, where SQLAlchemy's events fire)."""
    if not tracing_on():
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    # The instrumentor's own `instrument(engine=...)` works once per process; the engine tracer it
    # builds is what every engine needs.
    module = SQLAlchemyInstrumentor.__module__
    usage = get_meter(module).create_up_down_counter("db.client.connections.usage", unit="connections")
    EngineTracer(trace.get_tracer(module), engine.sync_engine, usage)  # type: ignore[no-untyped-call]


def bare_statement(sql: str) -> contextlib.AbstractContextManager[object]:
    """A client span for one statement on a bare asyncpg connection, with the attributes SQLAlchemy's
    instrumentation gives its own (`db.system`, `db.statement`); nothing unless tracing is on."""
    if not tracing_on():
        return contextlib.nullcontext()
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    if not is_instrumentation_enabled():  # inside `untraced`
        return contextlib.nullcontext()
    return trace.get_tracer(_TRACER_NAME).start_as_current_span(
        sql.split(None, 1)[0],
        kind=trace.SpanKind.CLIENT,
        attributes={"db.system": "postgresql", "db.statement": sql},
    )


# --- context across the bus --------------------------------------------------------------------------


def context_headers() -> dict[str, str]:
    """The current trace context as message headers (`traceparent`, `tracestate`); empty when off."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


@contextlib.contextmanager
def attached(headers: Mapping[str, Any] | None) -> Iterator[None]:
    """Run the block inside the trace context carried by `headers` (from an outbox entry)."""
    carrier = {key: str(value) for key, value in (headers or {}).items()}
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def untraced() -> contextlib.AbstractContextManager[None]:
    """Keep the current span, but let instrumentations make no spans in the block (a heartbeat loop).
    Nothing with tracing off, when no instrumentation is installed (see the hooks above)."""
    if not tracing_on():
        return contextlib.nullcontext()
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


@contextlib.contextmanager
def job_phase(phase: str, *, job_id: str, job_type: str, attempt: int | None = None) -> Iterator[Span]:
    """A span for one phase of a job, with job.id, job.type and job.attempt; records an exception. With
    tracing off, the invalid span and nothing else: the API's no-op tracer still looked its provider up,
    made a span and attached it to the context, five phases a job (8% of a light job's CPU in a worker)."""
    if not tracing_on():
        yield trace.INVALID_SPAN
        return
    attributes: dict[str, str | int] = {"job.id": job_id, "job.type": job_type, "job.phase": phase}
    if attempt is not None:
        attributes["job.attempt"] = attempt
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(f"job {phase}", attributes=attributes) as span:
        yield span


# --- logs ----------------------------------------------------------------------------------------------


class TraceContextFilter(logging.Filter):
    """Adds `trace_id` and `span_id` (hex) to a record made inside a recording span."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


def current_trace_id() -> str | None:
    """The hex id of the current trace, if a span is recording."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
