"""API keys: who is calling, and the development tenants the gateway ensures at start.

A key is a long random token, stored only as its SHA-256; a request names it as `Authorization: Bearer
<key>` or `X-API-Key: <key>` and is answered for the key's tenant alone. A 401 carries the challenge HTTP
asks of one (RFC 9110 §11.6.1), for the form that is an HTTP authentication scheme: the Bearer token.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_shared.db import DatabaseManager
from medialens_shared.errors import Unauthorized
from medialens_shared.tables import api_keys, tenants


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    webhook_secret: str


#: `WWW-Authenticate` of a 401 (RFC 6750 §3: `Bearer` and at least one parameter); a key that was sent but
#: is not accepted is an `invalid_token`. `X-API-Key` is no HTTP authentication scheme: no challenge names it.
CHALLENGE = 'Bearer realm="MediaLens"'
BAD_KEY_CHALLENGE = f'{CHALLENGE}, error="invalid_token"'


def _unauthorized(message: str, *, challenge: str) -> Unauthorized:
    exc = Unauthorized(message)
    exc.headers = {"WWW-Authenticate": challenge}
    return exc


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of a request's (lower-cased) headers, or None."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def _no_key(authorization: str) -> str:
    """What a request presenting no key is told: how to send one, and why an Authorization header it sent
    in another form holds none (`Authorization: <key>` and `Basic` were answered "No API key")."""
    how = "send `Authorization: Bearer <key>` or `X-API-Key: <key>`."
    scheme = authorization.strip().partition(" ")[0]
    if not scheme:
        return f"No API key: {how}"
    if scheme.lower() == "bearer":
        return f"The Authorization header names the Bearer scheme but holds no key: {how}"
    if " " in authorization.strip():
        return f"The Authorization header's scheme is {scheme[:20]!r}, which holds no API key here: {how}"
    return f"The Authorization header holds no scheme before its value: {how}"


class KeyCache:
    """Recently verified keys, so a busy client does not cost a database round trip per request.

    A revoked key keeps working for at most `ttl_s` seconds in each gateway process; unknown keys are not
    cached (a client cannot fill the cache with guesses).
    """

    def __init__(self, *, ttl_s: float = 30.0, size: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._known: dict[str, tuple[Tenant, float]] = {}

    def get(self, key_hash: str) -> Tenant | None:
        found = self._known.get(key_hash)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def put(self, key_hash: str, tenant: Tenant) -> None:
        if len(self._known) >= self.size:
            self._known.clear()  # crude, and rare: the next requests fill it again
        self._known[key_hash] = (tenant, time.monotonic() + self.ttl_s)


async def authenticate(db: DatabaseManager, *, headers: Mapping[str, str], cache: KeyCache) -> Tenant:
    """The tenant of the key a request's (lower-cased) `headers` present: from the cache, else from the
    database (a session only on a miss)."""
    key = presented_key(headers)
    if not key:
        raise _unauthorized(_no_key(headers.get("authorization", "")), challenge=CHALLENGE)
    key_hash = hash_key(key)
    if (tenant := cache.get(key_hash)) is not None:
        return tenant
    query = (
        select(tenants.c.id, tenants.c.webhook_secret)
        .join(api_keys, api_keys.c.tenant_id == tenants.c.id)
        .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
    )
    async with db.session() as session:
        row = (await session.execute(query)).one_or_none()
    if row is None:
        raise _unauthorized("The API key is unknown or revoked.", challenge=BAD_KEY_CHALLENGE)
    tenant = Tenant(id=row.id, webhook_secret=row.webhook_secret)
    cache.put(key_hash, tenant)
    return tenant


def new_webhook_secret() -> str:
    """A tenant's webhook signing secret: 256 random bits, as hex."""
    return secrets.token_hex(32)


async def ensure_tenant(session: AsyncSession, tenant_id: str, *, name: str | None = None) -> None:
    """Create the tenant `tenant_id` (named `name`, else its id) unless it exists (race-safe)."""
    await session.execute(
        insert(tenants)
        .values(id=tenant_id, name=name or tenant_id, webhook_secret=new_webhook_secret())
        .on_conflict_do_nothing(index_elements=["id"])
    )


async def dev_keys_in_use(session: AsyncSession, *, pairs: list[tuple[str, str]]) -> list[str]:
    """The tenants whose development key of `pairs` (`MEDIALENS_DEV_API_KEYS`, `dev:dev-key` unless set) is
    a valid key here: a production gateway refuses to start on them (a development stack promoted to
    production kept `dev-key` working)."""
    hashes = {hash_key(key): tenant for tenant, key in pairs}
    query = select(api_keys.c.key_hash).where(
        api_keys.c.key_hash.in_(hashes), api_keys.c.revoked_at.is_(None)
    )
    return sorted({hashes[key_hash] for key_hash in (await session.scalars(query)).all()})


async def ensure_keys(session: AsyncSession, *, pairs: list[tuple[str, str]]) -> None:
    """Create the tenants and keys of `pairs` that do not exist yet (idempotent, race-safe)."""
    for tenant_id, key in pairs:
        await ensure_tenant(session, tenant_id)
        await session.execute(
            insert(api_keys)
            .values(tenant_id=tenant_id, key_hash=hash_key(key))
            .on_conflict_do_nothing(index_elements=["key_hash"])
        )
    await session.commit()
