"""File bytes in GridFS, always streamed: uploads in, ranges out, copies to a worker's scratch space.

Nothing here holds a whole file in memory: uploads are written chunk by chunk while their size is counted
and their SHA-256 computed, and reads come back as an async iterator of chunks. A read is opened first
(`open`: GridFS's files document fetched) and its bytes read after, so that an HTTP
download learns that MongoDB is away, or the file gone, before it has sent its status line.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from gridfs import AsyncGridFSBucket, AsyncGridOut
from gridfs.errors import CorruptGridFile, NoFile
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure
from sqlalchemy import ColumnElement, Insert, func, update
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_shared.contracts import FileKind
from medialens_shared.errors import InputNotFound, PayloadTooLarge
from medialens_shared.sniff import Sniffer
from medialens_shared.tables import files

#: GridFS chunk size: large enough to keep the chunk count low, small enough to stream.
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredFile:
    storage_id: str
    size_bytes: int
    sha256: str
    #: What its bytes are (`Sniffer`), told as they were written or read.
    kind: FileKind


class FileStore:
    def __init__(self, bucket: AsyncGridFSBucket, chunks: AsyncCollection[Any]) -> None:
        self.bucket = bucket
        #: The bucket's chunks collection, read by `Download` a window at a time.
        self.chunks = chunks

    async def save(
        self,
        chunks: AsyncIterable[bytes],
        *,
        filename: str,
        max_bytes: int,
        metadata: dict[str, Any] | None = None,
    ) -> StoredFile:
        """Store `chunks` as one file; over `max_bytes` the partial file is removed and 413 raised."""
        digest = hashlib.sha256()
        size = 0
        sniffer = Sniffer()
        upload = self.bucket.open_upload_stream(filename, chunk_size_bytes=CHUNK_BYTES, metadata=metadata)
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"The upload is larger than the limit of {max_bytes} bytes; send a smaller file."
                    )
                sniffer.feed(chunk)
                digest.update(chunk)
                await upload.write(chunk)
        except BaseException:
            # The chunks go first; deleting the never-written files document fails on some wire-compatible
            # servers (nx-27017), which must not turn a 413 into a 500.
            with contextlib.suppress(OperationFailure):
                await upload.abort()
            raise
        await upload.close()
        return StoredFile(
            storage_id=str(upload._id), size_bytes=size, sha256=digest.hexdigest(), kind=sniffer.kind
        )

    async def save_bytes(
        self, data: bytes, *, filename: str, metadata: dict[str, Any] | None = None
    ) -> StoredFile:
        """Store a small artifact (a thumbnail) made in memory."""

        async def one_chunk() -> AsyncIterator[bytes]:
            yield data

        return await self.save(one_chunk(), filename=filename, max_bytes=len(data), metadata=metadata)

    async def open(self, storage_id: str, *, start: int = 0, end: int | None = None) -> Download:
        """A stored file opened for its bytes `start..end` (inclusive, as in HTTP ranges), none read yet.

        Its files document is fetched here, so a MongoDB that is away (ConnectionFailure) or a file that is
        gone (NoFile) fails this call, not the first read of `Download.chunks`."""
        stream = await self.bucket.open_download_stream(_object_id(storage_id))
        return Download(stream, self.chunks, start=start, end=end)

    async def read(self, storage_id: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes `start..end` (inclusive, as in HTTP ranges) of a stored file, chunk by chunk."""
        download = await self.open(storage_id, start=start, end=end)
        async with contextlib.aclosing(download.chunks()) as chunks:
            async for chunk in chunks:
                yield chunk

    async def copy_to(self, storage_id: str, path: Path) -> StoredFile:
        """Write a stored file to `path` (a worker's scratch copy); what was written (its size and SHA-256
        as read, which the input cache checks against the file's row). InputNotFound if it is gone."""
        digest = hashlib.sha256()
        size = 0
        sniffer = Sniffer()
        try:
            with path.open("wb") as out:
                async for chunk in self.read(storage_id):
                    sniffer.feed(chunk)
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        except NoFile as exc:
            raise InputNotFound("The input file's content is no longer stored.") from exc
        except CorruptGridFile as exc:  # chunks missing: the file was deleted under the read, or is torn
            try:
                await (await self.open(storage_id)).close()
            except NoFile:
                raise InputNotFound("The input file was deleted while it was read.") from exc
            raise
        return StoredFile(
            storage_id=storage_id, size_bytes=size, sha256=digest.hexdigest(), kind=sniffer.kind
        )

    async def delete(self, storage_id: str) -> None:
        """Remove a stored file; removing one already gone is not an error."""
        try:
            await self.bucket.delete(_object_id(storage_id))
        except (NoFile, OperationFailure):  # MongoDB says NoFile; some wire-compatible servers fail the op
            return


#: How many of a file's chunks one query reads (4 MiB of ours; 1 MiB of GridFS's default 255 KiB chunks).
WINDOW_CHUNKS = 4


class Download:
    """A stored file opened by `FileStore.open`: its length known, its bytes not read yet.

    Its bytes are read a few chunks a query (`WINDOW_CHUNKS`), not through `AsyncGridOut.read`, whose one
    cursor over the file's chunks leaves the size of each answer to the server: nx-27017, the development
    and test server, answers it with every chunk at once, and PyMongo refuses a message over 48 MB, so no
    file larger than that could be downloaded or analysed under `make dev` (MongoDB itself answers in
    batches of at most 16 MiB). Each chunk read is checked to be in its place and of its size, as GridOut
    checks them (chunks past the file's length, which GridOut also refuses, are not read)."""

    def __init__(
        self, stream: AsyncGridOut, chunks: AsyncCollection[Any], *, start: int, end: int | None
    ) -> None:
        self.stream = stream
        self._chunks = chunks
        self.length: int = stream.length
        self.start = start
        self.last = self.length - 1 if end is None else min(end, self.length - 1)

    async def chunks(self) -> AsyncGenerator[bytes]:
        """The bytes `start..end`, chunk by chunk; the stream is closed after them."""
        try:
            size: int = self.stream.chunk_size
            file = self.stream._id
            position = self.start
            while position <= self.last:
                first = position // size
                after = min(first + WINDOW_CHUNKS, self.last // size + 1)
                window = await self._chunks.find(
                    {"files_id": file, "n": {"$gte": first, "$lt": after}}, sort=[("n", 1)]
                ).to_list()
                for n, chunk in enumerate(window, start=first):
                    data = chunk["data"]
                    expected = min(size, self.length - n * size)
                    if chunk["n"] != n or len(data) != expected:
                        raise CorruptGridFile(
                            f"file {file}: chunk {chunk['n']} of {len(data)} bytes, where chunk {n} of "
                            f"{expected} bytes was expected"
                        )
                    piece = bytes(data[position - n * size : self.last + 1 - n * size])
                    position += len(piece)
                    yield piece
                if first + len(window) < after:
                    raise CorruptGridFile(f"file {file}: chunk {first + len(window)} is missing")
        finally:
            await self.stream.close()

    async def close(self) -> None:
        """Let go of the stream without reading (a HEAD request, a response never sent)."""
        await self.stream.close()


def _object_id(storage_id: str) -> ObjectId:
    try:
        return ObjectId(storage_id)
    except InvalidId as exc:
        raise NoFile(f"no stored file {storage_id!r}") from exc


def file_row(
    stored: StoredFile,
    *,
    file_id: str,
    tenant_id: str,
    filename: str,
    content_type: str,
    job_id: str | None = None,
) -> Insert:
    """The insert of the files row that makes `stored` the tenant's file `file_id`: an upload's, or one a job
    saved (`job_id`). The one spelling of a file's row, for the gateway's uploads and the workers'
    artifacts."""
    return files.insert().values(
        id=file_id,
        tenant_id=tenant_id,
        filename=filename,
        content_type=content_type,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        kind=stored.kind.value,
        storage_id=stored.storage_id,
        job_id=job_id,
    )


async def mark_deleted(session: AsyncSession, where: ColumnElement[bool]) -> list[str]:
    """Mark deleted the files `where` picks that are not yet, in `session`'s transaction; their storage ids,
    whose bytes the caller drops once it commits (jobs keep naming the files, which answer 404; the relay's
    retention removes the rows). What `DELETE /v1/files` does, and a job's attempt that did not succeed,
    and the relay ending a job whose dead attempt left files."""
    marked = await session.execute(
        update(files)
        .where(where, files.c.deleted_at.is_(None))
        .values(deleted_at=func.now())
        .returning(files.c.storage_id)
    )
    return list(marked.scalars())
