"""Logging, configured once at process start: readable lines in development, JSON lines in production.

Each record carries the service's name and, when there is one, the job id and type (passed as `extra`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from medialens_shared.settings import Settings, unknown_variables
from medialens_shared.telemetry import TraceContextFilter

# trace_id and span_id are set by TraceContextFilter inside a recording span.
_CONTEXT = ("job_id", "job_type", "error_code", "request_id", "trace_id", "span_id")


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: getattr(record, key) for key in _CONTEXT if getattr(record, key, None)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{key}={getattr(record, key)}" for key in _CONTEXT if getattr(record, key, None))
        return f"{line} [{context}]" if context else line


class _RaisedAgain(logging.Filter):
    """Drops aiormq's ERROR line for a connection attempt that failed ("error when creating transport"):
    the same error is raised to what made the attempt, `bus.Connector` (which says so once a cause) or
    aio-pika's reconnecting (a warning a try, naming it), so a broker away printed two lines a second, one
    of them an ERROR, for as long as it was away."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "aiormq.connection" and record.msg == "error when creating transport: %r")


def configure_logging(settings: Settings, *, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log.json_for(settings.environment):
        handler.setFormatter(_JsonFormatter(service))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    formatter = handler.formatter
    assert formatter is not None
    formatter.converter = time.gmtime  # every time in MediaLens is UTC
    handler.addFilter(TraceContextFilter())
    handler.addFilter(_RaisedAgain())
    logging.basicConfig(level=settings.log.level.upper(), handlers=[handler], force=True)
    for variable in unknown_variables(os.environ):
        logging.getLogger(__name__).warning(
            "%s names no setting and is ignored: a misspelling? (README lists the settings)", variable
        )
