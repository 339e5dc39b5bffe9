"""Billing periods closing into invoices: the pure decisions, no I/O.

A customer's billing periods are monthly from its billing anchor (UTC) and
close in order, oldest first. A period [start, end) is gathering while it runs,
a draft from its end until end + grace (late events still count), and then
due: the closer (metering.services.invoicing) finalizes its invoice, which never
changes again. From then on a new event in that period is refused, and so is
an event before the customer's first period, which never existed for it,
unless it is within the clock-skew tolerance before the billing anchor
(METERING_ANCHOR_SKEW_TOLERANCE): such an event is stored with its own time
and counts in the first period (`counting_time`), whose bill includes it
(`usage_range`).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta

from metering.domain.errors import BeforeFirstPeriod, MeteringError, PeriodClosed
from metering.domain.periods import MIN_TIME, BillingPeriod, ResetPeriod, billing_period_containing
from metering.domain.periods import rfc3339 as rfc3339  # invoice ids hash it; callers format with it

# Bills, and with them invoices and the closing of periods, are monthly from
# the customer's billing anchor.
BILLING_PERIOD = ResetPeriod.MONTH

# Invoice ids are UUIDv5 of (customer, period start) in this namespace: every
# replica, and every retry of a close, names the same invoice the same way, and
# a refusal can name the invoice of a period without reading it.
_INVOICE_NAMESPACE = uuid.UUID("6d657465-7269-6e67-2d69-6e766f696365")


def billing_period(instant: datetime, anchor: datetime) -> BillingPeriod:
    return billing_period_containing(instant, anchor, BILLING_PERIOD)


def first_period_end(anchor: datetime) -> datetime:
    return billing_period(anchor, anchor).end


def following_period_end(period_end: datetime, anchor: datetime) -> datetime:
    """The end of the period that starts where the one ending at `period_end` ends."""
    return billing_period(period_end, anchor).end


def invoice_id_for(customer_id: str, period_start: datetime) -> uuid.UUID:
    return uuid.uuid5(_INVOICE_NAMESPACE, f"{customer_id}\n{rfc3339(period_start)}")


def unfinalized_period(
    customer_id: str, anchor: datetime, closed_through: datetime | None, invoice_id: uuid.UUID, now: datetime
) -> BillingPeriod | None:
    """The customer's period not finalized yet (one that ended and waits to
    close, or the current one at `now`) whose invoice will have `invoice_id`;
    None when no such period has that id."""
    start = closed_through or anchor
    while True:
        period = billing_period(start, anchor)
        if invoice_id_for(customer_id, period.start) == invoice_id:
            return period
        if period.end > now:
            return None
        start = period.end


def is_due(period_end: datetime, grace: timedelta, now: datetime) -> bool:
    """Whether a period that ended at `period_end` may be finalized at `now`."""
    return period_end + grace <= now


def waiting_age(period_end: datetime | None, now: datetime) -> float:
    """Seconds since the oldest period not yet finalized ended (0 while none
    has ended): at most about the grace period while closing keeps up."""
    if period_end is None or period_end >= now:
        return 0.0
    return (now - period_end).total_seconds()


class EventTime(enum.Enum):
    """Where a new event's time falls for its customer."""

    OPEN = "open"  # a period that is gathering or a draft: the event counts
    BEFORE_FIRST_PERIOD = "before_first_period"  # before the billing anchor, beyond the skew tolerance
    CLOSED = "closed"  # in a period whose invoice is finalized


def counting_time(event_time: datetime, anchor: datetime) -> datetime:
    """The instant an event counts at: its own time, or the billing anchor for
    one before it (accepted within the clock-skew tolerance). Nothing counts
    before the first period: an event stamped a little before its customer's
    anchor (the caller's clock runs behind ours, or the work started just
    before sign-up) counts in the first period of every meter, and in the
    first bill, while it is stored, listed and aggregated at its own time."""
    return event_time if event_time >= anchor else anchor


def usage_range(period: BillingPeriod, anchor: datetime) -> tuple[datetime, datetime]:
    """The event times whose usage a billing period's bill adds up: the
    period's own, and for the first period also every earlier time (events
    accepted within the skew tolerance before the anchor: no other event
    before the anchor is ever recorded)."""
    start = MIN_TIME if period.start <= anchor else period.start
    return start, period.end


def is_closed(instant: datetime, anchor: datetime, closed_through: datetime | None) -> bool:
    """Whether usage at `instant` would change a finalized period."""
    return closed_through is not None and counting_time(instant, anchor) < closed_through


def classify(
    event_time: datetime, anchor: datetime, closed_through: datetime | None, skew_tolerance: timedelta
) -> EventTime:
    if event_time < anchor - skew_tolerance:
        return EventTime.BEFORE_FIRST_PERIOD
    if is_closed(event_time, anchor, closed_through):
        return EventTime.CLOSED
    return EventTime.OPEN


def period_closed(customer_id: str, transaction_id: str, instant: datetime, anchor: datetime) -> PeriodClosed:
    """The refusal of a change to the finalized period that usage at `instant` counts in."""
    period = billing_period(counting_time(instant, anchor), anchor)
    return PeriodClosed(transaction_id, period=period, invoice_id=str(invoice_id_for(customer_id, period.start)))


def late_refusal(
    customer_id: str,
    transaction_id: str,
    event_time: datetime,
    anchor: datetime,
    closed_through: datetime | None,
    skew_tolerance: timedelta,
) -> MeteringError | None:
    """Why a NEW event at `event_time` cannot be recorded, if it cannot: more
    than `skew_tolerance` before the anchor, or counting in a finalized period.
    A reused transaction id is judged before (a duplicate or a conflict,
    whatever its time): the writer applies this only to new ids."""
    kind = classify(event_time, anchor, closed_through, skew_tolerance)
    if kind is EventTime.BEFORE_FIRST_PERIOD:
        return BeforeFirstPeriod(transaction_id, event_time, anchor)
    if kind is EventTime.CLOSED:
        return period_closed(customer_id, transaction_id, event_time, anchor)
    return None
