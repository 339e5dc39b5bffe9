"""The database a process uses: the configured one or an embedded PostgreSQL,
its pool (waiting for it at start-up), what start-up does to it once, and the
one-shot commands (`metering migrate`, `audit`, `webhooks replay`); the
connections themselves stay in the ledger (metering.ledger.maintenance)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from metering.config.settings import Settings
from metering.domain.catalog import Catalog
from metering.ledger import maintenance
from metering.ledger.audit import AuditReport
from metering.ledger.outbox import OutboxStore
from metering.ledger.pool import Pool, create_pool, is_unavailable
from metering.runtime.embedded import EmbeddedPostgres, start_embedded

log = logging.getLogger(__name__)

# How long start-up waits for the database before giving up.
STARTUP_DATABASE_WAIT_SECONDS = 30.0


@dataclass
class Database:
    """The database the service runs on, and the embedded server behind it if it started one."""

    url: str
    embedded: EmbeddedPostgres | None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def open_database(settings: Settings) -> Database:
    if settings.database_url:
        return Database(settings.database_url, None)
    embedded = start_embedded(settings.embedded_data_dir)
    return Database(embedded.uri(), embedded)


async def connect(settings: Settings, url: str) -> Pool:
    """Create the pool, waiting up to STARTUP_DATABASE_WAIT_SECONDS for the database."""
    deadline = time.monotonic() + STARTUP_DATABASE_WAIT_SECONDS
    while True:
        try:
            return await create_pool(
                url,
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                db_timeout=settings.db_timeout,
                connect_timeout=settings.db_connect_timeout,
            )
        except Exception as exc:
            if not is_unavailable(exc) or time.monotonic() > deadline:
                raise
            log.warning("waiting for the database: %s", exc)
            await asyncio.sleep(0.5)


async def open_replica_pool(settings: Settings) -> Pool | None:
    """METERING_READ_DATABASE_URL's pool (None without one). It opens no
    connection up front: a replica that is down at start-up does not stop the
    service (metering.ledger.replica routes the reads to the primary)."""
    if settings.read_database_url is None:
        return None
    return await create_pool(
        settings.read_database_url,
        min_size=0,
        max_size=settings.db_pool_max,
        db_timeout=settings.db_timeout,
        connect_timeout=settings.db_connect_timeout,
        application_name="metering-read",
    )


async def prepare_database(pool: Pool, catalog: Catalog) -> None:
    """What start-up does to the database once: migrations (under their
    advisory lock) and the rollups' layout for the catalog's dimensions."""
    prepared = await maintenance.prepare(pool, catalog)
    if prepared.applied:
        log.info("migrations applied: %s", ", ".join(prepared.applied))
    if prepared.rebuilt:
        log.info("rollups rebuilt for the catalog's dimensions: %s", ", ".join(prepared.rebuilt))


async def run_migrations(settings: Settings, url: str) -> list[str]:
    pool = await connect(settings, url)
    try:
        return await maintenance.apply_migrations(pool)
    finally:
        await pool.close()


async def audit(
    settings: Settings, url: str, catalog: Catalog, customer_ids: Sequence[str] | None = None
) -> AuditReport:
    pool = await connect(settings, url)
    try:
        return await maintenance.audit(pool, catalog, customer_ids)
    finally:
        await pool.close()


async def replay_dead_letters(settings: Settings, url: str, endpoint: str, since: datetime | None) -> int:
    pool = await connect(settings, url)
    try:
        store = OutboxStore(pool, acquire_timeout=settings.db_timeout.total_seconds())
        return await store.replay_dead_letters(endpoint, since)
    finally:
        await pool.close()
