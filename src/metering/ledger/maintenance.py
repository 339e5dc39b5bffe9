"""What the process asks of the database outside of serving calls: the start-up
preparation (migrations, then the rollups' layout for the catalog), the one-shot
`metering migrate` and `metering audit`, and the page-token signing key.

Each takes the pool and holds its connection only inside the ledger, so the
composition root (metering.runtime) never touches a connection itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metering.domain.catalog import Catalog
from metering.ledger.audit import AuditReport, audit_ledger
from metering.ledger.migrate import migrate
from metering.ledger.page_token_key import page_token_key
from metering.ledger.pool import Pool
from metering.ledger.rollups import sync_layouts


@dataclass(frozen=True, slots=True)
class Prepared:
    """What start-up changed: the migrations it applied and the meters whose rollups it rebuilt."""

    applied: list[str]
    rebuilt: list[str]


async def prepare(pool: Pool, catalog: Catalog) -> Prepared:
    """Migrations (under their advisory lock), then the rollups' layout for the
    catalog's dimensions: what start-up does to the database once."""
    async with pool.acquire() as conn:
        applied = await migrate(conn)
        rebuilt = await sync_layouts(conn, catalog)
    return Prepared(applied, rebuilt)


async def apply_migrations(pool: Pool) -> list[str]:
    """The missing migrations applied; their names."""
    async with pool.acquire() as conn:
        return await migrate(conn)


async def audit(pool: Pool, catalog: Catalog, customer_ids: Sequence[str] | None = None) -> AuditReport:
    """Every counter and rollup bucket of `customer_ids` (all when None) checked against the events."""
    async with pool.acquire() as conn:
        return await audit_ledger(conn, catalog, customer_ids)


async def signing_key(pool: Pool) -> bytes:
    """The page-token signing key, created by whichever process came first:
    every replica and worker signs with it."""
    async with pool.acquire() as conn:
        return await page_token_key(conn)
