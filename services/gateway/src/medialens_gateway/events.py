"""Job events for SSE: one Redis pattern subscription per gateway process, fanned out to listeners.

A stream per client would hold one Redis connection each; the hub holds one for the whole process and
hands each listener an in-memory queue of the job objects published for the job it follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

from medialens_shared.aio import wait_set
from medialens_shared.errors import RateLimited
from medialens_shared.signals import JobSignals, follow

#: Events a slow listener may fall behind by before older ones are dropped (the last one always counts).
QUEUE_SIZE = 64


class EventHub:
    def __init__(self, signals: JobSignals) -> None:
        self.signals = signals
        self._listeners: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        #: Open streams by tenant (`hold_stream`).
        self._streams: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await follow(
            self.signals.redis,
            channel=self.signals.all_channels,
            pattern=True,
            on_message=self._dispatch,
            what="job event",
            ready=self._ready,
        )

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        queues = self._listeners.get(self.signals.job_id_of(name))
        if not queues:
            return
        job = json.loads(data)
        for queue in queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(job)

    def hold_stream(self, tenant_id: str, *, limit: int) -> Callable[[], None]:
        """Count one more open stream of `tenant_id`; its release (calling it again does nothing).
        RateLimited when the tenant holds `limit` already (0: no bound)."""
        if limit and self._streams[tenant_id] >= limit:
            raise RateLimited(
                f"This API key's tenant has {limit} event streams open on this gateway, its most; "
                "close one, or poll GET /v1/jobs/{id}.",
                retry_after=5,
            )
        self._streams[tenant_id] += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._streams[tenant_id] -= 1
                if not self._streams[tenant_id]:
                    del self._streams[tenant_id]

        return release

    @contextlib.asynccontextmanager
    async def listen(self, job_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the job objects published for `job_id` while the context is open."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._listeners[job_id].add(queue)
        try:
            await wait_set(self._ready, 2.0)
            yield queue
        finally:
            self._listeners[job_id].discard(queue)
            if not self._listeners[job_id]:
                del self._listeners[job_id]
