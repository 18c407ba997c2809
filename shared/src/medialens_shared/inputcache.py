"""Jobs' input files kept on the worker's disk by content hash, so a file analysed again is not read again.

A light job (`audio.probe` of a small file) spent more on reading its input from GridFS (a files document,
then its chunks, through a MongoDB-wire server that answers a few hundred requests a second) than on its
analysis. Here each input is fetched once per process and kept under its SHA-256; a job gets a hard link to
the kept copy in its scratch directory (its own name, no bytes copied), which stays valid even when the
copy is evicted while the job runs.

What keeps a kept copy from being served stale: the key is the hash that the job's file row records, and
that row is read at every claim (a deleted file fails there, before the cache is asked); a copy enters the
cache only when the bytes fetched hash to that key. Bounded by `max_bytes` on disk, least recently used
first out; a file larger than the bound is copied for its job alone, as without a cache. Only the event
loop's thread uses it, so no lock guards its bookkeeping; one fetch per hash is shared by the jobs that
ask for it meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from pathlib import Path

from medialens_shared.filestore import FileStore

log = logging.getLogger(__name__)


class InputCache:
    def __init__(self, store: FileStore, *, max_bytes: int, parent_dir: str | None) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.parent_dir = parent_dir
        #: sha256 -> size in bytes, least recently used first.
        self._kept: OrderedDict[str, int] = OrderedDict()
        self._used = 0
        self._fetching: dict[str, asyncio.Future[bool]] = {}
        self._directory: Path | None = None

    @property
    def used_bytes(self) -> int:
        return self._used

    async def place(self, *, storage_id: str, sha256: str, size_bytes: int, path: Path) -> None:
        """Put the stored file `storage_id` (whose row records `sha256` and `size_bytes`) at `path`.

        Raises `InputNotFound` when its bytes are no longer stored.
        """
        if size_bytes > self.max_bytes:
            await self.store.copy_to(storage_id, path)
            return
        while sha256 not in self._kept:
            pending = self._fetching.get(sha256)
            if pending is None:
                if not await self._fetch(storage_id, sha256, path):
                    return  # the bytes did not match their hash: `path` holds them, uncached
                continue
            await pending  # another job fetches these bytes: link to its copy once it is kept
        self._kept.move_to_end(sha256)
        _link_or_copy(self._path(sha256), path)

    async def _fetch(self, storage_id: str, sha256: str, path: Path) -> bool:
        """Fetch the bytes, kept under `sha256`; False (the bytes left at `path`) if they hash to another."""
        done = asyncio.get_running_loop().create_future()
        self._fetching[sha256] = done
        part = self._dir() / f"{sha256}.{uuid.uuid4().hex}.part"
        try:
            copied = await self.store.copy_to(storage_id, part)
            if copied.sha256 != sha256:
                log.warning("stored file %s does not hash to its recorded %s; not cached", storage_id, sha256)
                part.replace(path)
                return False
            part.replace(self._path(sha256))
            self._kept[sha256] = copied.size_bytes
            self._used += copied.size_bytes
            self._evict()
            return True
        finally:
            part.unlink(missing_ok=True)
            del self._fetching[sha256]
            done.set_result(True)

    def _evict(self) -> None:
        while self._used > self.max_bytes and self._kept:
            sha256, size = self._kept.popitem(last=False)
            self._used -= size
            self._path(sha256).unlink(missing_ok=True)

    def _dir(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="medialens-inputs-", dir=self.parent_dir))
        return self._directory

    def _path(self, sha256: str) -> Path:
        return self._dir() / sha256

    def clear(self) -> None:
        """Remove every kept copy and the cache's directory (at shutdown)."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None
        self._kept.clear()
        self._used = 0


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link costs no bytes; across file systems (a scratch dir on another volume) it is a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
