"""The page-token signing key: created once in the database, shared by every replica."""

from __future__ import annotations

import secrets

from metering.ledger.pool import Connection

KEY_BYTES = 32  # 256 bits, the size of HMAC-SHA256's output (migration 0008 checks it)

_CREATE = "INSERT INTO page_token_key (key) VALUES ($1) ON CONFLICT (id) DO NOTHING"
_READ = "SELECT key FROM page_token_key WHERE id"


async def page_token_key(conn: Connection) -> bytes:
    """The key; the first caller ever creates it (a concurrent first caller's key
    loses the insert, and both read back the one that won)."""
    await conn.execute(_CREATE, secrets.token_bytes(KEY_BYTES))
    key = await conn.fetchval(_READ)
    return bytes(key)
