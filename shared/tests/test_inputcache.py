"""The input cache on real GridFS: a file is read from the store once, never served for other bytes, kept
within its bound except while jobs use it, and read by jobs in place under their upload's name."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gridfs import AsyncGridFSBucket
from pymongo.asynchronous.collection import AsyncCollection

from medialens_shared.contracts import FileKind
from medialens_shared.errors import InputNotFound
from medialens_shared.filestore import FileStore, StoredFile
from medialens_shared.inputcache import InputCache, safe_name

pytestmark = pytest.mark.integration


class CountingStore(FileStore):
    """The real file store, counting the copies it makes (the reads a cache is meant to save)."""

    def __init__(self, bucket: AsyncGridFSBucket, chunks: AsyncCollection[Any]) -> None:
        super().__init__(bucket, chunks)
        self.copies = 0

    async def copy_to(self, storage_id: str, path: Path) -> StoredFile:
        self.copies += 1
        return await super().copy_to(storage_id, path)


@pytest.fixture
def counting(store: FileStore) -> CountingStore:
    return CountingStore(store.bucket, store.chunks)


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    (tmp_path / "scratch").mkdir()
    return tmp_path / "scratch"


InputCacheUse = contextlib.AbstractAsyncContextManager[Path]


def cache_of(store: FileStore, tmp_path: Path, *, max_bytes: int = 10_000) -> InputCache:
    for directory in ("cache", "scratch"):
        (tmp_path / directory).mkdir(exist_ok=True)
    return InputCache(
        store, max_bytes=max_bytes, parent_dir=str(tmp_path / "cache"), scratch_dir=str(tmp_path / "scratch")
    )


def use(cache: InputCache, stored: StoredFile, name: str = "a.wav", job: str = "") -> InputCacheUse:
    return cache.use(
        storage_id=stored.storage_id,
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
        name=name,
        job=job,
    )


async def read(cache: InputCache, stored: StoredFile, name: str = "a.wav") -> bytes:
    async with use(cache, stored, name) as path:
        return path.read_bytes()


async def fail_while_using(cache: InputCache, stored: StoredFile, seen: list[Path]) -> None:
    """A job whose handler fails while it has its input (which it notes in `seen`)."""
    async with use(cache, stored) as path:
        seen.append(path)
        assert path.exists()
        raise RuntimeError("the handler failed")


#: Audit events of calls that touch the file system (`stat` has none; the cache's common path makes none).
FILE_EVENTS = frozenset({
    "open", "os.link", "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.scandir", "os.listdir",
    "os.truncate", "shutil.copyfile", "shutil.move", "shutil.rmtree", "tempfile.mkdtemp",
})  # fmt: skip
_recording: list[list[str]] = []


def _audit(event: str, _args: tuple[Any, ...]) -> None:
    if _recording and event in FILE_EVENTS:
        _recording[-1].append(event)


@contextlib.contextmanager
def file_system_calls() -> Iterator[list[str]]:
    """The file-system calls this process makes (any thread) within the block, by audit event."""
    if not hasattr(file_system_calls, "hooked"):
        sys.addaudithook(_audit)  # a hook stays for the process: it records only within this block
        file_system_calls.hooked = True  # type: ignore[attr-defined]
    calls: list[str] = []
    _recording.append(calls)
    try:
        yield calls
    finally:
        _recording.remove(calls)


def tree(root: Path) -> list[str]:
    """Every file and directory under `root`, as paths relative to it."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def kept(cache_root: Path) -> list[str]:
    """The kept files, as `<sha256>/<name>` (the cache's own directory left out)."""
    (directory,) = cache_root.iterdir()
    return [name for name in tree(directory) if "/" in name]


async def test_a_second_job_of_the_same_file_reads_the_store_no_more(
    counting: CountingStore, tmp_path: Path
) -> None:
    """The second use of a file is served from the cache: one read of the store, the same bytes, even once
    the stored bytes are gone."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"first job's input " * 10, filename="a.wav")
    assert await read(cache, stored) == b"first job's input " * 10
    await counting.delete(stored.storage_id)
    assert await read(cache, stored) == b"first job's input " * 10
    assert counting.copies == 1
    assert cache.used_bytes == stored.size_bytes


async def test_a_second_job_of_the_same_file_and_name_makes_nothing_on_disk(
    counting: CountingStore, tmp_path: Path, cache_root: Path, scratch_root: Path
) -> None:
    """The file is kept at `<cache dir>/<sha256>/<name>`, and a later job of the same name is given that
    very file, with no file-system call to place or release it: not a file or directory more under the
    cache's or the scratch directory while it reads."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"kept" * 50, filename="a.wav")
    async with use(cache, stored) as first:
        during_first = tree(tmp_path)
    assert first.parent.name == stored.sha256
    assert first.name == "a.wav"
    assert kept(cache_root) == [f"{stored.sha256}/a.wav"]
    with file_system_calls() as calls:
        async with use(cache, stored) as second:
            assert calls == []  # none to place the input: no directory, link or copy
            assert tree(tmp_path) == during_first
            assert second == first
            assert second.read_bytes() == b"kept" * 50
            calls.clear()
    assert calls == []  # none to release it either
    assert tree(tmp_path) == during_first
    assert tree(scratch_root) == []
    assert counting.copies == 1


async def test_another_name_for_the_same_bytes_is_a_second_link_in_their_directory(
    counting: CountingStore, tmp_path: Path, cache_root: Path
) -> None:
    """A job asking for kept bytes under another name gets a hard link of that name in the same hash
    directory, added once: no bytes read or counted again, and a third job of that name adds nothing."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"the same bytes" * 20, filename="sales.csv.gz")
    async with use(cache, stored, "sales.csv.gz") as first:
        pass
    async with use(cache, stored, "copy of sales.csv.gz") as second:
        assert second.name == "copy_of_sales.csv.gz"
        assert second.parent == first.parent
        assert second.read_bytes() == b"the same bytes" * 20
        assert second.stat().st_ino == first.stat().st_ino
        assert second.stat().st_nlink == 2
        assert stat.S_IMODE(second.stat().st_mode) == 0o444  # shared by jobs of any tenant: read-only
    before = tree(tmp_path)
    assert await read(cache, stored, "copy of sales.csv.gz") == b"the same bytes" * 20
    assert tree(tmp_path) == before
    assert kept(cache_root) == [f"{stored.sha256}/copy_of_sales.csv.gz", f"{stored.sha256}/sales.csv.gz"]
    assert (counting.copies, cache.used_bytes) == (1, stored.size_bytes)


async def test_jobs_asking_for_one_file_at_once_share_one_read(
    counting: CountingStore, tmp_path: Path
) -> None:
    """Eight jobs asking for the same uncached file at the same moment cause one read of the store."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"popular" * 100, filename="a.wav")
    placed = await asyncio.gather(*(read(cache, stored, f"{n % 2}.wav") for n in range(8)))
    assert placed == [b"popular" * 100] * 8
    assert counting.copies == 1


class HeldStore(CountingStore):
    """The real file store, whose copies wait for `go` (a large input on its way from GridFS)."""

    def __init__(self, bucket: AsyncGridFSBucket, chunks: AsyncCollection[Any]) -> None:
        super().__init__(bucket, chunks)
        self.asked, self.go = asyncio.Event(), asyncio.Event()

    async def copy_to(self, storage_id: str, path: Path) -> StoredFile:
        self.asked.set()
        await self.go.wait()
        return await super().copy_to(storage_id, path)


async def test_a_job_cancelled_waiting_for_another_jobs_fetch_leaves_that_fetch_alone(
    store: FileStore, tmp_path: Path
) -> None:
    """A job cancelled while it waits for another job's fetch of the same bytes (a cancel, a shutdown) stops
    alone: the fetching job reads its input. Its wait cancelled the fetch's shared future, and the fetch
    then failed "invalid state" (a job failed INTERNAL_ERROR at a worker's shutdown, not handed back)."""
    held = HeldStore(store.bucket, store.chunks)
    cache = cache_of(held, tmp_path)
    stored = await held.save_bytes(b"shared" * 100, filename="a.wav")
    fetching = asyncio.create_task(read(cache, stored, "a.wav"))
    await held.asked.wait()
    waiting = asyncio.create_task(read(cache, stored, "b.wav"))
    await asyncio.sleep(0.05)  # it waits on the fetch
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.go.set()
    assert await fetching == b"shared" * 100
    assert await read(cache, stored, "c.wav") == b"shared" * 100
    assert held.copies == 1


async def test_other_content_under_the_same_file_is_never_served_stale(
    counting: CountingStore, tmp_path: Path
) -> None:
    """The key is the hash the file's row records: a row that now records other bytes gets those bytes."""
    cache = cache_of(counting, tmp_path)
    before = await counting.save_bytes(b"version one", filename="a.wav")
    after = await counting.save_bytes(b"version two", filename="a.wav")
    assert await read(cache, before) == b"version one"
    assert await read(cache, after) == b"version two"
    assert counting.copies == 2


async def test_bytes_that_do_not_match_their_hash_reach_the_job_alone_and_are_not_kept(
    counting: CountingStore, tmp_path: Path, cache_root: Path, scratch_root: Path
) -> None:
    """Stored bytes that hash to something other than their row's record reach the job in a directory of
    its own under the scratch directory, gone afterwards; each later job reads them again rather than
    trusting a copy under a hash it does not have."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"what is stored", filename="a.wav")
    recorded = StoredFile(
        storage_id=stored.storage_id,
        size_bytes=stored.size_bytes,
        sha256=hashlib.sha256(b"what the row says").hexdigest(),
        kind=FileKind.AUDIO,
    )
    for _ in range(2):
        async with use(cache, recorded, "take 2.wav", job="job-9-1") as path:
            assert path.read_bytes() == b"what is stored"
            assert path.name == "take_2.wav"
            assert path.parent.parent == scratch_root
            assert path.parent.name.startswith("input-job-9-1-")
        assert tree(scratch_root) == []
    assert (counting.copies, cache.used_bytes) == (2, 0)
    assert kept(cache_root) == []


async def test_a_file_over_the_bound_is_copied_for_its_job_alone(
    counting: CountingStore, tmp_path: Path, cache_root: Path, scratch_root: Path
) -> None:
    """A file larger than the cache goes to a directory of the job's own under the scratch directory,
    removed when the job is done with it (also when the job fails), and is never kept."""
    cache = cache_of(counting, tmp_path, max_bytes=250)
    large = await counting.save_bytes(b"L" * 300, filename="large.wav")
    async with use(cache, large, "large.wav", job="job-1-1") as path:
        assert path.read_bytes() == b"L" * 300
        assert path.parent.parent == scratch_root
        assert tree(scratch_root) == [path.parent.name, f"{path.parent.name}/large.wav"]
    assert tree(scratch_root) == []
    with pytest.raises(RuntimeError, match="the handler failed"):
        await fail_while_using(cache, large, [])
    assert tree(scratch_root) == []
    assert tree(cache_root) == []  # the cache's directory is made by its first fetch
    await counting.delete(large.storage_id)
    with pytest.raises(InputNotFound):
        await read(cache, large)
    assert tree(scratch_root) == []
    assert (counting.copies, cache.used_bytes) == (3, 0)


async def test_the_cache_keeps_within_its_bytes_least_recently_used_out(
    counting: CountingStore, tmp_path: Path, cache_root: Path
) -> None:
    """Past its bound the least recently used copy goes (a later job reads it from the store again)."""
    cache = cache_of(counting, tmp_path, max_bytes=250)
    first, second, third = [
        await counting.save_bytes(bytes([n]) * 100, filename=f"{n}.wav") for n in range(3)
    ]
    await read(cache, first)
    await read(cache, second)
    await read(cache, first)  # first is now the most recently used
    await read(cache, third)  # over 250 bytes: second goes, its directory with it
    assert (counting.copies, cache.used_bytes) == (3, 200)
    assert kept(cache_root) == sorted(f"{stored.sha256}/a.wav" for stored in (first, third))
    await counting.delete(second.storage_id)
    with pytest.raises(InputNotFound):
        await read(cache, second)
    assert await read(cache, first) == bytes([0]) * 100
    cache.clear()
    assert tree(cache_root) == []


async def test_an_entry_a_job_uses_is_never_evicted_and_goes_once_released(
    counting: CountingStore, tmp_path: Path, cache_root: Path
) -> None:
    """Eviction passes over an entry in use, though least recently used, and takes the next; while entries
    in use alone hold more than the bound the cache holds more, and an entry over the bound goes when its
    last user is done with it."""
    cache = cache_of(counting, tmp_path, max_bytes=250)
    small = [await counting.save_bytes(bytes([n]) * 100, filename=f"{n}.wav") for n in range(3)]
    big = await counting.save_bytes(b"B" * 200, filename="big.wav")
    async with use(cache, small[0]) as held:
        await read(cache, small[1])
        await read(cache, small[2])  # over 250: small[0] is the least recently used, but in use
        assert held.read_bytes() == bytes([0]) * 100
        assert kept(cache_root) == sorted(f"{stored.sha256}/a.wav" for stored in (small[0], small[2]))
        async with use(cache, big) as also_held:  # 300 bytes, all of them in use: nothing can go
            assert cache.used_bytes == 300
            assert held.exists()
            assert also_held.exists()
            async with use(cache, small[0]):  # a second user of the same entry
                pass
            assert held.exists()
        assert cache.used_bytes == 100  # big's last user is done and the cache was over its bound
        assert not also_held.parent.exists()
    assert held.exists()  # within the bound now: kept
    assert kept(cache_root) == [f"{small[0].sha256}/a.wav"]
    assert (counting.copies, cache.used_bytes) == (4, 100)


async def test_a_failing_job_releases_its_entry(counting: CountingStore, tmp_path: Path) -> None:
    """An entry is released however the job ends, so eviction may take it afterwards."""
    cache = cache_of(counting, tmp_path, max_bytes=150)
    first, second = [await counting.save_bytes(bytes([n]) * 100, filename=f"{n}.wav") for n in range(2)]
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="the handler failed"):
        await fail_while_using(cache, first, seen)
    await read(cache, second)
    assert not seen[0].exists()
    assert cache.used_bytes == 100


@pytest.mark.parametrize(
    ("filename", "name"),
    [
        ("take 1.wav", "take_1.wav"),
        ("../../etc/passwd", "passwd"),
        (".hidden", "hidden"),
        ("..", "input"),
        ("", "input"),
        ("x" * 200 + ".csv", "x" * 116 + ".csv"),
    ],
)
def test_a_job_sees_its_upload_name_made_safe(filename: str, name: str) -> None:
    assert safe_name(filename) == name
