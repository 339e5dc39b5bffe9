"""The service of reading usage back: GetUsage, ListUsageEvents, EstimateBill.

Usage is aggregated from the event history (not the counters), so any range,
window and grouping can be asked for; bills (and what-if bills on another
plan) are read here and priced by metering.domain.bills and metering.domain.pricing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from metering.domain import bills, closing
from metering.domain.bills import BillLine, WhatIfBill
from metering.domain.catalog import Catalog, Meter, Plan
from metering.domain.errors import FieldViolation, InvalidArgument
from metering.domain.periods import BillingPeriod
from metering.domain.records import CustomerRecord, EventPosition, StoredEvent
from metering.domain.wallets import CreditApplied, credits_total
from metering.domain.windows import TooManyWindowsError, Window, WindowSize, windows
from metering.ledger.customers import CustomerStore
from metering.ledger.reporting import AggregateQuery, PropertyFilter, UsageCursor, UsageReports
from metering.ledger.wallets import WalletStore
from metering.services.catalog import Catalogs
from metering.services.usage import require_customer, utc_now


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a GetUsage page ended, and the instant the query was first run
    (defaults such as "now" stay fixed across pages)."""

    meter_index: int
    window_index: int
    groups: tuple[str, ...]
    now: datetime


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """A GetUsage request, checked."""

    customer_id: str
    meters: Sequence[Meter]
    start: datetime | None
    end: datetime | None
    window_size: WindowSize
    zone: ZoneInfo
    group_by: tuple[str, ...]
    filters: tuple[PropertyFilter, ...]
    page_size: int
    cursor: PageCursor | None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One window (and group) of a meter's usage, as GetUsage answers it."""

    meter: Meter
    window: Window
    groups: dict[str, str]  # empty for a window without events
    value: Decimal
    event_count: int


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One page of GetUsage rows, and where the next starts."""

    rows: list[UsageRow]
    next_cursor: PageCursor | None


@dataclass(frozen=True, slots=True)
class EventsQuery:
    """A ListUsageEvents request, checked."""

    customer_id: str
    meter: Meter | None
    start: datetime | None
    end: datetime | None
    page_size: int
    before: EventPosition | None  # the last event seen


@dataclass(frozen=True, slots=True)
class EventsPage:
    """One page of events, newest first, and where the next starts."""

    events: list[StoredEvent]
    next_before: EventPosition | None


@dataclass(frozen=True, slots=True)
class Bill:
    """A billing period's bill priced from its usage now: what EstimateBill, drafts and the closer use."""

    customer_id: str
    plan: Plan
    period: BillingPeriod
    currency: str
    lines: list[BillLine]
    subtotal: Decimal
    credits: Decimal
    total: Decimal
    credits_applied: tuple[CreditApplied, ...] = ()  # per grant, exact (metering.domain.wallets)


class Reporting:
    """Usage read back: aggregates in windows and groups, event listings, and the bill of a period.
    Everything is computed from the event history (through the rollups), so any range, window and
    grouping can be asked for; it never writes."""

    def __init__(
        self,
        catalogs: Catalogs,
        ledger: CustomerStore,
        reports: UsageReports,
        *,
        clock: Callable[[], datetime] = utc_now,
        wallets: WalletStore | None = None,
    ) -> None:
        self._wallets = wallets  # None: bills apply no wallet credit (a reader without the primary's wallets)
        self._catalogs = catalogs
        self._ledger = ledger
        self._reports = reports
        self._clock = clock

    async def get_usage(self, query: UsageQuery) -> UsagePage:
        loaded = self._catalogs.current  # the whole call's catalog
        customer = await require_customer(self._ledger, query.customer_id)
        loaded.catalog.plan(customer.plan_slug)  # NotFound whatever the query's range
        now = query.cursor.now if query.cursor else self._clock()
        # All windows first, so a request too large is refused before any query runs.
        meter_windows = []
        for meter in query.meters:
            start = query.start or loaded.book.for_customer(customer, meter).period_at(now).start
            end = query.end or now
            if end <= start:
                raise InvalidArgument([FieldViolation("end", "must be after start_time")])
            try:
                meter_windows.append(windows(start, end, query.window_size, query.zone))
            except TooManyWindowsError as exc:
                raise InvalidArgument([FieldViolation("window_size", f"{exc}: narrow the range")]) from exc
        collected: list[tuple[int, int, tuple[str, ...], UsageRow]] = []
        wanted = query.page_size + 1  # one more than a page tells whether another page exists
        first = query.cursor.meter_index if query.cursor else 0
        for index in range(first, len(query.meters)):
            meter = query.meters[index]
            after = None
            if query.cursor is not None and index == query.cursor.meter_index:
                after = UsageCursor(query.cursor.window_index, query.cursor.groups)
            rows = await self._reports.aggregate(
                AggregateQuery(
                    query.customer_id,
                    meter,
                    meter_windows[index],
                    group_by=query.group_by,
                    filters=query.filters,
                    after=after,
                    limit=wanted - len(collected),
                )
            )
            for row in rows:
                group_values = dict(zip(query.group_by, row.groups, strict=True)) if row.event_count else {}
                view = UsageRow(meter, row.window, group_values, row.value, row.event_count)
                collected.append((index, row.window_index, row.groups, view))
            if len(collected) >= wanted:
                break
        page = collected[: query.page_size]
        next_cursor = None
        if len(collected) > query.page_size:
            meter_index, window_index, groups, _ = page[-1]
            next_cursor = PageCursor(meter_index, window_index, groups, now)
        return UsagePage([row for *_, row in page], next_cursor)

    async def list_events(self, query: EventsQuery) -> EventsPage:
        await require_customer(self._ledger, query.customer_id)
        events = await self._reports.list_events(
            query.customer_id,
            meter_slug=query.meter.slug if query.meter else None,
            start=query.start,
            end=query.end,
            before=query.before,
            limit=query.page_size + 1,
        )
        page = events[: query.page_size]
        next_before = None
        if len(events) > query.page_size:
            next_before = EventPosition(page[-1].event_time, str(page[-1].event_id))
        return EventsPage(page, next_before)

    async def bill(self, customer: CustomerRecord, period: BillingPeriod) -> Bill:
        """The bill of one of the customer's billing periods, priced from its
        usage now (EstimateBill, drafts, and the invoice the closer stores)."""
        customer_id = customer.customer_id
        catalog = self._catalogs.current.catalog  # the whole bill's catalog
        # The plan in effect at the end of the period, or now for the current one.
        plan_time = min(period.end - timedelta(microseconds=1), self._clock())
        plan_slug = await self._reports.plan_at(customer_id, plan_time) or customer.plan_slug
        plan = catalog.plan(plan_slug)
        # The first period's bill includes the events accepted just before the anchor.
        usage = closing.usage_range(period, customer.billing_anchor)
        lines: list[BillLine] = []
        for slug in bills.bill_meters(plan, await self._used_elsewhere(catalog, customer_id, plan, usage)):
            meter = catalog.meters[slug]
            rows = await self._reports.aggregate(AggregateQuery(customer_id, meter, [usage], group_by_price=True))
            by_price = {row.groups[0]: row.value for row in rows if row.event_count}
            lines.extend(bills.plan_lines(catalog, plan, meter, by_price))
        currency = bills.plan_currency(plan)
        # Wallet credit: what each grant's burns paid for this period's usage
        # (none, and no SQL, for a customer never given wallet credit).
        applied: tuple[CreditApplied, ...] = ()
        if self._wallets is not None and customer.has_wallet:
            applied = tuple(await self._wallets.credits_applied(customer_id, period.start))
        subtotal, credits, total = bills.totals(lines, credits_total(applied, currency))
        return Bill(customer_id, plan, period, currency, lines, subtotal, credits, total, applied)

    async def what_if(self, customer: CustomerRecord, period: BillingPeriod, plan: Plan) -> WhatIfBill:
        """What the period's usage (so far, for the current period) would cost
        on `plan`: each meter's aggregate over the whole period, every price
        together, priced by the same rules as the bill (metering.domain.bills)."""
        catalog = self._catalogs.current.catalog  # the whole bill's catalog
        customer_id = customer.customer_id
        times = closing.usage_range(period, customer.billing_anchor)  # as the bill's
        unlisted = await self._used_elsewhere(catalog, customer_id, plan, times)
        usage = {}
        for slug in bills.bill_meters(plan, unlisted):
            [row] = await self._reports.aggregate(AggregateQuery(customer_id, catalog.meters[slug], [times]))
            usage[slug] = row.value
        return bills.what_if_bill(catalog, plan, usage, unlisted)

    async def _used_elsewhere(
        self, catalog: Catalog, customer_id: str, plan: Plan, times: tuple[datetime, datetime]
    ) -> list[str]:
        """The meters with usage at those event times (a bill's) that `plan` does not list."""
        others = [slug for slug in catalog.meters if slug not in plan.meters]
        return await self._reports.meters_with_usage(customer_id, *times, others)
