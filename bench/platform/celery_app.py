"""The Celery baseline's worker: the same probe work as `audio.probe`, as a Celery 5 task.

    celery -A bench.platform.celery_app worker --pool prefork --concurrency 2

Configured as the monolith MediaLens replaces typically was: RabbitMQ broker (on a vhost of its own),
Redis result backend, `acks_late`, the prefork pool. The task reads the file from a local path (the
monolith's shared volume) and runs `probe_audio` (PyAV: open, decode the first frame, read the metadata);
its return value is the result, stored by the backend with its `date_done`. The bench passes the broker,
backend and key prefix in `BENCH_CELERY_*` variables (this is bench code, not the product's settings).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from medialens_audio.probe import probe_audio

# Celery ships no type information; the bench only needs its app object.
_celery: Any = importlib.import_module("celery")

app: Any = _celery.Celery(
    "bench_celery",
    broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    result_backend_transport_options={"global_keyprefix": os.environ.get("BENCH_CELERY_PREFIX", "bench:")},
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.probe")  # type: ignore[untyped-decorator]  # Celery is untyped
def probe(path: str) -> dict[str, Any]:
    return probe_audio(Path(path)).model_dump(mode="json")
