"""The Celery baseline's worker: the same probe work as `audio.probe`, as a Celery 5 task.

    celery -A bench.platform.celery_app worker --pool prefork --concurrency 2

Configured as the monolith MediaLens replaces typically was: RabbitMQ broker (on a vhost of its own),
Redis result backend, `acks_late`, the prefork pool. The task reads the file from a local path (the
monolith's shared volume) and runs `probe_audio` (PyAV: open, decode the first frame, read the metadata);
its return value is the result, stored by the backend with its `date_done`. The bench passes the broker,
backend and key prefix in `BENCH_CELERY_*` variables (this is bench code, not the product's settings).

`bench.probe_plain` is the same probe as a service written without our tuning does it: `av.open` with
FFmpeg's defaults (which reads up to 5 MB ahead when opening; `probe_audio` reads a WAV's first 4 KB),
then the first frame and the same fields. It costs about 7.5 ms of CPU per call against `probe_audio`'s
0.6 ms, and is how the calibration tells whether the issue's Celery figure (≈95 jobs/s) is reproduced.
"""

from __future__ import annotations

import importlib
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

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


@app.task(name="bench.probe_plain")  # type: ignore[untyped-decorator]  # Celery is untyped
def probe_plain(path: str) -> dict[str, Any]:
    with av.open(path) as container:
        stream = container.streams.audio[0]
        next(container.decode(stream))
        codec = stream.codec_context
        ticks, base = stream.duration, stream.time_base
        return {
            "codec": codec.codec.canonical_name,
            "sample_rate": codec.sample_rate,
            "channels": codec.channels,
            "duration_s": float(ticks * Fraction(base)) if ticks and base else None,
            "bit_rate": stream.bit_rate or container.bit_rate or None,
        }
