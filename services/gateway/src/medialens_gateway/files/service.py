"""Files of a tenant: metadata rows in PostgreSQL, bytes in GridFS."""

from __future__ import annotations

import uuid
from typing import Any

from gridfs.errors import NoFile
from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_gateway.files.uploads import Upload
from medialens_gateway.pagination import page
from medialens_shared.envelope import iso
from medialens_shared.errors import NotFound
from medialens_shared.filestore import Download, FileStore, file_row, mark_deleted
from medialens_shared.tables import files


def file_view(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "filename": row["filename"],
        "content_type": row["content_type"],
        "size_bytes": row["size_bytes"],
        "sha256": row["sha256"],
        "kind": row["kind"],
        "job_id": row["job_id"],
        "created_at": iso(row["created_at"]),
    }


async def store_upload(
    session: AsyncSession, *, store: FileStore, tenant_id: str, upload: Upload, max_bytes: int
) -> RowMapping:
    """Stream `upload` into GridFS, then record it; the bytes are removed again if recording fails."""
    file_id = uuid.uuid4().hex
    stored = await store.save(
        upload.chunks,
        filename=upload.filename,
        max_bytes=max_bytes,
        metadata={"tenant_id": tenant_id, "file_id": file_id},
    )
    try:
        row = (
            (
                await session.execute(
                    file_row(
                        stored,
                        file_id=file_id,
                        tenant_id=tenant_id,
                        filename=upload.filename,
                        content_type=upload.content_type,
                    ).returning(*files.c)
                )
            )
            .mappings()
            .one()
        )
        await session.commit()
    except BaseException:
        await store.delete(stored.storage_id)
        raise
    return row


async def get_file(session: AsyncSession, *, tenant_id: str, file_id: str) -> RowMapping:
    query = select(files).where(
        files.c.id == file_id, files.c.tenant_id == tenant_id, files.c.deleted_at.is_(None)
    )
    row = (await session.execute(query)).mappings().one_or_none()
    if row is None:
        raise NotFound(f"No file {file_id} for this API key's tenant.")
    return row


async def open_content(store: FileStore, row: RowMapping, *, start: int, end: int) -> Download:
    """The bytes of the file `row`, opened (none read yet) for `start..end`: before a response is begun, so
    that MongoDB being away is the edge's 503 and bytes deleted since the row was read (a DELETE between the
    two) a 404, not a 200 whose body breaks off."""
    try:
        return await store.open(row["storage_id"], start=start, end=end)
    except NoFile as exc:
        raise NotFound(f"No file {row['id']} for this API key's tenant.") from exc


async def list_files(
    session: AsyncSession, *, tenant_id: str, limit: int, cursor: str | None
) -> list[RowMapping]:
    query = select(files).where(files.c.tenant_id == tenant_id, files.c.deleted_at.is_(None))
    query = page(
        query, created_at=files.c.created_at, item_id=files.c.id, limit=limit, cursor=cursor, listing="files"
    )
    return list((await session.execute(query)).mappings().all())


async def delete_file(session: AsyncSession, *, store: FileStore, tenant_id: str, file_id: str) -> None:
    """Drop the file's bytes, then mark it deleted (jobs keep their reference).

    In this order so that a 503 means nothing was done: marked first, a MongoDB away answered 503 "retry"
    for a file already gone (the retry said 404) whose bytes then stayed in GridFS for good. Bytes dropped
    and the mark not committed (PostgreSQL away: 503 too) leave a file whose content answers 404 until the
    retry, which finds no bytes to drop (no error) and marks it."""
    row = await get_file(session, tenant_id=tenant_id, file_id=file_id)
    await store.delete(row["storage_id"])
    await mark_deleted(session, files.c.id == row["id"])
    await session.commit()
