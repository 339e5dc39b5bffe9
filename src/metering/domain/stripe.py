"""The pure rules of the billing sync to Stripe: which hours are closed and
reportable, the identifier of an hour's meter event, and how exact decimal
usage becomes the whole-unit values Stripe's v1 meter events take.

The unit of export is one (customer, meter, closed UTC hour). Its progress is
a running account (`Progress`) that the exporter stores per customer and
meter and advances one hour at a time (`plan_steps`):

- `accounted_total`: the exact usage of every hour before `exported_through`,
  as last read from the rollups;
- `skipped_total`: the part of it that was in hours too old for Stripe (more
  than 35 days), which is counted and never reported;
- `sent_units`: the whole units Stripe has acknowledged.

An hour's value is `floor(accounted_total - skipped_total) - sent_units`:
whole units, with the fraction carried forward exactly, so the units sent
always equal the floor of the exact reportable total. Nothing is lost and
nothing is counted twice. A value that would be negative (a void after the
hour was reported) is carried forward too: later hours send less until it
is absorbed, so no negative meter event is ever sent.

A late change to an hour already reported (an event that landed after the
settle delay, or a void) is found by comparing the rollups of the exported
hours with `accounted_total`; the difference is added to the next hour's
event, or, when no later hour has usage, reported in an event of the last
closed hour. Either way the identifier is that of an hour never reported
before, and totals catch up with GetUsage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from metering.domain.decimals import ZERO
from metering.domain.windows import HOUR, floor_hour

# Stripe refuses meter events whose timestamp is more than 35 calendar days
# in the past (or more than 5 minutes in the future: a closed hour's start
# never is).
STRIPE_MAX_AGE = timedelta(days=35)
# An hour is reported only while its start is this much younger than Stripe's
# limit, so that a request in flight or a clock a little off cannot cross it.
REPORT_MARGIN = timedelta(minutes=10)
MAX_IDENTIFIER_LENGTH = 100  # Stripe's limit


@dataclass(frozen=True, slots=True)
class Progress:
    """What has been exported of one customer's meter (see the module doc)."""

    exported_through: datetime | None  # every closed hour before it is accounted; None: nothing yet
    accounted_total: Decimal = ZERO
    skipped_total: Decimal = ZERO
    sent_units: int = 0

    @property
    def reportable_total(self) -> Decimal:
        return self.accounted_total - self.skipped_total


@dataclass(frozen=True, slots=True)
class HourUsage:
    """The exact usage of one UTC hour, from the rollups."""

    hour: datetime
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class Step:
    """One hour accounted: the progress after it, and the units to send for
    it (0: no meter event, either because no whole unit is due or because
    the hour is too old for Stripe)."""

    hour: datetime
    progress: Progress
    units: int
    skipped: bool = False  # too old for Stripe: counted, not reported


def closed_end(now: datetime, settle_delay: timedelta) -> datetime:
    """The end of the last closed hour: an hour is closed once it ended at
    least `settle_delay` ago, so events arriving late within the delay are in
    its report."""
    return floor_hour(now - settle_delay)


def reportable(hour: datetime, now: datetime) -> bool:
    """Whether Stripe still accepts a meter event timestamped at `hour`."""
    return hour >= now - STRIPE_MAX_AGE + REPORT_MARGIN


def identifier(prefix: str, customer_id: str, meter_slug: str, hour: datetime) -> str:
    """The meter event identifier of (customer, meter, hour): the same every
    time it is computed, different for any other triple, and within Stripe's
    100 characters whatever the lengths of the ids (they are hashed; the hour
    is kept readable for people looking at Stripe's dashboard)."""
    start = floor_hour(hour)
    digest = hashlib.sha256("\x1f".join((customer_id, meter_slug, start.isoformat())).encode()).hexdigest()[:40]
    return f"{prefix}-{start:%Y%m%dT%H}Z-{digest}"


def whole_units(total: Decimal) -> int:
    """The whole units in an exact total (floor: a unit is sent once complete)."""
    return int(total.to_integral_value(rounding=ROUND_FLOOR))


def units_due(progress: Progress, reportable_total: Decimal) -> int:
    """The value of the next meter event: the whole units of the reportable
    total not yet sent, never negative (a decrease is carried forward)."""
    return max(0, whole_units(reportable_total) - progress.sent_units)


def plan_steps(
    progress: Progress,
    *,
    exported_range_total: Decimal,
    usage: Sequence[HourUsage],
    closed_before: datetime,
    now: datetime,
) -> list[Step]:
    """The hours to account next, in order, from one read of the rollups.

    `exported_range_total` is the rollups' current total of the hours before
    `progress.exported_through` (a late change shows as a difference from
    `progress.accounted_total`); `usage` holds the hours with rollups at or
    after it, ascending; only hours before `closed_before` are taken."""
    start = progress.exported_through
    late = ZERO if start is None else exported_range_total - progress.accounted_total
    state = progress
    steps: list[Step] = []
    for hour_usage in usage:
        if hour_usage.hour >= closed_before or (start is not None and hour_usage.hour < start):
            continue
        step = _account(state, hour_usage.hour, hour_usage.quantity + late, now)
        late = ZERO
        steps.append(step)
        state = step.progress
    if late != ZERO and start is not None and closed_before > start:
        # A change to hours already reported and no later usage: reported
        # with the last closed hour, whose identifier was never used.
        steps.append(_account(state, closed_before - HOUR, late, now))
    return steps


def _account(state: Progress, hour: datetime, change: Decimal, now: datetime) -> Step:
    accounted = state.accounted_total + change
    through = hour + HOUR
    if not reportable(hour, now):
        skipped = Progress(through, accounted, state.skipped_total + change, state.sent_units)
        return Step(hour, skipped, 0, skipped=True)
    units = units_due(state, accounted - state.skipped_total)
    return Step(hour, Progress(through, accounted, state.skipped_total, state.sent_units + units), units)


def abandoned(before: Progress, step: Step) -> Progress:
    """The progress once a decided meter event can no longer be sent (it
    became too old for Stripe before it was acknowledged): its hour counts as
    skipped, and the units it carried are due again from later hours only as
    far as later usage makes them (the reportable total stays where it was)."""
    after = step.progress
    return Progress(
        after.exported_through,
        after.accounted_total,
        after.skipped_total + (after.accounted_total - before.accounted_total),
        before.sent_units,
    )


def lag_seconds(oldest_unexported: datetime | None, now: datetime, settle_delay: timedelta) -> float:
    """How long the oldest closed hour not yet exported has been closed (0
    when every closed hour is exported)."""
    if oldest_unexported is None:
        return 0.0
    closed_at = oldest_unexported + HOUR + settle_delay
    return max(0.0, (now - closed_at).total_seconds())
