"""The domain of writing and checking usage: applies a customer's plan.

Flow of RecordUsage: the batching writer (metering.ledger.writer) reads the
customer in its transaction and asks this module what the event means
(plan -> the plan's terms for the meter -> the period containing the event ->
price), then adds grants and holds to the plan's limit, decides and writes. No gRPC here (see
metering.api) and no SQL (see metering.ledger).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial

from metering.domain import closing, limits
from metering.domain.catalog import Catalog, Meter, Plan, PlanMeter, Price
from metering.domain.decimals import ZERO
from metering.domain.errors import InvalidArgument, LimitExceeded, NotFound, PriceCurrencyMismatch
from metering.domain.notifications import MeterTerms
from metering.domain.periods import Period, Periods, period_containing
from metering.domain.records import CounterReading, CustomerRecord, NewEvent, StoredEvent
from metering.domain.usage import Resolution, Written
from metering.ledger.customers import CustomerUpsert, Ledger
from metering.ledger.writer import BatchWriter, Resolver

# Called with the meter of a stored event or hold before it is changed; raises
# to refuse (the API layer passes the caller's meter restriction).
MeterGuard = Callable[[str], None]


def allow_any_meter(meter_slug: str) -> None:
    return None


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
class CustomerMeter:
    """A customer's terms for one meter: the chain customer -> plan -> the
    plan's terms for the meter -> the periods they reset on, in one place."""

    customer: CustomerRecord
    plan: Plan
    meter: Meter
    terms: PlanMeter

    def period_at(self, instant: datetime, periods: Periods | None = None) -> Period:
        """The period containing `instant` (from `periods`' memory when given)."""
        if periods is not None:
            return periods.containing(instant, self.customer.billing_anchor, self.terms.reset)
        return period_containing(instant, self.customer.billing_anchor, self.terms.reset)


def customer_meter(catalog: Catalog, customer: CustomerRecord, meter: Meter, plan: Plan | None = None) -> CustomerMeter:
    """The customer's terms for `meter` under its current plan (or `plan`,
    already looked up for the same customer); NotFound if the catalog lost it."""
    plan = plan or plan_named(catalog, customer.plan_slug)
    return CustomerMeter(customer, plan, meter, catalog.plan_meter(plan, meter))


def meter_terms(plan: Plan, meter: Meter, terms: PlanMeter) -> MeterTerms:
    """What notifications about this meter say of the plan."""
    return MeterTerms(plan.slug, meter.unit, terms.approaching_threshold)


def plan_allowance(meter: Meter, terms: PlanMeter) -> limits.Allowance:
    """The plan's part of the allowance; the ledger adds grants and holds."""
    return limits.Allowance(meter.aggregation, terms.enforcement, terms.limit)


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
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
    # An event time older than the backfill window: refused unless the event is
    # an exact replay of a recorded one (validation decides, the writer applies).
    too_old: InvalidArgument | None = None


@dataclass(frozen=True, slots=True)
class BalanceQuery:
    """A CheckBalance request, checked."""

    customer_id: str
    meter: Meter | None  # None: every meter of the plan
    requested: Decimal | None


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class MeterBalance:
    """A meter's balance in a period: its terms and the figures CheckBalance answers."""

    meter: Meter
    terms: PlanMeter
    period: Period
    figures: limits.BalanceFigures


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class RecordResult:
    """What RecordUsage answers for one event: the event (or the original, for a duplicate) and its balance."""

    plan_slug: str
    event: StoredEvent
    duplicate: bool
    balance: MeterBalance | None  # None when not asked for (MeteringEngine.record_many)
    overage: Decimal


@dataclass(frozen=True, slots=True)
class BalanceReport:
    """What CheckBalance answers: each meter's balance, and whether the requested amount fits."""

    customer_id: str
    plan_slug: str
    balances: list[MeterBalance]
    requested_allowed: bool | None
    as_of: datetime


@dataclass(frozen=True, slots=True)
class VoidResult:
    """What VoidUsage answers: the event with its void, whether it was a replay, and the balance after."""

    event: StoredEvent
    duplicate: bool
    balance: MeterBalance


class CustomerCache:
    """Recently seen customers, bounded (least recently used go first). Only
    safe for what never changes (the billing anchor) or is verified where it is
    used (the plan: see MeteringEngine.check_balance)."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, CustomerRecord] = OrderedDict()

    def get(self, customer_id: str) -> CustomerRecord | None:
        record = self._entries.get(customer_id)
        if record is not None:
            self._entries.move_to_end(customer_id)
        return record

    def put(self, record: CustomerRecord) -> None:
        self._entries[record.customer_id] = record
        self._entries.move_to_end(record.customer_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def forget(self, customer_id: str) -> None:
        self._entries.pop(customer_id, None)


def limit_exceeded(
    meter: Meter, plan_slug: str, terms: PlanMeter, period: Period, *, available: Decimal, requested: Decimal
) -> LimitExceeded:
    """The refusal of a hard limit, with what a caller needs to act on it."""
    assert terms.limit is not None
    return LimitExceeded(
        meter=meter.slug,
        plan=plan_slug,
        unit=meter.unit,
        limit=terms.limit,
        available=available,
        requested=requested,
        period_end=period.end,
    )


def meter_balance(meter: Meter, terms: PlanMeter, period: Period, reading: CounterReading) -> MeterBalance:
    """The balance of one meter from its counter, grants and holds."""
    allowance = reading.allowance
    if allowance is None:
        allowance = limits.Allowance(
            meter.aggregation, terms.enforcement, terms.limit, granted=reading.granted, reserved=reading.reserved
        )
    figures = limits.balance_figures(allowance, reading.state.used, terms.approaching_threshold)
    return MeterBalance(meter, terms, period, figures)


@dataclass(frozen=True, slots=True)
class _PlanMeterTerms:
    """What a plan says of a meter, in the forms an event's resolution needs."""

    plan: Plan
    terms: PlanMeter
    allowance: limits.Allowance  # the plan's part (shared: never changed)
    notified: MeterTerms


class MeteringEngine:
    """Recording and checking usage: resolves what an event means under the customer's plan (terms,
    period, price), hands events to the batching writer and reads balances. Its customer cache
    holds only what never changes or is checked where it is used; every write is decided in the
    ledger's transaction."""

    def __init__(
        self, catalog: Catalog, ledger: Ledger, writer: BatchWriter, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.catalog = catalog
        self.ledger = ledger
        self.writer = writer
        self._clock = clock
        self._customers = CustomerCache()
        self._periods = Periods()  # the periods of recent events and balances, by customer anchor and reset
        # The catalog never changes while serving: what a plan says of a meter
        # is looked up once per plan and meter, not once per event.
        self._plan_meters: dict[tuple[str, str], _PlanMeterTerms] = {}

    def now(self) -> datetime:
        return self._clock()

    async def record_many(
        self, commands: Sequence[UsageCommand], *, balances: bool = True
    ) -> list[RecordResult | BaseException]:
        """Events decided in this order in one transaction (a batch, a stream
        message); each result is the event's outcome or the error refusing it.
        Without `balances` (a stream's summary shows none) results carry no
        balance, and none is computed."""
        now = self._clock()
        written = await self.writer.submit_group([(c.customer_id, self._resolver(c, now)) for c in commands])
        results: list[RecordResult | BaseException] = []
        for command, item in zip(commands, written, strict=True):
            if isinstance(item, BaseException):
                results.append(item)
                continue
            try:
                results.append(self._recorded(command, item, balances))
            except LimitExceeded as exc:
                results.append(exc)
        return results

    def _resolver(self, command: UsageCommand, now: datetime) -> Resolver:
        """What the event means under its customer's plan, decided inside the
        writer's transaction with the customer row it read there."""
        return partial(self._resolve, command, now)

    def _resolve(self, command: UsageCommand, now: datetime, customer: CustomerRecord | None) -> Resolution:
        if customer is None:
            # No event was ever recorded for an unknown customer: a bad time
            # is refused as it was sent, before the reference.
            raise command.too_old or NotFound("customer", command.customer_id)
        known = self._plan_meter(customer.plan_slug, command.meter)
        plan, terms = known.plan, known.terms
        named = command.price
        if named is not None and named.currency is not None and named.currency != plan.currency:
            raise PriceCurrencyMismatch(named.slug, named.currency, plan.currency or "")
        event_time = command.event_time or now
        event = NewEvent(
            customer_id=command.customer_id,
            transaction_id=command.transaction_id,
            meter_slug=command.meter.slug,
            price_slug=named.slug if named else terms.price,
            requested_price_slug=named.slug if named else None,
            quantity=command.quantity,
            event_time=event_time,
            event_time_given=command.event_time is not None,
            properties=command.properties,
        )
        period = self._periods.containing(event_time, customer.billing_anchor, terms.reset)
        refusal = command.too_old or closing.late_refusal(
            customer.customer_id, command.transaction_id, event_time, customer.billing_anchor, customer.closed_through
        )
        return Resolution(
            event,
            known.allowance,
            period,
            command.unique_value,
            command.allow_overage,
            dimensions=command.meter.dimension_values(command.properties),
            terms=known.notified,
            plan_terms=terms,
            billing_anchor=customer.billing_anchor,
            refusal=refusal,
        )

    def _plan_meter(self, plan_slug: str, meter: Meter) -> _PlanMeterTerms:
        """customer_meter's plan and terms, remembered per plan and meter."""
        key = (plan_slug, meter.slug)
        found = self._plan_meters.get(key)
        if found is None:
            plan = plan_named(self.catalog, plan_slug)
            terms = self.catalog.plan_meter(plan, meter)
            found = _PlanMeterTerms(plan, terms, plan_allowance(meter, terms), meter_terms(plan, meter, terms))
            self._plan_meters[key] = found
        return found

    def _recorded(self, command: UsageCommand, written: Written, with_balance: bool = True) -> RecordResult:
        resolution = written.resolution
        terms, plan_slug = resolution.plan_terms, resolution.terms.plan_slug
        outcome, period = written.outcome, resolution.period
        decision = outcome.decision
        if outcome.event is None:
            assert decision is not None
            raise limit_exceeded(
                command.meter,
                plan_slug,
                terms,
                period,
                available=decision.available_before or ZERO,
                requested=decision.cost,
            )
        overage = decision.overage if decision is not None else ZERO
        if not with_balance:
            return RecordResult(plan_slug, outcome.event, outcome.duplicate, None, overage)
        if outcome.duplicate:
            # The original event counted in the period of its own event time.
            period = self._periods.containing(outcome.event.event_time, resolution.billing_anchor, terms.reset)
        balance = meter_balance(command.meter, terms, period, outcome.reading)
        return RecordResult(plan_slug, outcome.event, outcome.duplicate, balance, overage)

    async def check_balance(self, query: BalanceQuery) -> BalanceReport:
        """One round trip in the common case: the billing anchor never changes,
        so it may come from a cache; the plan may, so the statement that reads
        the counters reads it too, and a changed plan is re-read at once."""
        customer = self._customers.get(query.customer_id) or await self._load_customer(query.customer_id)
        now = self._clock()
        for _ in range(2):
            plan = plan_named(self.catalog, customer.plan_slug)
            meters = [query.meter] if query.meter else [self.catalog.meters[slug] for slug in plan.meters]
            wanted = []
            for meter in meters:
                terms = self._plan_meter(plan.slug, meter).terms
                wanted.append((meter, terms, self._periods.containing(now, customer.billing_anchor, terms.reset)))
            current_plan, readings = await self.ledger.read_counters(
                customer.customer_id, [(meter.slug, period.start) for meter, _, period in wanted], now
            )
            if current_plan == customer.plan_slug:
                break
            if current_plan is None:
                self._customers.forget(query.customer_id)
                raise NotFound("customer", query.customer_id)
            customer = await self._load_customer(query.customer_id)  # the plan changed since it was cached
        balances = [
            meter_balance(meter, terms, period, readings[(meter.slug, period.start)]) for meter, terms, period in wanted
        ]
        requested_allowed = None
        if query.requested is not None and query.meter is not None:
            only, reading = balances[0], readings[(balances[0].meter.slug, balances[0].period.start)]
            allowance = limits.Allowance(
                only.meter.aggregation,
                only.terms.enforcement,
                only.terms.limit,
                granted=reading.granted,
                reserved=reading.reserved,
            )
            requested_allowed = limits.requested_fits(allowance, reading.state.used, query.requested)
        return BalanceReport(customer.customer_id, plan.slug, balances, requested_allowed, now)

    async def _load_customer(self, customer_id: str) -> CustomerRecord:
        customer = await require_customer(self.ledger, customer_id)
        self._customers.put(customer)
        return customer

    async def void_usage(
        self, customer_id: str, transaction_id: str, reason: str, *, allow_meter: MeterGuard = allow_any_meter
    ) -> VoidResult:
        customer = await require_customer(self.ledger, customer_id)
        event = await self.ledger.find_event(customer_id, transaction_id)
        if event is None:
            raise NotFound("event", transaction_id)
        allow_meter(event.meter_slug)
        meter = self.catalog.meters.get(event.meter_slug)
        if meter is None:
            raise NotFound("meter", event.meter_slug)
        chain = customer_meter(self.catalog, customer, meter)
        terms, period = chain.terms, chain.period_at(event.event_time)
        # Refused in the ledger's transaction, under the customer's lock, once
        # the event's billing period is finalized; during its grace a void counts.
        voided, duplicate, reading = await self.ledger.void_event(
            event, meter, plan_allowance(meter, terms), period, reason
        )
        return VoidResult(voided, duplicate, meter_balance(meter, terms, period, reading))

    async def upsert_customer(
        self, customer_id: str, plan_slug: str, billing_anchor: datetime | None
    ) -> CustomerUpsert:
        if plan_slug not in self.catalog.plans:
            raise NotFound("plan", plan_slug)
        now = self._clock()
        first_period_end = closing.first_period_end(billing_anchor or now)  # used when it is created
        record, created = await self.ledger.upsert_customer(
            customer_id, plan_slug, billing_anchor, now, first_period_end
        )
        self._customers.put(record)
        return CustomerUpsert(record, created)

    async def get_customer(self, customer_id: str) -> CustomerRecord:
        return await require_customer(self.ledger, customer_id)
