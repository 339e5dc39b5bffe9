"""Reads off a streaming replica, within a bound on how stale they may be.

With METERING_READ_DATABASE_URL set, GetUsage, ListUsageEvents,
EstimateBill and the invoice reads take their connections from a ReadRouter
instead of the primary's pool: the replica's pool while the replica is up and
its data is at most METERING_READ_MAX_LAG behind the primary, else the
primary's. Everything that writes, and CheckBalance (read-your-writes), never
comes here.

How far behind the replica is, is measured from the primary's side of it, so
that a replica cut off from its primary (whose own idea of its lag stops
growing) is not taken for an up-to-date one: every probe notes the primary's
WAL position and when it was read, then asks the replica how far it has
replayed. A replica that has replayed past the position noted at time t holds
every transaction acknowledged before t, so its data is at most now - t
behind (`LagTracker`). Between probes that figure grows with the clock: it
never understates the lag, it overstates it by up to one probe interval.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from metering.domain.records import CustomerRecord, Invoice
from metering.ledger.customers import CustomerStore
from metering.ledger.invoicing import InvoiceStore
from metering.ledger.pool import Pool, is_unavailable

log = logging.getLogger(__name__)

# Primary positions kept while the replica has not replayed them yet. A
# replica that stays behind for longer (minutes, at one probe a second) is
# far past any sensible bound: dropping the oldest positions then only makes
# the measured lag larger, never smaller.
MAX_SAMPLES = 600

_PRIMARY_POSITION = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS position"
# NULL position: not a standby (promoted, or never one).
_REPLICA_POSITION = (
    "SELECT pg_is_in_recovery() AS in_recovery, pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS replayed"
)


class Route(enum.Enum):
    """Which pool serves a read, and why (the `reason` label of metering_read_routes_total)."""

    REPLICA = "replica"
    PRIMARY_LAG = "lag"  # the replica is further behind than the bound (or how far is not known yet)
    PRIMARY_REPLICA_DOWN = "replica_down"  # unreachable, or no longer a standby

    @property
    def pool(self) -> str:
        return "replica" if self is Route.REPLICA else "primary"


def choose(replica_up: bool, lag: float | None, max_lag: float) -> Route:
    """The route of one read: the replica only when it is up and known to be within the bound."""
    if not replica_up:
        return Route.PRIMARY_REPLICA_DOWN
    if lag is None or lag > max_lag:
        return Route.PRIMARY_LAG
    return Route.REPLICA


@dataclass
class LagTracker:
    """How far behind the primary a replica's data is, from pairs of
    positions: the primary's WAL position at an instant, and later how far the
    replica has replayed. Times are time.monotonic() seconds."""

    # (instant, primary WAL position then), oldest first, none replayed yet
    pending: deque[tuple[float, int]] = field(default_factory=deque)
    # The latest instant whose primary position the replica has replayed.
    replayed_through: float | None = None

    def primary_at(self, instant: float, position: int) -> None:
        if self.pending and position <= self.pending[-1][1]:
            # No WAL written since the last sample: the replica needs nothing
            # new to be as current as at this instant; moving the last
            # sample's time up keeps the pending list short on an idle primary.
            self.pending[-1] = (instant, self.pending[-1][1])
            return
        self.pending.append((instant, position))
        while len(self.pending) > MAX_SAMPLES:
            self.pending.popleft()

    def replica_replayed(self, position: int) -> None:
        while self.pending and self.pending[0][1] <= position:
            instant, _ = self.pending.popleft()
            self.replayed_through = instant if self.replayed_through is None else max(self.replayed_through, instant)

    def lag(self, now: float) -> float | None:
        """Seconds of acknowledged writes the replica may be missing; None until known."""
        return None if self.replayed_through is None else max(0.0, now - self.replayed_through)


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the last probe found, for the metrics."""

    up: bool
    lag: float | None


class ReadRouter:
    """A pool for reads (the `acquire` that PoolUser uses): the replica's or the primary's, per read."""

    def __init__(
        self,
        primary: Pool,
        replica: Pool,
        *,
        max_lag: float,
        timeout: float,
        on_route: Callable[[Route], None] = lambda route: None,
        on_probe: Callable[[ReplicaState], None] = lambda state: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._max_lag = max_lag
        self._timeout = timeout
        self._on_route = on_route
        self._on_probe = on_probe
        self._clock = clock
        self._tracker = LagTracker()
        self._replica_up = False  # until the first probe says otherwise

    def route(self) -> Route:
        return choose(self._replica_up, self._tracker.lag(self._clock()), self._max_lag)

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[PoolConnectionProxy]:  # noqa: ASYNC109 - as Pool.acquire
        route = self.route()
        started = time.monotonic()
        if route is Route.REPLICA:
            try:
                # Half the wait at most: a replica that cannot give a
                # connection in time leaves the primary the rest, so that the
                # read still answers within one timeout.
                conn = await self._replica.acquire(timeout=None if timeout is None else timeout / 2)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._replica_down(exc)
                route = Route.PRIMARY_REPLICA_DOWN
            else:
                self._on_route(route)
                try:
                    yield conn
                except Exception as exc:
                    if is_unavailable(exc):
                        # This read fails (UNAVAILABLE, retryable); the next
                        # ones go to the primary until a probe finds the
                        # replica back.
                        self._replica_down(exc)
                    raise
                finally:
                    await self._replica.release(conn)
                return
        self._on_route(route)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        async with self._primary.acquire(timeout=left) as conn:
            yield conn

    def _replica_down(self, exc: BaseException) -> None:
        if self._replica_up:
            log.warning("read replica unavailable, reads go to the primary: %s: %s", type(exc).__name__, exc)
        self._replica_up = False

    async def probe(self) -> ReplicaState:
        """Note the primary's WAL position, then ask the replica how far it has replayed."""
        instant = self._clock()
        try:
            self._tracker.primary_at(instant, (await self._fetch(self._primary, _PRIMARY_POSITION))[0])
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # The primary's health is DatabaseHealth's to report; without a
            # fresh position the measured lag grows with the clock.
        try:
            in_recovery, replayed = await self._fetch(self._replica, _REPLICA_POSITION)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            self._replica_down(exc)
        else:
            if in_recovery:
                self._tracker.replica_replayed(replayed)
                if not self._replica_up:
                    log.info("read replica reachable: reads go to it while it is within %gs", self._max_lag)
                self._replica_up = True
            else:
                # Promoted, or never a standby: its data may have parted from the primary's.
                if self._replica_up:
                    log.warning("the read replica is no longer a standby: reads go to the primary")
                self._replica_up = False
        state = ReplicaState(self._replica_up, self._tracker.lag(self._clock()))
        self._on_probe(state)
        return state

    async def _fetch(self, pool: Pool, query: str) -> asyncpg.Record:
        """One row, bounded by the timeout; a connection that failed is dropped (as PoolUser does)."""
        async with pool.acquire(timeout=self._timeout) as conn:
            try:
                row = await conn.fetchrow(query, timeout=self._timeout)
                if row is None:
                    raise RuntimeError(f"no row from {query!r}")  # each query selects one row of values
            except Exception as exc:
                if is_unavailable(exc):
                    conn.terminate()
                raise
        return row

    async def close(self) -> None:
        """Close the replica's pool (the primary's belongs to the service)."""
        await self._replica.close()

    async def run(self, interval: float) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(interval)


class ReadCustomerStore(CustomerStore):
    """The customer lookups of routed reads. A customer the replica does not
    have (yet: created within the lag bound) is looked up on the primary, so
    that a customer that exists is never NOT_FOUND; what the replica has may
    be as old as the bound allows, like everything else it serves."""

    def __init__(self, router: ReadRouter, primary: CustomerStore, *, acquire_timeout: float) -> None:
        super().__init__(router, acquire_timeout=acquire_timeout)
        self._primary_ledger = primary

    async def get_customer(self, customer_id: str) -> CustomerRecord | None:
        found = await super().get_customer(customer_id)
        return found if found is not None else await self._primary_ledger.get_customer(customer_id)


class ReadInvoiceStore(InvoiceStore):
    """The invoice reads of routed reads; an invoice id the replica does not
    have (finalized within the lag bound, its notification already sent) is
    looked up on the primary rather than answered NOT_FOUND."""

    def __init__(self, router: ReadRouter, primary: InvoiceStore, *, acquire_timeout: float) -> None:
        super().__init__(router, acquire_timeout=acquire_timeout)
        self._primary_store = primary

    async def get(self, invoice_id: UUID) -> Invoice | None:
        found = await super().get(invoice_id)
        return found if found is not None else await self._primary_store.get(invoice_id)


def lag_for_gauge(state: ReplicaState) -> float:
    """The lag gauge's value: NaN while the lag is not known."""
    return math.nan if state.lag is None else state.lag
