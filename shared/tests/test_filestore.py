"""File bytes in the real GridFS: streamed saves, ranged reads, scratch copies, deletes."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bson import ObjectId
from gridfs.errors import CorruptGridFile

from medialens_shared.db import DatabaseManager
from medialens_shared.errors import InputNotFound, PayloadTooLarge
from medialens_shared.filestore import CHUNK_BYTES, WINDOW_CHUNKS, FileStore
from medialens_shared.sniff import SNIFF_BYTES, sniff

pytestmark = pytest.mark.integration


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(store: FileStore, storage_id: str, **bounds: int) -> bytes:
    return b"".join([chunk async for chunk in store.read(storage_id, **bounds)])


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(CHUNK_BYTES * 2 + 12345)


async def test_save_streams_many_chunks(store: FileStore, db: DatabaseManager, payload: bytes) -> None:
    """Saving 300 small chunks stores every byte, with the right size, SHA-256 and kind."""
    name = f"many-{uuid.uuid4().hex}.bin"
    stored = await store.save(
        chunked(payload, 7001), filename=name, max_bytes=len(payload), metadata={"t": 1}
    )
    assert stored.size_bytes == len(payload)
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()
    assert stored.kind is sniff(payload[:SNIFF_BYTES])
    document = await db.collection("fs.files").find_one({"_id": ObjectId(stored.storage_id)})
    assert document is not None
    assert (document["filename"], document["length"], document["metadata"]) == (name, len(payload), {"t": 1})
    assert await read_all(store, stored.storage_id) == payload


async def test_over_max_bytes_raises_and_leaves_nothing(store: FileStore, db: DatabaseManager) -> None:
    """An upload past max_bytes raises PayloadTooLarge (not a server error) and leaves no GridFS file."""
    name = f"toolarge-{uuid.uuid4().hex}.bin"
    data = os.urandom(CHUNK_BYTES * 3)
    with pytest.raises(PayloadTooLarge, match="larger than the limit of"):
        await store.save(chunked(data, 256 * 1024), filename=name, max_bytes=CHUNK_BYTES * 2)
    assert await db.collection("fs.files").find({"filename": name}).to_list() == []
    assert await db.gridfs.find({"filename": name}).to_list() == []


async def test_read_ranges(store: FileStore, payload: bytes) -> None:
    """Ranged reads return exactly bytes start..end inclusive, clamped to the file's end."""
    stored = await store.save_bytes(payload, filename="ranges.bin")
    assert await read_all(store, stored.storage_id, start=10, end=99) == payload[10:100]
    middle = CHUNK_BYTES - 5
    assert (
        await read_all(store, stored.storage_id, start=middle, end=middle + 10)
        == payload[middle : middle + 11]
    )
    tail = len(payload) - 100
    assert await read_all(store, stored.storage_id, start=tail, end=len(payload) + 5000) == payload[tail:]
    assert await read_all(store, stored.storage_id, start=0, end=0) == payload[:1]


async def test_copy_to_writes_the_file(store: FileStore, payload: bytes, tmp_path: Path) -> None:
    """copy_to writes the stored bytes to a local path and says what it wrote: size, SHA-256 and kind."""
    stored = await store.save_bytes(payload, filename="copy.bin")
    target = tmp_path / "copy.bin"
    assert await store.copy_to(stored.storage_id, target) == stored
    assert target.read_bytes() == payload


async def test_delete_twice_and_copy_of_a_missing_file(store: FileStore, tmp_path: Path) -> None:
    """Deleting twice is fine; copying a deleted, unknown or malformed id raises InputNotFound."""
    stored = await store.save_bytes(b"short-lived", filename="gone.bin")
    await store.delete(stored.storage_id)
    await store.delete(stored.storage_id)
    await store.delete("not-an-object-id")
    for storage_id in (stored.storage_id, str(ObjectId()), "not-an-object-id"):
        with pytest.raises(InputNotFound, match="no longer stored"):
            await store.copy_to(storage_id, tmp_path / "missing.bin")


async def test_a_file_larger_than_a_wire_message_reads_whole(store: FileStore) -> None:
    """A file over 48 MB (what PyMongo takes in one message) reads whole and in order, and so does a range
    across the windows of chunks it is read in: nx-27017 answered GridOut's one cursor with every chunk in
    one message, which PyMongo refused, so such a file could not be downloaded or analysed."""
    block = os.urandom(CHUNK_BYTES)
    payload = b"".join(block[n:] + block[:n] for n in range(49)) + b"tail"
    stored = await store.save(chunked(payload, CHUNK_BYTES), filename="large.bin", max_bytes=len(payload))
    digest = hashlib.sha256()
    async for chunk in store.read(stored.storage_id):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    start, end = 3 * CHUNK_BYTES + 17, (3 + WINDOW_CHUNKS * 2) * CHUNK_BYTES + 5
    assert await read_all(store, stored.storage_id, start=start, end=end) == payload[start : end + 1]
    await store.delete(stored.storage_id)


async def test_a_file_of_another_chunk_size_reads_by_its_own(store: FileStore, db: DatabaseManager) -> None:
    """A file stored with GridFS's default chunks (255 KiB, by another writer) reads by its own size."""
    payload = os.urandom(5 * 255 * 1024 + 99)
    storage_id = await db.gridfs.upload_from_stream("theirs.bin", payload)
    assert await read_all(store, str(storage_id)) == payload
    assert (
        await read_all(store, str(storage_id), start=255 * 1024 - 1, end=4 * 255 * 1024)
        == (payload[255 * 1024 - 1 : 4 * 255 * 1024 + 1])
    )


async def test_a_file_whose_chunks_are_gone_fails_to_read(store: FileStore, db: DatabaseManager) -> None:
    """A file whose files document outlived its chunks is corrupt, not empty."""
    stored = await store.save_bytes(os.urandom(CHUNK_BYTES + 10), filename="torn.bin")
    await db.collection("fs.chunks").delete_many({"files_id": ObjectId(stored.storage_id)})
    with pytest.raises(CorruptGridFile, match="chunk 0 is missing"):
        await read_all(store, stored.storage_id)


class DeletedWhileRead(FileStore):
    """The real file store, whose file is deleted (as `DELETE /v1/files/{id}` drops its bytes) once the first
    chunk of a read has gone by."""

    async def read(self, storage_id: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        deleted = False
        async for chunk in super().read(storage_id, start=start, end=end):
            yield chunk
            if not deleted:
                await self.delete(storage_id)
                deleted = True


async def test_a_file_deleted_while_a_worker_copies_it_is_not_found(
    store: FileStore, db: DatabaseManager, tmp_path: Path
) -> None:
    """A job's input deleted by its tenant while the worker copies it fails the job INPUT_NOT_FOUND: its
    chunks went missing under the read, which failed the job INTERNAL_ERROR ("CorruptGridFile"), a bug.
    A file whose chunks are gone while its files document stays is still corrupt."""
    deleting = DeletedWhileRead(store.bucket, store.chunks)
    stored = await deleting.save_bytes(os.urandom((WINDOW_CHUNKS + 2) * CHUNK_BYTES), filename="big.mp4")
    with pytest.raises(InputNotFound, match="deleted while"):
        await deleting.copy_to(stored.storage_id, tmp_path / "copy.mp4")
    torn = await store.save_bytes(os.urandom(CHUNK_BYTES + 10), filename="torn.mp4")
    await db.collection("fs.chunks").delete_many({"files_id": ObjectId(torn.storage_id)})
    with pytest.raises(CorruptGridFile, match="chunk 0 is missing"):
        await store.copy_to(torn.storage_id, tmp_path / "torn.mp4")
    await store.delete(torn.storage_id)
