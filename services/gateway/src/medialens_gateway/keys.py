"""`medialens-keys`: the tenants and API keys of a deployment.

    medialens-keys create TENANT [--name NAME]   a new key for TENANT (made if new), printed once
    medialens-keys list [TENANT]                 the keys (their ids, never the keys), by tenant
    medialens-keys revoke KEY_ID [KEY_ID ...]    revoke keys; gateways refuse them within 30 s
    medialens-keys secret TENANT [--rotate]      the tenant's webhook secret (a new one with --rotate)

Outside development (`MEDIALENS_ENVIRONMENT=development` makes `MEDIALENS_DEV_API_KEYS` at the gateway's
start) this is how keys come to exist. A key is stored only as its SHA-256 (see `medialens_gateway.auth`),
so a lost key cannot be shown again: create another and revoke the old one. A revoked key still works for
up to `MEDIALENS_GATEWAY_KEY_CACHE_TTL_S` (30 s) in a gateway that verified it just before (its `KeyCache`).
Revoking a key revoked before says when it was and succeeds, so a revocation can be run again safely.

It reads the same MEDIALENS_* settings as the services (only PostgreSQL is used) and warns, as they do, of a
variable that names no setting. Exit codes:

    0  done (revoking a key revoked before included)
    1  no such key (revoke) or tenant (secret)
    2  a bad command line or a bad setting
    3  the database cannot be used: PostgreSQL unreachable or refusing MEDIALENS_POSTGRES_URL, or its schema
       not this release's (run medialens-migrate); one line says which
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from medialens_gateway.auth import ensure_tenant, hash_key, new_webhook_secret
from medialens_shared.db import DatabaseManager, postgres_problem
from medialens_shared.logs import configure_logging
from medialens_shared.settings import load_settings
from medialens_shared.tables import api_keys, tenants

#: What a tenant id may be: it names the tenant's data everywhere (rows, documents, channels).
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: Exit codes besides 0 and argparse's (and the settings') 2: see the module's docstring.
EXIT_NOT_FOUND = 1
EXIT_NO_DATABASE = 3


def new_key() -> str:
    """A new API key: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def _tenant_id(value: str) -> str:
    if not TENANT_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a tenant id is 1 to 64 letters, digits, '_', '.' or '-', the first a letter or digit"
        )
    return value


async def create(db: DatabaseManager, *, tenant_id: str, name: str | None) -> tuple[int, str]:
    """A new key for `tenant_id`, the tenant made first if it is new: (the key's id, the key)."""
    key = new_key()
    async with db.session() as session:
        await ensure_tenant(session, tenant_id, name=name)
        key_id = await session.scalar(
            insert(api_keys).values(tenant_id=tenant_id, key_hash=hash_key(key)).returning(api_keys.c.id)
        )
        await session.commit()
    assert key_id is not None
    return key_id, key


async def listed(db: DatabaseManager, *, tenant_id: str | None) -> list[str]:
    """One line per key: id, tenant, created and (if so) revoked, oldest first."""
    query = select(api_keys.c.id, api_keys.c.tenant_id, api_keys.c.created_at, api_keys.c.revoked_at)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    async with db.session() as session:
        rows = (await session.execute(query.order_by(api_keys.c.id))).all()
    return [
        f"{row.id:>8}  {row.tenant_id:24}  created {row.created_at:%Y-%m-%d %H:%M:%S}"
        + (f"  revoked {row.revoked_at:%Y-%m-%d %H:%M:%S}" if row.revoked_at else "")
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Revoked:
    """The known keys of a revocation: those it revoked, and those revoked before it (with when)."""

    now: list[int]
    before: dict[int, datetime]


async def revoke(db: DatabaseManager, *, key_ids: list[int]) -> Revoked:
    """Revoke the keys of `key_ids` not revoked yet. Those revoked before come back apart from unknown ids:
    both were one "not revoked" error, so a revocation run again failed like a mistyped id."""
    async with db.session() as session:
        revoked = await session.scalars(
            update(api_keys)
            .where(api_keys.c.id.in_(key_ids), api_keys.c.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(api_keys.c.id)
        )
        now = sorted(revoked.all())
        earlier = await session.execute(
            select(api_keys.c.id, api_keys.c.revoked_at).where(
                api_keys.c.id.in_(key_ids), api_keys.c.revoked_at.is_not(None)
            )
        )
        before = {key_id: at for key_id, at in earlier.all() if key_id not in now}
        await session.commit()
    return Revoked(now=now, before=before)


async def webhook_secret(db: DatabaseManager, *, tenant_id: str, rotate: bool) -> str | None:
    """The secret the tenant's webhooks are signed with (a new one first, with `rotate`: deliveries made
    after it carry the new signature); None when there is no such tenant."""
    async with db.session() as session:
        if rotate:
            secret = await session.scalar(
                update(tenants)
                .where(tenants.c.id == tenant_id)
                .values(webhook_secret=new_webhook_secret())
                .returning(tenants.c.webhook_secret)
            )
            await session.commit()
        else:
            secret = await session.scalar(select(tenants.c.webhook_secret).where(tenants.c.id == tenant_id))
    return None if secret is None else str(secret)


async def main_async(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medialens-keys",
        description=__doc__.splitlines()[0],
        epilog="exit codes:\n" + __doc__.split("Exit codes:\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("create", help="a new key for a tenant (the tenant made if new)")
    made.add_argument("tenant", type=_tenant_id)
    made.add_argument("--name", help="the tenant's display name, when it is new (default: its id)")
    shown = commands.add_parser("list", help="the keys, by id (keys themselves are never stored)")
    shown.add_argument("tenant", nargs="?", type=_tenant_id)
    gone = commands.add_parser("revoke", help="revoke keys by id")
    gone.add_argument("key_ids", nargs="+", type=int)
    signed = commands.add_parser(
        "secret", help="the secret the tenant's webhooks are signed with (X-MediaLens-Signature)"
    )
    signed.add_argument("tenant", type=_tenant_id)
    signed.add_argument("--rotate", action="store_true", help="make a new one first (the old one stops)")
    args = parser.parse_args(argv)

    settings = load_settings()
    configure_logging(settings, service="keys")
    if settings.log.level == "INFO":
        # The command's output is its own lines: the pools' INFO lines ("closed") came between them.
        logging.getLogger().setLevel(logging.WARNING)
    db = DatabaseManager(settings, name="keys")  # only PostgreSQL is used (opened on first use)
    try:
        if problem := await postgres_problem(db):
            print(f"medialens-keys: {problem}", file=sys.stderr)
            return EXIT_NO_DATABASE
        if args.command == "create":
            key_id, key = await create(db, tenant_id=args.tenant, name=args.name)
            print(f"key {key_id} for tenant {args.tenant} (shown this once; send it as X-API-Key):")
            print(key)
            return 0
        if args.command == "list":
            lines = await listed(db, tenant_id=args.tenant)
            print("\n".join(lines) if lines else "no keys")
            return 0
        if args.command == "secret":
            secret = await webhook_secret(db, tenant_id=args.tenant, rotate=args.rotate)
            if secret is None:
                print(f"no tenant {args.tenant}", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(secret)
            return 0
        return await _revoke_command(db, key_ids=args.key_ids)
    finally:
        await db.close_all()


async def _revoke_command(db: DatabaseManager, *, key_ids: list[int]) -> int:
    revoked = await revoke(db, key_ids=key_ids)
    for key_id in revoked.now:
        print(f"revoked key {key_id}")
    for key_id, at in sorted(revoked.before.items()):
        print(f"key {key_id} already revoked (at {at:%Y-%m-%d %H:%M:%S %Z})")
    unknown = sorted(set(key_ids) - set(revoked.now) - set(revoked.before))
    if unknown:
        print(f"no such key: {', '.join(map(str, unknown))}", file=sys.stderr)
        return EXIT_NOT_FOUND
    return 0


def main() -> None:
    sys.exit(asyncio.run(main_async(sys.argv[1:])))


if __name__ == "__main__":
    main()
