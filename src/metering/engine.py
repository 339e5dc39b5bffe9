"""The domain: applies a customer's plan to validated commands.

Flow of RecordUsage: customer -> plan -> the plan's terms for the meter ->
the period containing the event -> one ledger transaction that decides and
writes. No gRPC here (see metering.api) and no SQL (see metering.ledger).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from metering import limits
from metering.catalog import Catalog, Meter, Plan, PlanMeter, Price
from metering.decimals import ZERO
from metering.errors import LimitExceeded, NotFound, PriceCurrencyMismatch
from metering.ledger.store import CustomerRecord, Ledger, NewEvent, StoredEvent
from metering.periods import Period, period_containing


def utc_now() -> datetime:
    return datetime.now(UTC)


async def require_customer(ledger: Ledger, customer_id: str) -> CustomerRecord:
    customer = await ledger.get_customer(customer_id)
    if customer is None:
        raise NotFound("customer", customer_id)
    return customer


def plan_named(catalog: Catalog, plan_slug: str) -> Plan:
    plan = catalog.plans.get(plan_slug)
    if plan is None:
        # The catalog lost a plan that customers are still on.
        raise NotFound("plan", plan_slug)
    return plan


@dataclass(frozen=True, slots=True)
class UsageCommand:
    """A validated RecordUsage request with its catalog references resolved."""

    customer_id: str
    transaction_id: str
    meter: Meter
    price: Price | None  # the price the caller named, if any
    quantity: Decimal
    event_time: datetime | None  # None: server time
    properties: dict[str, str]
    unique_value: str | None  # the counted property value, for UNIQUE_COUNT meters
    allow_overage: bool


@dataclass(frozen=True, slots=True)
class BalanceQuery:
    customer_id: str
    meter: Meter | None  # None: every meter of the plan
    requested: Decimal | None


@dataclass(frozen=True, slots=True)
class MeterBalance:
    meter: Meter
    terms: PlanMeter
    period: Period
    figures: limits.BalanceFigures


@dataclass(frozen=True, slots=True)
class RecordResult:
    plan_slug: str
    event: StoredEvent
    duplicate: bool
    balance: MeterBalance
    overage: Decimal


@dataclass(frozen=True, slots=True)
class BalanceReport:
    customer_id: str
    plan_slug: str
    balances: list[MeterBalance]
    requested_allowed: bool | None
    as_of: datetime


class MeteringEngine:
    def __init__(self, catalog: Catalog, ledger: Ledger, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.catalog = catalog
        self.ledger = ledger
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    async def record_usage(self, command: UsageCommand) -> RecordResult:
        customer = await self._customer(command.customer_id)
        plan = self._plan(customer)
        terms = self.catalog.plan_meter(plan, command.meter)
        named = command.price
        if named is not None and named.currency is not None and named.currency != plan.currency:
            raise PriceCurrencyMismatch(named.slug, named.currency, plan.currency or "")
        event_time = command.event_time or self._clock()
        period = period_containing(event_time, customer.billing_anchor, terms.reset)
        allowance = self._allowance(command.meter, terms)
        outcome = await self.ledger.record_usage(
            NewEvent(
                customer_id=command.customer_id,
                transaction_id=command.transaction_id,
                meter_slug=command.meter.slug,
                price_slug=command.price.slug if command.price else terms.price,
                requested_price_slug=command.price.slug if command.price else None,
                quantity=command.quantity,
                event_time=event_time,
                event_time_given=command.event_time is not None,
                properties=command.properties,
            ),
            allowance,
            period,
            unique_value=command.unique_value,
            allow_overage=command.allow_overage,
        )
        decision = outcome.decision
        if outcome.event is None:
            assert decision is not None and terms.limit is not None
            raise LimitExceeded(
                meter=command.meter.slug,
                plan=plan.slug,
                unit=command.meter.unit,
                limit=terms.limit,
                available=decision.available_before or ZERO,
                requested=decision.cost,
                period_end=period.end.isoformat().replace("+00:00", "Z") if period.end else "",
            )
        if outcome.duplicate:
            # The original event counted in the period of its own event time.
            period = period_containing(outcome.event.event_time, customer.billing_anchor, terms.reset)
        balance = self._meter_balance(command.meter, terms, period, outcome.counter.used)
        overage = decision.overage if decision is not None else ZERO
        return RecordResult(plan.slug, outcome.event, outcome.duplicate, balance, overage)

    async def check_balance(self, query: BalanceQuery) -> BalanceReport:
        customer = await self._customer(query.customer_id)
        plan = self._plan(customer)
        now = self._clock()
        meters = [query.meter] if query.meter else [self.catalog.meters[slug] for slug in plan.meters]
        wanted = []
        for meter in meters:
            terms = self.catalog.plan_meter(plan, meter)
            wanted.append((meter, terms, period_containing(now, customer.billing_anchor, terms.reset)))
        counters = await self.ledger.read_counters(
            customer.customer_id, [(meter.slug, period.start) for meter, _, period in wanted]
        )
        balances = []
        for meter, terms, period in wanted:
            used = counters.get((meter.slug, period.start), limits.CounterState()).used
            balances.append(self._meter_balance(meter, terms, period, used))
        requested_allowed = None
        if query.requested is not None and query.meter is not None:
            only = balances[0]
            requested_allowed = limits.requested_fits(
                self._allowance(only.meter, only.terms), only.figures.used, query.requested
            )
        return BalanceReport(customer.customer_id, plan.slug, balances, requested_allowed, now)

    async def upsert_customer(
        self, customer_id: str, plan_slug: str, billing_anchor: datetime | None
    ) -> tuple[CustomerRecord, bool]:
        if plan_slug not in self.catalog.plans:
            raise NotFound("plan", plan_slug)
        return await self.ledger.upsert_customer(customer_id, plan_slug, billing_anchor, self._clock())

    async def get_customer(self, customer_id: str) -> CustomerRecord:
        return await self._customer(customer_id)

    # -- helpers ----------------------------------------------------------------

    async def _customer(self, customer_id: str) -> CustomerRecord:
        return await require_customer(self.ledger, customer_id)

    def _plan(self, customer: CustomerRecord) -> Plan:
        return plan_named(self.catalog, customer.plan_slug)

    @staticmethod
    def _allowance(meter: Meter, terms: PlanMeter) -> limits.Allowance:
        # Grants and reservations arrive with the entitlements work; until then
        # the allowance is the plan's limit alone.
        return limits.Allowance(meter.aggregation, terms.enforcement, terms.limit)

    def _meter_balance(self, meter: Meter, terms: PlanMeter, period: Period, used: Decimal) -> MeterBalance:
        figures = limits.balance_figures(self._allowance(meter, terms), used, terms.approaching_threshold)
        return MeterBalance(meter, terms, period, figures)
