"""Tracing across the bus: one trace from the gateway's request through the relay to the service's job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from scripts.samples import make_video
from tests.fixtures.stack import submit, upload, wait_for

pytestmark = pytest.mark.integration

PHASES = ("job claim", "job fetch_input", "job handler", "job store_result", "job finish")


async def _trace_of(
    spans: InMemorySpanExporter, trace_id: int, *, needs: set[str], kinds: frozenset[SpanKind] = frozenset()
) -> list[ReadableSpan]:
    """The finished spans of one trace, once every name in `needs` and a span of each of `kinds` are among
    them (spans end after commits; the consumer's ends after the job's last phase)."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            s for s in spans.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id
        ]
        complete = needs <= {s.name for s in found} and kinds <= {s.kind for s in found}
        if complete or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def _db_systems(found: list[ReadableSpan]) -> set[str]:
    systems = set()
    for span in found:
        attributes = span.attributes or {}
        system = attributes.get("db.system") or attributes.get("db.system.name")
        if system:
            systems.add(str(system))
    return systems


async def test_a_submitted_job_is_one_trace_from_request_to_worker(
    api: httpx.AsyncClient, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    """The request span, the relay's publish, the service's consume and every job phase share one trace."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=64, height=48)
    file_id = await upload(api, path)
    job = await submit(api, "video.probe", file_id)
    assert (await wait_for(api, job["id"]))["status"] == "succeeded"

    requests = [
        s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER and s.name == "POST /v1/jobs"
    ]
    assert requests, [s.name for s in spans.get_finished_spans()]
    assert requests[-1].context is not None
    trace_id = requests[-1].context.trace_id
    found = await _trace_of(spans, trace_id, needs=set(PHASES), kinds=frozenset({SpanKind.CONSUMER}))
    names = [s.name for s in found]

    assert any(s.kind is SpanKind.PRODUCER and s.name.endswith(" publish") for s in found), names
    assert any(s.kind is SpanKind.CONSUMER and s.name.endswith(" process") for s in found), names
    for phase in PHASES:
        span = next((s for s in found if s.name == phase), None)
        assert span is not None, (phase, names)
        attributes = span.attributes or {}
        assert attributes["job.id"] == job["id"]
        assert attributes["job.type"] == "video.probe"
        assert attributes["job.attempt"] == 1
    assert {"postgresql", "mongodb", "redis"} <= _db_systems(found), names


async def test_health_and_metrics_make_no_spans(api: httpx.AsyncClient, spans: InMemorySpanExporter) -> None:
    """Probes and scrapes are left out of the traces."""
    spans.clear()
    assert (await api.get("/health/live")).status_code == 200
    assert (await api.get("/metrics")).status_code == 200
    assert not [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
