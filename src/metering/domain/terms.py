"""A customer's terms for a meter: customer -> plan -> the plan's terms for the meter.

The one place that turns those terms into numbers: the allowance (the plan's
limit plus the active grants, less the unexpired holds), the usage below which
no threshold can be reached, the balance figures, whether a requested quantity
fits, the refusal of a hard limit, and the period an instant falls in. The
writer's batch decision (metering.domain.usage), the services (usage,
entitlements) and the ledger's reservations (metering.ledger.entitlements) all
go through it. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from metering.domain import closing, decimals, limits
from metering.domain.catalog import Catalog, Meter, Plan, PlanMeter, Price
from metering.domain.decimals import ZERO
from metering.domain.errors import LimitExceeded
from metering.domain.notifications import MeterTerms
from metering.domain.periods import Period, Periods, period_containing
from metering.domain.records import CounterReading, CustomerRecord


def allowance(plan: limits.Allowance, granted: Decimal, reserved: Decimal) -> limits.Allowance:
    """The plan's part of an allowance with the grants and holds of a counter:
    every allowance that has grants or holds is built here."""
    return limits.Allowance(plan.aggregation, plan.enforcement, plan.limit, granted, reserved)


def quiet_below(allowance: limits.Allowance, approaching_threshold: Decimal) -> Decimal | None:
    """Usage below which no threshold can be reached (None: none ever is, the
    meter is unlimited), so that most events cost one comparison rather than
    two percentages. Percentages are rounded to a step of 0.01
    (metering.domain.decimals.percent): a rounded one reaches a threshold only once
    the exact one is within a step of it, so the bound is a full step lower
    and never skips a crossing that limits.thresholds_crossed would report."""
    total = allowance.total
    if total is None:
        return None
    lowest = min(approaching_threshold, decimals.HUNDRED) - decimals.PERCENT_STEP
    return max(decimals.ZERO, decimals.ROUNDING.divide(decimals.ROUNDING.multiply(lowest, total), decimals.HUNDRED))


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class MeterBalance:
    """What CheckBalance (and every answer that carries a balance) says of one meter."""

    meter: Meter
    terms: PlanMeter
    period: Period
    figures: limits.BalanceFigures


@dataclass(frozen=True, slots=True)
class PlanTerms:
    """What a plan says of a meter, in every form a decision or a balance
    needs. Built once per plan and meter (TermsBook): a catalog never
    changes (a reload brings another one, with a TermsBook of its own)."""

    plan: Plan
    meter: Meter
    terms: PlanMeter
    plan_allowance: limits.Allowance  # without grants and holds (shared: never changed)
    notified: MeterTerms  # what notifications about this meter say of the plan
    price: Price  # the plan's price for the meter

    @classmethod
    def of(cls, catalog: Catalog, plan: Plan, meter: Meter) -> PlanTerms:
        terms = catalog.plan_meter(plan, meter)
        return cls(
            plan,
            meter,
            terms,
            limits.Allowance(meter.aggregation, terms.enforcement, terms.limit),
            MeterTerms(plan.slug, meter.unit, terms.approaching_threshold),
            catalog.price(terms.price),
        )

    def allowance(self, granted: Decimal = ZERO, reserved: Decimal = ZERO) -> limits.Allowance:
        return allowance(self.plan_allowance, granted, reserved)

    def allowance_of(self, reading: CounterReading) -> limits.Allowance:
        """The allowance a counter was read under: the one its decision was
        made under when the writer kept it, else the plan's with the grants and
        holds read with the counter."""
        if reading.allowance is not None:
            return reading.allowance
        return self.allowance(reading.granted, reading.reserved)

    def period_at(self, instant: datetime, anchor: datetime, periods: Periods | None = None) -> Period:
        """The period of these terms containing `instant`, for a customer
        anchored at `anchor` (from `periods`' memory when given): the one place
        an instant's period is derived."""
        if periods is not None:
            return periods.containing(instant, anchor, self.terms.reset)
        return period_containing(instant, anchor, self.terms.reset)

    def event_period(self, event_time: datetime, anchor: datetime, periods: Periods | None = None) -> Period:
        """The period an event at `event_time` counts in: its time's, or the
        first period for one before the anchor (closing.counting_time)."""
        return self.period_at(closing.counting_time(event_time, anchor), anchor, periods)

    def balance(self, period: Period, reading: CounterReading) -> MeterBalance:
        """The balance of the meter in `period` from its counter, grants and holds."""
        figures = limits.balance_figures(
            self.allowance_of(reading), reading.state.used, self.terms.approaching_threshold
        )
        return MeterBalance(self.meter, self.terms, period, figures)

    def requested_fits(self, reading: CounterReading, requested: Decimal) -> bool:
        """Whether `requested` fits in what the counter's allowance leaves now."""
        return limits.requested_fits(self.allowance_of(reading), reading.state.used, requested)

    def limit_exceeded(self, period: Period, *, available: Decimal, requested: Decimal) -> LimitExceeded:
        """The refusal of a hard limit, with what a caller needs to act on it."""
        assert self.terms.limit is not None
        return LimitExceeded(
            meter=self.meter.slug,
            plan=self.plan.slug,
            unit=self.meter.unit,
            limit=self.terms.limit,
            available=available,
            requested=requested,
            period_end=period.end,
        )


@dataclass(frozen=True, slots=True)
class CustomerMeter:
    """A customer's terms for one meter: the plan's terms and the customer's
    billing anchor, which together give the periods they reset on."""

    customer: CustomerRecord
    terms: PlanTerms

    def period_at(self, instant: datetime, periods: Periods | None = None) -> Period:
        return self.terms.period_at(instant, self.customer.billing_anchor, periods)

    def event_period(self, event_time: datetime) -> Period:
        return self.terms.event_period(event_time, self.customer.billing_anchor)


class TermsBook:
    """A catalog's PlanTerms, each built on first use and then remembered, and
    the periods of recent instants (per anchor and reset). Looking terms up
    costs a dict lookup, not a catalog walk, so it is done per event.

    `anchor_skew_tolerance` (METERING_ANCHOR_SKEW_TOLERANCE) is how long
    before a customer's billing anchor a new event may be stamped and still
    count in its first period (metering.domain.usage.resolve); zero for a
    book that resolves no new event."""

    def __init__(self, catalog: Catalog, *, anchor_skew_tolerance: timedelta = timedelta(0)) -> None:
        self.catalog = catalog
        self.anchor_skew_tolerance = anchor_skew_tolerance
        self.periods = Periods()
        self._known: dict[tuple[str, str], PlanTerms] = {}

    def of(self, plan_slug: str, meter: Meter) -> PlanTerms:
        """The plan's terms for `meter`; NotFound if the catalog lost the plan
        (customers are still on it)."""
        key = (plan_slug, meter.slug)
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = PlanTerms.of(self.catalog, self.catalog.plan(plan_slug), meter)
        return found

    def for_customer(self, customer: CustomerRecord, meter: Meter) -> CustomerMeter:
        return CustomerMeter(customer, self.of(customer.plan_slug, meter))
