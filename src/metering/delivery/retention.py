"""Retention: notifications every endpoint has received are deleted once
older than METERING_NOTIFICATION_RETENTION, in bounded batches (short
transactions, no long lock on the outbox). Every replica runs it: batches skip
rows another replica is deleting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from metering.ledger.outbox import OutboxStore

log = logging.getLogger(__name__)

BATCH = 1000


def purge_interval(retention: timedelta) -> float:
    """How often to look: a fraction of the retention, between 1 s and 5 min."""
    return min(max(retention.total_seconds() / 4, 1.0), 300.0)


class Retention:
    """Deletes notifications every endpoint has received once they are older than the retention,
    in short bounded batches, so the outbox does not grow forever. Safe on every replica at once:
    a batch skips rows another replica is deleting."""

    def __init__(self, store: OutboxStore, *, retention: timedelta, endpoints: Sequence[str]) -> None:
        self._store = store
        self._retention = retention
        self._endpoints = list(endpoints)

    def use_endpoints(self, endpoints: Sequence[str]) -> None:
        """The endpoints of a reloaded webhooks file (as at a restart with it)."""
        self._endpoints = list(endpoints)

    async def purge(self) -> int:
        """Delete every notification past retention, batch by batch; returns how many."""
        total = 0
        while True:
            deleted = await self._store.purge(self._retention, self._endpoints, BATCH)
            total += deleted
            if deleted < BATCH:
                return total

    async def run(self) -> None:
        while True:
            try:
                deleted = await self.purge()
                if deleted:
                    log.info("retention: deleted %d notifications", deleted)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retention: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(purge_interval(self._retention))
