"""The service of invoices: periods that close, and the invoices they leave.

Lifecycle of a customer's billing period (monthly from its billing anchor):
gathering while it runs; a draft from its end until end + grace
(METERING_INVOICE_GRACE), during which late events and voids still count and
EstimateBill shows the draft; then the closer finalizes it into an invoice
that never changes, and new events in it are refused (metering.domain.closing).
The closer runs in every `metering serve`; replicas share the work without
doing any of it twice.

A close is a unit of work this module drives, descending and returning: the
ledger opens it (metering.ledger.invoicing: the customer locked, its oldest
open period, the database's clock), the closer decides whether the period is
due (closing.is_due) and computes its bill (metering.services.reporting,
priced by metering.domain.pricing), then asks the ledger to finalize it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from metering.domain import bills, closing
from metering.domain.bills import WhatIfBill
from metering.domain.catalog import Plan
from metering.domain.errors import DatabaseUnavailable, FieldViolation, InvalidArgument, NotFound, PriceCurrencyMismatch
from metering.domain.periods import BillingPeriod
from metering.domain.records import DRAFT, FINALIZED, GATHERING, CustomerRecord, Invoice
from metering.ledger.customers import CustomerStore
from metering.ledger.invoicing import DueCustomer, Finalized, InvoiceStore
from metering.services.reporting import Bill, Reporting
from metering.services.usage import require_customer, utc_now
from metering.telemetry import metrics as m

log = logging.getLogger(__name__)

# Customers read per step of a closing pass; each of their periods closes in
# a transaction of its own.
CLOSE_BATCH = 100


def invoice_of(bill: Bill, status: str) -> Invoice:
    """A computed bill as an invoice (not finalized: no id or number yet)."""
    lines = tuple(bills.invoice_line(line) for line in bill.lines)
    return Invoice(
        customer_id=bill.customer_id,
        plan_slug=bill.plan.slug,
        period_start=bill.period.start,
        period_end=bill.period.end,
        currency=bill.currency,
        lines=lines,
        subtotal=bill.subtotal,
        credits=bill.credits,
        total=bill.total,
        credits_applied=bill.credits_applied,
        status=status,
    )


@dataclass(frozen=True, slots=True)
class BillQuery:
    """An EstimateBill request, checked."""

    customer_id: str
    period_time: datetime | None  # None: now (the current period)
    what_if: Plan | None  # a plan to price the same period on as well


@dataclass(frozen=True, slots=True)
class Estimate:
    """What EstimateBill answers: the period's bill (or its finalized invoice), and the what-if bill if asked."""

    invoice: Invoice
    what_if: WhatIfBill | None


@dataclass(frozen=True, slots=True)
class InvoicesQuery:
    """A ListInvoices request, checked."""

    customer_id: str
    statuses: frozenset[str]  # DRAFT and/or FINALIZED
    page_size: int
    before: datetime | None  # period start of the last invoice seen (keyset)


@dataclass(frozen=True, slots=True)
class InvoicesPage:
    """One page of invoices, newest period first, and where the next starts."""

    invoices: list[Invoice]
    next_before: datetime | None


class Invoicing:
    """EstimateBill and the invoice reads: a period's finalized invoice when it has one, else its
    bill computed now (gathering while it runs, a draft during its grace). Never writes."""

    def __init__(
        self,
        ledger: CustomerStore,
        invoices: InvoiceStore,
        reporting: Reporting,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._ledger = ledger
        self._invoices = invoices
        self._reporting = reporting
        self._clock = clock

    async def estimate(self, query: BillQuery) -> Estimate:
        """EstimateBill: the period's finalized invoice, or its bill computed
        now (a draft once the period has ended, gathering while it runs); and,
        when asked, the same period's usage priced on another plan."""
        customer = await require_customer(self._ledger, query.customer_id)
        now = self._clock()
        if query.period_time is not None and query.period_time > now:
            raise InvalidArgument([FieldViolation("period_time", "must not be in the future")])
        period = closing.billing_period(query.period_time or now, customer.billing_anchor)
        invoice = None
        if customer.closed_through is not None and period.end <= customer.closed_through:
            invoice = await self._invoices.for_period(customer.customer_id, period.start)
        if invoice is None:
            invoice = await self._compute(customer, period, now)
        what_if = None
        if query.what_if is not None:
            what_if = await self._reporting.what_if(customer, period, query.what_if)
        return Estimate(invoice, what_if)

    async def _compute(self, customer: CustomerRecord, period: BillingPeriod, now: datetime) -> Invoice:
        bill = await self._reporting.bill(customer, period)
        return invoice_of(bill, GATHERING if now < period.end else DRAFT)

    async def get(self, invoice_id: UUID) -> Invoice:
        invoice = await self._invoices.get(invoice_id)
        if invoice is None:
            raise NotFound("invoice", str(invoice_id))
        return invoice

    async def list(self, query: InvoicesQuery) -> InvoicesPage:
        """Newest period first: the drafts (periods that ended and are not
        finalized yet), then the finalized invoices."""
        customer = await require_customer(self._ledger, query.customer_id)
        now = self._clock()
        wanted = query.page_size + 1  # one more than a page tells whether another page exists
        found: list[Invoice] = []
        more = False
        if DRAFT in query.statuses:
            periods = _draft_periods(customer, now, query.before, wanted)
            more = len(periods) > query.page_size  # known without pricing the extra one
            for period in periods[: query.page_size]:
                found.append(await self._compute(customer, period, now))
        if FINALIZED in query.statuses and not more:
            before = found[-1].period_start if found else query.before
            stored = await self._invoices.list(customer.customer_id, before, wanted - len(found))
            more = len(found) + len(stored) > query.page_size
            found.extend(stored[: query.page_size - len(found)])
        return InvoicesPage(found, found[-1].period_start if more else None)


def _draft_periods(customer: CustomerRecord, now: datetime, before: datetime | None, limit: int) -> list[BillingPeriod]:
    """The periods that ended and are not finalized, newest first, starting
    before `before`, at most `limit`."""
    periods: list[BillingPeriod] = []
    start = customer.closed_through or customer.billing_anchor
    while True:
        period = closing.billing_period(start, customer.billing_anchor)
        if period.end > now:
            break
        periods.append(period)
        start = period.end
    drafts = [p for p in reversed(periods) if before is None or p.start < before]
    return drafts[:limit]


class Closer:
    """Finalizes every due period, in passes every `interval`. A pass reads due
    customers in steps of CLOSE_BATCH (oldest period first) and closes one
    period per transaction; it goes on at once while periods keep coming due
    (a backlog after downtime drains period by period, without waiting for
    the next pass). A period that cannot be priced is skipped (logged and
    counted once) and retried every pass; it holds up no one else."""

    def __init__(
        self,
        invoices: InvoiceStore,
        reporting: Reporting,
        metrics: m.Metrics,
        *,
        grace: timedelta,
        interval: timedelta,
        pause: timedelta = timedelta(0),
    ) -> None:
        self._invoices = invoices
        self._reporting = reporting
        self._metrics = metrics
        self._grace = grace
        self._interval = interval
        self._pause = pause  # test-only: a sleep inside each closing transaction
        self._unpriceable: set[tuple[str, datetime]] = set()  # (customer, period end) logged already
        metrics.invoice_grace.set(grace.total_seconds())

    async def run(self) -> None:
        """A pass every interval, the first one an interval after start-up
        (replicas starting together do not all sweep at once)."""
        while True:
            await asyncio.sleep(self._interval.total_seconds())
            try:
                await self.close_due()
            except DatabaseUnavailable as exc:
                # Nothing partial is stored: the transaction rolled back, and
                # the next pass retries.
                log.warning("closing periods: %s; retrying in %ss", exc, self._interval.total_seconds())
            except Exception:
                log.exception("closing periods failed; retrying in %ss", self._interval.total_seconds())

    async def close_due(self) -> int:
        """Passes over the due customers until one finalizes nothing that leaves
        more due; returns the invoices this replica finalized."""
        finalized = 0
        while True:
            closed, more = await self._sweep()
            finalized += closed
            if not more:
                return finalized

    async def _sweep(self) -> tuple[int, bool]:
        after: DueCustomer | None = None
        closed, more = 0, False
        while True:
            due, oldest, now = await self._invoices.due_customers(self._grace, after, CLOSE_BATCH)
            self._metrics.oldest_unclosed_age.set(closing.waiting_age(oldest, now))
            for customer in due:
                outcome = await self._close(customer)
                if outcome is not None:
                    closed += outcome[0]
                    more = more or outcome[1]
            if len(due) < CLOSE_BATCH:
                return closed, more
            after = due[-1]

    async def _close(self, due: DueCustomer) -> tuple[int, bool] | None:
        try:
            outcome = await self._close_one(due.customer_id)
        except (NotFound, PriceCurrencyMismatch) as exc:
            # The catalog changed under the period (a price or plan gone, a
            # currency changed): its invoice waits for the catalog to be fixed.
            key = (due.customer_id, due.period_end)
            if key not in self._unpriceable:
                self._unpriceable.add(key)
                self._metrics.invoice_pricing_failures.inc()
                log.warning(
                    "cannot finalize the invoice of customer %r for the period ending %s: %s "
                    "(retried every pass until the catalog prices it)",
                    due.customer_id,
                    closing.rfc3339(due.period_end),
                    exc,
                )
            return None
        if outcome is None:
            return None
        finalized, next_due = outcome
        self._unpriceable.discard((due.customer_id, due.period_end))
        if finalized.created:
            self._metrics.invoices_finalized.inc()
        self._metrics.count_notifications(finalized.announced)
        return (1 if finalized.created else 0), next_due

    async def _close_one(self, customer_id: str) -> tuple[Finalized, bool] | None:
        """Finalize the customer's oldest period if it is due, and say whether
        its following period is due too (a backlog); None when it is
        not (any more: another replica closed it) or another replica is
        closing this customer. One transaction: nothing of it stays if any
        step fails (a period that cannot be priced raises here)."""
        async with self._invoices.closing(customer_id) as close:
            if close is None:
                return None
            period, now = close.period, close.now
            if not closing.is_due(period.end, self._grace, now):
                return None
            # Priced on connections of its own: the close holds the customer's
            # row meanwhile, so no write can change the period.
            bill = invoice_of(await self._reporting.bill(close.customer, period), FINALIZED)
            if self._pause:
                # Test-only (METERING_TEST_ONLY_CLOSE_PAUSE): a window to kill the process in.
                await asyncio.sleep(self._pause.total_seconds())
            finalized = await close.finalize(bill)
        return finalized, closing.is_due(finalized.following_end, self._grace, now)
