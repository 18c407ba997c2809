"""The input cache on real GridFS: a file is read from the store once, never served for other bytes, and
kept within its bound."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from gridfs import AsyncGridFSBucket

from medialens_shared.errors import InputNotFound
from medialens_shared.filestore import FileStore, StoredFile
from medialens_shared.inputcache import InputCache

pytestmark = pytest.mark.integration


class CountingStore(FileStore):
    """The real file store, counting the copies it makes (the reads a cache is meant to save)."""

    def __init__(self, bucket: AsyncGridFSBucket) -> None:
        super().__init__(bucket)
        self.copies = 0

    async def copy_to(self, storage_id: str, path: Path) -> StoredFile:
        self.copies += 1
        return await super().copy_to(storage_id, path)


@pytest.fixture
def counting(store: FileStore) -> CountingStore:
    return CountingStore(store.bucket)


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobs").mkdir()
    return tmp_path / "jobs"


def cache_of(store: FileStore, tmp_path: Path, *, max_bytes: int = 10_000) -> InputCache:
    return InputCache(store, max_bytes=max_bytes, parent_dir=str(tmp_path))


async def place(cache: InputCache, stored: StoredFile, path: Path) -> bytes:
    await cache.place(
        storage_id=stored.storage_id, sha256=stored.sha256, size_bytes=stored.size_bytes, path=path
    )
    return contents(path)


def contents(path: Path) -> bytes:
    return path.read_bytes()


def names_in(directory: Path) -> list[str]:
    return [path.name for path in directory.iterdir()]


async def test_a_second_job_of_the_same_file_reads_the_store_no_more(
    counting: CountingStore, tmp_path: Path, jobs_dir: Path
) -> None:
    """The second placement of a file is served from the cache: one read of the store, the same bytes,
    even once the stored bytes are gone."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"first job's input " * 10, filename="a.wav")
    assert await place(cache, stored, jobs_dir / "one.wav") == b"first job's input " * 10
    await counting.delete(stored.storage_id)
    assert await place(cache, stored, jobs_dir / "two.wav") == b"first job's input " * 10
    assert counting.copies == 1
    assert cache.used_bytes == stored.size_bytes


async def test_jobs_asking_for_one_file_at_once_share_one_read(
    counting: CountingStore, tmp_path: Path, jobs_dir: Path
) -> None:
    """Eight jobs placing the same uncached file at the same moment cause one read of the store."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"popular" * 100, filename="a.wav")
    placed = await asyncio.gather(*(place(cache, stored, jobs_dir / f"{n}.wav") for n in range(8)))
    assert placed == [b"popular" * 100] * 8
    assert counting.copies == 1


async def test_a_job_may_change_its_copy_without_touching_the_kept_one(
    counting: CountingStore, tmp_path: Path, jobs_dir: Path
) -> None:
    """A job's copy going away (its scratch directory removed) leaves the kept copy for the next job."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"kept" * 50, filename="a.wav")
    await place(cache, stored, jobs_dir / "one.wav")
    (jobs_dir / "one.wav").unlink()
    assert await place(cache, stored, jobs_dir / "two.wav") == b"kept" * 50
    assert counting.copies == 1


async def test_other_content_under_the_same_file_is_never_served_stale(
    counting: CountingStore, tmp_path: Path, jobs_dir: Path
) -> None:
    """The key is the hash the file's row records: a row that now records other bytes gets those bytes."""
    cache = cache_of(counting, tmp_path)
    before = await counting.save_bytes(b"version one", filename="a.wav")
    after = await counting.save_bytes(b"version two", filename="a.wav")
    assert await place(cache, before, jobs_dir / "one.wav") == b"version one"
    assert await place(cache, after, jobs_dir / "two.wav") == b"version two"
    assert counting.copies == 2


async def test_bytes_that_do_not_match_their_hash_are_placed_but_not_kept(
    counting: CountingStore, tmp_path: Path, jobs_dir: Path
) -> None:
    """Stored bytes that hash to something other than their row's record reach the job, and each later
    job reads them again rather than trusting a copy under a hash it does not have."""
    cache = cache_of(counting, tmp_path)
    stored = await counting.save_bytes(b"what is stored", filename="a.wav")
    recorded = StoredFile(
        storage_id=stored.storage_id,
        size_bytes=stored.size_bytes,
        sha256=hashlib.sha256(b"what the row says").hexdigest(),
        head=b"",
    )
    assert await place(cache, recorded, jobs_dir / "one.wav") == b"what is stored"
    assert await place(cache, recorded, jobs_dir / "two.wav") == b"what is stored"
    assert (counting.copies, cache.used_bytes) == (2, 0)


async def test_the_cache_keeps_within_its_bytes_least_recently_used_out(
    counting: CountingStore, tmp_path: Path, jobs_dir: Path
) -> None:
    """Past its bound the least recently used copy goes (a later job reads it from the store again); a
    file larger than the bound is copied for its job and never kept."""
    cache = cache_of(counting, tmp_path, max_bytes=250)
    first, second, third = [
        await counting.save_bytes(bytes([n]) * 100, filename=f"{n}.wav") for n in range(3)
    ]
    await place(cache, first, jobs_dir / "1a")
    await place(cache, second, jobs_dir / "2a")
    await place(cache, first, jobs_dir / "1b")  # first is now the most recently used
    await place(cache, third, jobs_dir / "3a")  # over 250 bytes: second goes
    assert (counting.copies, cache.used_bytes) == (3, 200)
    await counting.delete(second.storage_id)
    with pytest.raises(InputNotFound):
        await place(cache, second, jobs_dir / "2b")
    assert await place(cache, first, jobs_dir / "1c") == bytes([0]) * 100
    large = await counting.save_bytes(b"L" * 300, filename="large.wav")
    assert await place(cache, large, jobs_dir / "large") == b"L" * 300
    assert cache.used_bytes == 200
    cache.clear()
    assert names_in(tmp_path) == ["jobs"]
