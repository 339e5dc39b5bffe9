"""The orchestration of writing and checking usage: no gRPC (see metering.api), no SQL (see metering.ledger).

Flow of RecordUsage: the API edge validates each request into a UsageCommand
(the call's clock read once, in `received_at`); MeteringEngine.record_many
hands the commands and the catalog's terms (metering.domain.terms.TermsBook)
to the batching writer (metering.ledger.writer), which reads the customers in
its transaction, resolves each command with the pure
metering.domain.usage.resolve, decides, writes and returns each outcome; the
engine turns the outcomes into results (the balance, or the refusal of a hard
limit). The call descends and returns: the ledger never calls back up here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from metering.domain import closing, columns, usage
from metering.domain.catalog import Catalog, Meter
from metering.domain.decimals import ZERO
from metering.domain.errors import LimitExceeded, NotFound
from metering.domain.periods import Period
from metering.domain.records import CustomerRecord, StoredEvent
from metering.domain.terms import MeterBalance, PlanTerms, TermsBook
from metering.domain.usage import CounterKey, UsageCommand, Written
from metering.ledger.customers import CustomerStore, CustomerUpsert
from metering.ledger.writer import BatchWriter
from metering.services.catalog import Catalogs

__all__ = [
    "BalanceQuery",
    "BalanceReport",
    "CustomerCache",
    "CustomersPage",
    "CustomersQuery",
    "MeterBalance",
    "MeterGuard",
    "MeteringEngine",
    "RecordResult",
    "RecordedEvents",
    "UsageCommand",
    "VoidResult",
    "allow_any_meter",
    "require_customer",
    "utc_now",
]

# Called with the meter of a stored event or hold before it is changed; raises
# to refuse (the API layer passes the caller's meter restriction).
MeterGuard = Callable[[str], None]


def allow_any_meter(meter_slug: str) -> None:
    return None


def utc_now() -> datetime:
    return datetime.now(UTC)


async def require_customer(ledger: CustomerStore, customer_id: str) -> CustomerRecord:
    customer = await ledger.get_customer(customer_id)
    if customer is None:
        raise NotFound("customer", customer_id)
    return customer


@dataclass(frozen=True, slots=True)
class BalanceQuery:
    """A CheckBalance request, checked."""

    customer_id: str
    meter: Meter | None  # None: every meter of the plan
    requested: Decimal | None


@dataclass(frozen=True, slots=True)
class CustomersQuery:
    """A ListCustomers request, checked."""

    plan_slug: str | None  # None: every plan
    page_size: int
    after: str | None  # the last customer id of the previous page


@dataclass(frozen=True, slots=True)
class CustomersPage:
    """One page of customers by id, and where the next starts."""

    customers: list[CustomerRecord]
    next_after: str | None  # None: the last page


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class RecordResult:
    """What RecordUsage answers for one event: the event (or the original, for a duplicate) and its balance."""

    plan_slug: str
    event: StoredEvent
    duplicate: bool
    balance: MeterBalance | None  # None when not asked for (MeteringEngine.record_many)
    overage: Decimal


@dataclass(frozen=True, slots=True)
class RecordedEvents:
    """What RecordUsage answers for each event of a call that was all recorded
    by the common-case decision (metering.domain.columns), as columns: every
    event new (not a duplicate) with no overage; its balance from the plan's
    terms for the meter (`terms`, one per allowance) and the balance columns."""

    commands: Sequence[UsageCommand]
    events: columns.Recorded
    terms: dict[int, PlanTerms]  # by allowance (events.allowance_of); empty without balances
    balances: columns.BalanceColumns | None  # None when not asked for

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True, slots=True)
class BalanceReport:
    """What CheckBalance answers: each meter's balance, and whether the requested amount fits."""

    customer_id: str
    plan_slug: str
    balances: list[MeterBalance]
    requested_allowed: bool | None
    as_of: datetime
    has_wallet: bool = False  # whether the customer was ever given wallet credit


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


class MeteringEngine:
    """Recording and checking usage: hands each call's commands, with the catalog's terms, to the
    batching writer (which resolves and decides them in its transaction through the pure domain),
    turns the outcomes into results, and reads balances. Its customer cache holds only what never
    changes or is checked where it is used; every write is decided in the ledger's transaction."""

    def __init__(
        self, catalogs: Catalogs, ledger: CustomerStore, writer: BatchWriter, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        # Each call reads the catalog in force once (a reload swaps it whole):
        # its TermsBook builds what a plan says of a meter once per plan and
        # meter, not once per event, and remembers the periods of recent events
        # and balances by customer anchor and reset.
        self._catalogs = catalogs
        self.ledger = ledger
        self.writer = writer
        self._clock = clock
        self._customers = CustomerCache()

    @property
    def catalog(self) -> Catalog:
        """The catalog in force: read it once per call."""
        return self._catalogs.current.catalog

    def now(self) -> datetime:
        return self._clock()

    async def record_many(
        self, commands: Sequence[UsageCommand], *, balances: bool = True
    ) -> list[RecordResult | BaseException]:
        """Events decided in this order in one transaction (a batch, a stream
        message); each result is the event's outcome or the error refusing it.
        Without `balances` (a stream's summary shows none) results carry no
        balance, and none is computed."""
        book = self._catalogs.current.book  # the terms the writer decides under
        written = await self.writer.submit_group(commands, book)
        return self._results(book, commands, written, balances)

    async def record_columnar(
        self, commands: Sequence[UsageCommand], *, balances: bool = True
    ) -> list[RecordResult | BaseException] | RecordedEvents:
        """record_many, answered as columns (RecordedEvents) when the writer
        recorded every event by the common-case decision; else as record_many."""
        book = self._catalogs.current.book  # the terms the writer decides under
        written = await self.writer.submit_columnar(commands, book)
        if isinstance(written, list):
            return self._results(book, commands, written, balances)
        if not balances:
            return RecordedEvents(commands, written, {}, None)
        # One PlanTerms per allowance: the events of an allowance share their
        # customer, meter and plan terms (metering.domain.columns.decide_common).
        terms: dict[int, PlanTerms] = {}
        for command, resolution, index in zip(commands, written.resolutions, written.allowance_of, strict=True):
            if index not in terms:
                terms[index] = book.of(resolution.terms.plan_slug, command.meter)
        return RecordedEvents(commands, written, terms, columns.balance_columns(written))

    def _results(
        self,
        book: TermsBook,
        commands: Sequence[UsageCommand],
        written: Sequence[Written | BaseException],
        balances: bool,
    ) -> list[RecordResult | BaseException]:
        results: list[RecordResult | BaseException] = []
        for command, item in zip(commands, written, strict=True):
            if isinstance(item, BaseException):
                results.append(item)
                continue
            try:
                results.append(self._recorded(book, command, item, balances))
            except LimitExceeded as exc:
                results.append(exc)
        return results

    def _recorded(
        self, book: TermsBook, command: UsageCommand, written: Written, with_balance: bool = True
    ) -> RecordResult:
        resolution = written.resolution
        plan_slug = resolution.terms.plan_slug
        outcome, period = written.outcome, resolution.period
        decision = outcome.decision
        if outcome.event is None:
            assert decision is not None
            raise book.of(plan_slug, command.meter).limit_exceeded(
                period, available=decision.available_before or ZERO, requested=decision.cost
            )
        overage = decision.overage if decision is not None else ZERO
        if not with_balance:
            return RecordResult(plan_slug, outcome.event, outcome.duplicate, None, overage)
        known = book.of(plan_slug, command.meter)
        if outcome.duplicate:
            # The original event counted in the period of its own event time.
            period = known.event_period(outcome.event.event_time, resolution.billing_anchor, book.periods)
        return RecordResult(
            plan_slug, outcome.event, outcome.duplicate, known.balance(period, outcome.reading), overage
        )

    async def check_balance(self, query: BalanceQuery) -> BalanceReport:
        """One round trip in the common case: the billing anchor never changes,
        so it may come from a cache; the plan may, so the statement that reads
        the counters reads it too, and a changed plan is re-read at once."""
        loaded = self._catalogs.current  # the whole call's catalog
        catalog, book = loaded.catalog, loaded.book
        customer = self._customers.get(query.customer_id) or await self._load_customer(query.customer_id)
        now = self._clock()
        for _ in range(2):
            plan = catalog.plan(customer.plan_slug)
            meters = [query.meter] if query.meter else [catalog.meters[slug] for slug in plan.meters]
            wanted: list[tuple[PlanTerms, Period, CounterKey]] = []
            for meter in meters:
                known = book.of(plan.slug, meter)
                period = known.period_at(now, customer.billing_anchor, book.periods)
                wanted.append((known, period, CounterKey(customer.customer_id, meter.slug, period.start)))
            current_plan, readings, has_wallet = await self.ledger.read_counters(
                customer.customer_id, [key for _, _, key in wanted], now
            )
            if current_plan == customer.plan_slug:
                break
            if current_plan is None:
                self._customers.forget(query.customer_id)
                raise NotFound("customer", query.customer_id)
            customer = await self._load_customer(query.customer_id)  # the plan changed since it was cached
        balances = [known.balance(period, readings[key]) for known, period, key in wanted]
        requested_allowed = None
        if query.requested is not None and query.meter is not None:
            known, _, key = wanted[0]
            requested_allowed = known.requested_fits(readings[key], query.requested)
        return BalanceReport(customer.customer_id, plan.slug, balances, requested_allowed, now, has_wallet)

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
        loaded = self._catalogs.current
        chain = loaded.book.for_customer(customer, loaded.catalog.meter(event.meter_slug))
        period = chain.event_period(event.event_time)
        # Refused in the ledger's transaction, under the customer's lock, once
        # the event's billing period is finalized; during its grace a void counts.
        price = self.catalog.price(event.price_slug)
        wallet = usage.wallet_terms(customer, chain.terms, price, event.event_time)
        voided, duplicate, reading = await self.ledger.void_event(event, chain.terms, period, reason, wallet)
        return VoidResult(voided, duplicate, chain.terms.balance(period, reading))

    async def upsert_customer(
        self, customer_id: str, plan_slug: str, billing_anchor: datetime | None
    ) -> CustomerUpsert:
        self.catalog.plan(plan_slug)  # NotFound before anything is written
        now = self._clock()
        first_period_end = closing.first_period_end(billing_anchor or now)  # used when it is created
        record, created = await self.ledger.upsert_customer(
            customer_id, plan_slug, billing_anchor, now, first_period_end
        )
        self._customers.put(record)
        return CustomerUpsert(record, created)

    async def get_customer(self, customer_id: str) -> CustomerRecord:
        return await require_customer(self.ledger, customer_id)

    async def list_customers(self, query: CustomersQuery) -> CustomersPage:
        """A page of customers by id (of one plan, or of every plan)."""
        found = await self.ledger.list_customers(query.plan_slug, query.after, query.page_size + 1)
        page = found[: query.page_size]
        next_after = page[-1].customer_id if len(found) > query.page_size else None
        return CustomersPage(page, next_after)
