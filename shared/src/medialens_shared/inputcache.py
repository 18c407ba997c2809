"""Jobs' input files kept on the worker's disk by content hash, so a file analysed again is not read again.

A light job (`audio.probe` of a small file) spent more on reading its input from GridFS (a files document,
then its chunks, through a MongoDB-wire server that answers a few hundred requests a second) than on its
analysis. Here each input is fetched once per process and kept under its SHA-256, at
`<cache dir>/<sha256>/<name>`: a directory per hash, holding the file under the (safe) upload name the job
asked for. A later job of another name for the same bytes gets a hard link of that name added once in the
same directory (no bytes copied, none counted). A job reads its input there, in place, holding the entry
pinned while it runs (`use`): a job of a file already kept costs no file-system call at all. (Making a
directory of the job's own, linking the kept copy into it and removing both afterwards cost four calls of
0.1-0.2 ms each on ext4, 13% of an `audio.probe`'s worker CPU.) Jobs only read their input: the kept copy
is shared with every other job of those bytes, and is read-only.

What keeps a kept copy from being served stale: the key is the hash that the job's file row records, and
that row is read at every claim (a deleted file fails there, before the cache is asked); a copy enters the
cache only when the bytes fetched hash to that key. Bounded by `max_bytes` on disk, least recently used
first out, except that a pinned entry is never removed: while pinned entries alone hold more than the
bound, the cache holds more than the bound, and an entry is removed when its last user releases it if
the cache is still over its bound then. A file larger than the bound, or whose bytes do not hash to their
record, is copied for its job alone into a directory of the job's own under `scratch_dir`, removed when
the job releases it, as without a cache. Only the event loop's thread uses the cache, so no lock guards its
bookkeeping; one fetch per hash is shared by the jobs that ask for it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from medialens_shared.filestore import FileStore

log = logging.getLogger(__name__)

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(filename: str) -> str:
    """An upload's name as a file name of its own: its last part, characters other than letters, digits,
    `.`, `_` and `-` as `_`, at most 120 characters, no leading dot; "input" when nothing is left."""
    return _UNSAFE_NAME.sub("_", Path(filename).name)[-120:].lstrip(".") or "input"


@dataclass(eq=False)
class _Entry:
    """A kept file: the directory of its hash, the names it has there, and the jobs using it now."""

    directory: Path
    size_bytes: int
    names: set[str]
    users: int = 0

    def path(self, name: str) -> Path:
        """The file under `name`: a hard link to one of its other names, added when first asked for."""
        path = self.directory / name
        if name not in self.names:
            with contextlib.suppress(FileExistsError):  # left by an earlier entry of these bytes
                os.link(self.directory / next(iter(self.names)), path)
            self.names.add(name)
        return path


class InputCache:
    """See the module's docstring. `parent_dir`: where the cache's own directory is made (None: the system's
    temporary directory); `scratch_dir`: where a copy for a job alone goes (None: the same)."""

    def __init__(
        self, store: FileStore, *, max_bytes: int, parent_dir: str | None, scratch_dir: str | None = None
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.parent_dir = parent_dir
        self.scratch_dir = scratch_dir
        #: sha256 -> entry, least recently asked for first.
        self._kept: OrderedDict[str, _Entry] = OrderedDict()
        self._used = 0
        self._fetching: dict[str, asyncio.Future[bool]] = {}
        self._directory: Path | None = None

    @property
    def used_bytes(self) -> int:
        """Bytes of the kept copies; above `max_bytes` only while pinned entries hold that much."""
        return self._used

    @contextlib.asynccontextmanager
    async def use(
        self, *, storage_id: str, sha256: str, size_bytes: int, name: str, job: str = ""
    ) -> AsyncIterator[Path]:
        """The stored file `storage_id` (whose row records `sha256` and `size_bytes`) on disk under
        `safe_name(name)`, to be read (never changed) while the context is open: its entry stays pinned
        until then.

        A copy for the job alone (a file over the bound, or bytes not matching their hash) sits in a
        directory of its own named after `job` under `scratch_dir`, removed on exit. Raises `InputNotFound`
        when the bytes are not kept and no longer stored.
        """
        name = safe_name(name)
        if size_bytes > self.max_bytes:
            held: _Entry | Path = await self._alone(
                name, job, lambda path: self.store.copy_to(storage_id, path)
            )
        else:
            held = await self._pin(storage_id, sha256, name, job)
        if isinstance(held, Path):
            try:
                yield held
            finally:
                _remove_alone(held)
            return
        try:
            yield held.path(name)
        finally:
            held.users -= 1
            if not held.users:
                self._evict()  # it may go now if the cache is over its bound: pinned, it was spared

    async def _pin(self, storage_id: str, sha256: str, name: str, job: str) -> _Entry | Path:
        """The entry of `sha256`, fetched if need be, pinned for one more user; or, if the bytes fetched
        do not hash to `sha256`, the path of a copy for the job alone."""
        entry = self._kept.get(sha256)
        while entry is None:
            pending = self._fetching.get(sha256)
            if pending is None:
                alone = await self._fetch(storage_id, sha256, name, job)
                if alone is not None:
                    return alone
            else:
                # Another job fetches these bytes: use its copy once it is kept. Shielded: this job's
                # cancel (a client's, a shutdown's) stops its wait, not the other job's fetch.
                await asyncio.shield(pending)
            entry = self._kept.get(sha256)
        # No await from the look-up to the caller's use: the entry cannot be evicted in between.
        entry.users += 1
        self._kept.move_to_end(sha256)
        self._evict()  # a new entry may have brought the cache over its bound
        return entry

    async def _fetch(self, storage_id: str, sha256: str, name: str, job: str) -> Path | None:
        """Fetch the bytes and keep them under `sha256` as `name` (None); bytes that hash to something else
        go to a copy for the job alone, whose path comes back."""
        done = asyncio.get_running_loop().create_future()
        self._fetching[sha256] = done
        part = self._dir() / f"{sha256}.{uuid.uuid4().hex}.part"
        try:
            copied = await self.store.copy_to(storage_id, part)
            if copied.sha256 != sha256:
                log.warning("stored file %s does not hash to its recorded %s; not cached", storage_id, sha256)
                # A copy if on another file system (rare path).
                return await self._alone(name, job, lambda path: asyncio.to_thread(shutil.move, part, path))
            directory = self._dir() / sha256
            directory.mkdir(exist_ok=True)
            # Read-only: the copy (each of its names is the same inode) is shared by every job of these
            # bytes, whatever their tenant, so a job's code that opens its input to write it (a bug, a
            # library writing in place) fails rather than changes what the next job reads (the image runs
            # as an unprivileged user; root passes this). A defence in depth, not a fence: the directory
            # stays writable for the cache's own links and evictions, so a file renamed over the copy
            # (DuckDB's COPY TO writes a temporary file and renames it) is not stopped here; what keeps a
            # query from writing there is its read-only check and its file fence (`medialens_data`).
            part.chmod(0o444)
            part.replace(directory / name)
            self._kept[sha256] = _Entry(directory, copied.size_bytes, {name})
            self._used += copied.size_bytes
            return None
        finally:
            part.unlink(missing_ok=True)
            del self._fetching[sha256]
            done.set_result(True)

    async def _alone(self, name: str, job: str, fill: Callable[[Path], Awaitable[object]]) -> Path:
        """A copy for the job alone: `fill` writes it at the path it is given, in a directory of the job's
        own under `scratch_dir`; both are removed if it fails."""
        prefix = f"input-{job}-" if job else "input-"
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.scratch_dir)) / name
        try:
            await fill(path)
        except BaseException:
            _remove_alone(path)
            raise
        return path

    def _evict(self) -> None:
        """Least recently asked for first, until within the bound; pinned entries stay."""
        if self._used <= self.max_bytes:
            return
        for sha256, entry in list(self._kept.items()):
            if self._used <= self.max_bytes:
                break
            if entry.users:
                continue
            del self._kept[sha256]
            self._used -= entry.size_bytes
            shutil.rmtree(entry.directory, ignore_errors=True)

    def _dir(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="medialens-inputs-", dir=self.parent_dir))
        return self._directory

    def clear(self) -> None:
        """Remove every kept copy and the cache's directory (at shutdown, once no job runs)."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None
        self._kept.clear()
        self._used = 0


def _remove_alone(path: Path) -> None:
    """Remove a job's own copy and its directory; whatever else is there stays."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()
