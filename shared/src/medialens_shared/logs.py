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
    aio-pika's reconnecting (a warning naming it, thinned by `_Reconnecting`), so a broker away printed two
    lines a second, one of them an ERROR, for as long as it was away."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "aiormq.connection" and record.msg == "error when creating transport: %r")


class _Reconnecting(logging.Filter):
    """Thins aio-pika's warning for each failed reconnection attempt ('Connection attempt to "..." failed:
    <cause>. Reconnecting after 1.0 seconds.'), which came once a second per connection for as long as the
    broker was away (3,600 lines an hour from each process): the first attempt of an outage is logged,
    then one line every `every_s` seconds saying how many failed alike since. A new cause is logged at
    once, and so is an attempt `quiet_s` after the last one (a new outage: the connection came back
    between them; the attempts of one outage come every reconnect interval, or every connect timeout of
    10 s when the broker is silent)."""

    MESSAGE = 'Connection attempt to "%s" failed: %s. Reconnecting after %r seconds.'

    def __init__(self, every_s: float = 60.0, quiet_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.quiet_s = quiet_s
        self._cause: str | None = None
        self._said_at = self._last_at = 0.0
        self._unsaid = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "aio_pika.robust_connection" or record.msg != self.MESSAGE:
            return True
        cause = str(record.args[1]) if isinstance(record.args, tuple) and len(record.args) > 1 else ""
        now = time.monotonic()
        same = cause == self._cause and now - self._last_at < self.quiet_s
        self._last_at = now
        if same and now - self._said_at < self.every_s:
            self._unsaid += 1
            return False
        if same and self._unsaid:
            record.msg = (
                f"{self.MESSAGE} ({self._unsaid} more attempts failed alike since the last such line)"
            )
        self._cause, self._said_at, self._unsaid = cause, now, 0
        return True


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
    handler.addFilter(_Reconnecting())
    logging.basicConfig(level=settings.log.level.upper(), handlers=[handler], force=True)
    for variable in unknown_variables(os.environ):
        logging.getLogger(__name__).warning(
            "%s names no setting and is ignored: a misspelling? (README lists the settings)", variable
        )
