"""SQL fragments shared by the ledger's modules, and row mappers.

Values never enter statement text: `Sql` numbers parameters; only fixed
fragments from this module are interpolated.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from metering.domain import limits
from metering.domain.catalog import Aggregation
from metering.domain.records import GrantRecord, ReservationRecord, StoredEvent

# A timestamptz array sent as whole microseconds since the Unix epoch (a
# bigint[]): asyncpg's binary timestamptz encoding costs about 2 us a value,
# a bigint's a quarter of that, and a batch sends two per event. The whole
# seconds and the microsecond remainder are each exact in interval arithmetic,
# so the value is exact over years 1 to 9999 in any session time zone
# (tests/integration/test_epoch_micros.py).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_micros(values: Sequence[datetime]) -> list[int]:
    """Aware datetimes as microseconds since the epoch, for timestamp_from_micros.
    The events of a batch mostly share their time (the call's) and their period
    start: each distinct value is converted once."""
    converted: dict[datetime, int] = {}
    micros = []
    for value in values:
        found = converted.get(value)
        if found is None:
            found = converted[value] = (value - _EPOCH) // _MICROSECOND
        micros.append(found)
    return micros


def timestamp_from_micros(micros: str) -> str:
    """The timestamptz of a bigint of epoch_micros."""
    return (
        f"(timestamptz 'epoch' + ({micros} / 1000000) * interval '1 second' "
        f"+ ({micros} % 1000000) * interval '1 microsecond')"
    )


# usage_events columns, in StoredEvent order (without the void fields).
EVENT_COLUMNS = (
    "event_id, customer_id, transaction_id, meter_slug, price_slug, requested_price_slug, "
    "quantity, event_time, period_start, recorded_at, properties"
)
# An event with its void, if any: `SELECT {EVENT_SELECT} FROM {EVENT_FROM} WHERE ...`.
EVENT_SELECT = (
    "e.event_id, e.customer_id, e.transaction_id, e.meter_slug, e.price_slug, e.requested_price_slug, "
    "e.quantity, e.event_time, e.period_start, e.recorded_at, e.properties, "
    "v.voided_at AS void_time, v.reason AS void_reason"
)
EVENT_FROM = "usage_events e LEFT JOIN usage_voids v ON v.customer_id = e.customer_id AND v.event_id = e.event_id"
# A condition on `e` that keeps events that still count.
NOT_VOIDED = "NOT EXISTS (SELECT 1 FROM usage_voids v WHERE v.customer_id = e.customer_id AND v.event_id = e.event_id)"
COUNTER_COLUMNS = "used, event_count, latest_event_time, latest_event_id"


def recomputed_counter_columns(value: str) -> str:
    """A counter's columns (COUNTER_COLUMNS) recomputed from the events `e` a query selects,
    `value` being the meter's aggregation (VALUE_SQL): the one place a counter is rebuilt
    from its events (after a void, or a wallet's priced quantity)."""
    return (
        f"coalesce({value}, 0) AS used, count(e.event_id) AS event_count, "
        "(array_agg(e.event_time ORDER BY e.event_time DESC, e.event_id DESC))[1] AS latest_event_time, "
        "(array_agg(e.event_id ORDER BY e.event_time DESC, e.event_id DESC))[1] AS latest_event_id"
    )


# customers columns, in CustomerRecord order.
CUSTOMER_COLUMNS = "customer_id, plan_slug, billing_anchor, created_at, updated_at, closed_through, has_wallet"


def active_grants_sum(customer: str, meter: str, at: str) -> str:
    """The sum of the grants of `customer`'s `meter` active at `at` (SQL
    expressions): effective from effective_at, until expires_at (exclusive)."""
    return (
        "(SELECT coalesce(sum(g.quantity), 0) FROM grants g"
        f" WHERE g.customer_id = {customer} AND g.meter_slug = {meter}"
        f" AND g.effective_at <= {at} AND (g.expires_at IS NULL OR g.expires_at > {at}))"
    )


def live_holds_sum(customer: str, meter: str, period_start: str, extra: str = "") -> str:
    """The sum of the holds on a counter that are still held and unexpired by
    the database's clock (the one clock that decides expiry on every replica)."""
    return (
        "(SELECT coalesce(sum(r.quantity), 0) FROM reservations r"
        f" WHERE r.customer_id = {customer} AND r.meter_slug = {meter} AND r.period_start = {period_start}"
        f" AND r.status = 'held' AND r.expires_at > clock_timestamp(){extra})"
    )


# Locks a counter row, creating it at zero if new: the no-op update is what
# takes the row lock in the same statement. Follows `INSERT ... (customer_id,
# meter_slug, period_start, period_end) VALUES/SELECT ...`.
COUNTER_LOCK = "ON CONFLICT (customer_id, meter_slug, period_start) DO UPDATE SET period_end = c.period_end"
# An event insert that yields to the unique constraint, the final guard of
# exactly-once: a concurrent twin took the transaction id when nothing returns.
EVENT_INSERT = f"INSERT INTO usage_events ({EVENT_COLUMNS})"
EVENT_INSERT_GUARD = "ON CONFLICT (customer_id, transaction_id) DO NOTHING"
GRANT_COLUMNS = "grant_id, customer_id, meter_slug, quantity, effective_at, expires_at, reason, created_at"
RESERVATION_COLUMNS = (
    "reservation_id, customer_id, meter_slug, period_start, quantity, status, expires_at, created_at, "
    "settled_at, committed_quantity, event_id"
)

# The value of a group of events `e`, per aggregation: the one definition used
# by usage queries, bills and the counter recomputed after a void. LATEST
# breaks ties on event time by event id (time-ordered: recorded last wins).
VALUE_SQL = {
    Aggregation.SUM: "sum(e.quantity)",
    Aggregation.COUNT: "count(e.event_id)::numeric",
    Aggregation.MAX: "max(e.quantity)",
    Aggregation.UNIQUE_COUNT: "count(DISTINCT e.properties ->> {unique})::numeric",
    Aggregation.LATEST: "(array_agg(e.quantity ORDER BY e.event_time DESC, e.event_id DESC))[1]",
}


# The same values from the parts of a range `p` (metering.ledger.reporting):
# rollup buckets of its whole hours, the distinct values of those buckets
# (UNIQUE_COUNT), and single events of its partial edge hours, each part a
# row with event_count, quantity_sum, quantity_max, latest_* and value.
PARTS_VALUE_SQL = {
    Aggregation.SUM: "sum(p.quantity_sum)",
    Aggregation.COUNT: "sum(p.event_count)::numeric",
    Aggregation.MAX: "max(p.quantity_max)",
    Aggregation.UNIQUE_COUNT: "count(DISTINCT p.value)::numeric",
    Aggregation.LATEST: "(array_agg(p.latest_quantity ORDER BY p.latest_event_time DESC, p.latest_event_id DESC))[1]",
}


class Sql:
    """Builds a statement with numbered parameters."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def param(self, value: Any, cast: str = "") -> str:
        self.args.append(value)
        return f"${len(self.args)}{cast}"


def stored_event(row: asyncpg.Record) -> StoredEvent:
    """A row selected with EVENT_SELECT (or EVENT_COLUMNS: the void fields are then None)."""
    fields = dict(row)
    return StoredEvent(**fields)


def counter_state(row: asyncpg.Record) -> limits.CounterState:
    return limits.CounterState(
        used=row["used"],
        event_count=row["event_count"],
        latest_event_time=row["latest_event_time"],
        latest_event_id=row["latest_event_id"],
    )


def grant_record(row: asyncpg.Record) -> GrantRecord:
    return GrantRecord(**dict(row))


def reservation_record(row: asyncpg.Record) -> ReservationRecord:
    return ReservationRecord(**dict(row))
