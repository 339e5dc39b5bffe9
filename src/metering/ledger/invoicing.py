"""Invoices in the ledger database: closing a period, and reading invoices.

A period closes in ONE transaction, one customer and one period, short,
driven by the closer (metering.services.invoicing.Closer) as a unit of work:

1. `InvoiceStore.closing` opens it: it claims the customer for this replica (a
   transaction-scoped advisory lock, tried without waiting: two replicas never
   work on one customer at once), locks the customer's row FOR UPDATE, which
   waits for the write transactions of that customer in flight (each holds the
   row FOR SHARE, metering.ledger.steps) and holds off new ones until the
   commit, and reads the customer's oldest period not finalized and the
   database's clock (`PeriodClose`);
2. the closer decides whether that period is due (metering.domain.closing.is_due,
   the one definition of "due") and prices it (metering.services.reporting, on
   connections of its own: no write can change the period meanwhile);
3. `PeriodClose.finalize` inserts the invoice (at most one per customer and
   period: a unique constraint) and its `invoice.finalized` notification, and
   moves the customer's closing state on; leaving the block commits.

A replica killed at any instant leaves either all of that or nothing. Nothing
here calls back up into billing: the bill comes down as a finished Invoice.

A credit note against a finalized invoice is written the same way, as a unit
of work the service drives (`InvoiceStore.crediting`): the invoice's row
locked FOR UPDATE (it is never updated: the lock only serializes the credit
notes of one invoice), its credit notes read, the note the service decided
(metering.domain.credit_notes) written with its `invoice.credit_note_issued`
notification (metering.ledger.credit_notes), commit. Invoices are read with
their credit notes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from metering.domain import closing
from metering.domain.catalog import PricingModel
from metering.domain.credit_notes import NewCreditNote
from metering.domain.notifications import (
    NotificationType,
    credit_note_issued_notification,
    invoice_finalized_notification,
)
from metering.domain.periods import BillingPeriod
from metering.domain.pricing import LineCharge, TierCharge
from metering.domain.records import FINALIZED, CreditNote, CustomerRecord, Invoice, InvoiceLine
from metering.ledger import credit_notes, outbox
from metering.ledger.pool import Connection, PoolUser, one_row, translate_errors
from metering.ledger.wallets import applied_document, applied_from

# Namespace of the closer's advisory locks (two-int form: namespace, hashtext of
# the customer id): "clos". A hash collision only makes two customers close one
# after the other.
CLOSER_LOCK_NAMESPACE = 0x636C6F73

INVOICE_COLUMNS = (
    "invoice_id, customer_id, number, plan_slug, period_start, period_end, currency, subtotal, credits, total, "
    "lines, finalized_at, credits_applied"
)


@dataclass(frozen=True, slots=True)
class DueCustomer:
    """A customer with a billing period due to close, keyed for the keyset walk of due customers."""

    customer_id: str
    period_end: datetime  # the end of its oldest period not finalized


@dataclass(frozen=True, slots=True)
class Finalized:
    """What one closing transaction did: the invoice (new or found), and where the next period ends."""

    invoice: Invoice
    created: bool  # False: the invoice existed (a close that had committed before)
    following_end: datetime  # the end of the customer's following period, the next to close
    announced: list[NotificationType]  # notifications written (invoice.finalized when created)


class PeriodClose:
    """A customer locked for closing, in the transaction of the close: its
    oldest period not finalized and the database's clock at the lock."""

    def __init__(self, conn: Connection, customer: CustomerRecord, period: BillingPeriod, now: datetime) -> None:
        self._conn = conn
        self.customer = customer
        # Periods close in order from the first, so the oldest open one starts
        # where the last finalized one ended.
        self.period = period
        self.now = now  # the database's clock: the one clock of every replica's "due"

    async def finalize(self, bill: Invoice) -> Finalized:
        """Store `bill` as the period's invoice (the stored one stands if the
        period was finalized before) and move the customer's closing state to
        the following period. The `invoice.finalized` notification is written
        here, in this transaction, so that it is announced if and only if the
        invoice exists."""
        conn, customer_id, period = self._conn, self.customer.customer_id, self.period
        invoice_id = closing.invoice_id_for(customer_id, period.start)
        inserted = await conn.fetchrow(
            f"""
            INSERT INTO invoices ({INVOICE_COLUMNS})
            SELECT $1::uuid, $2::text, coalesce(max(i.number), 0) + 1, $3::text, $4::timestamptz, $5::timestamptz,
                   $6::text, $7::numeric, $8::numeric, $9::numeric, $10::jsonb, now(), $11::jsonb
              FROM invoices i WHERE i.customer_id = $2::text
            ON CONFLICT (customer_id, period_start) DO NOTHING
            RETURNING {INVOICE_COLUMNS}
            """,
            invoice_id,
            customer_id,
            bill.plan_slug,
            period.start,
            period.end,
            bill.currency,
            bill.subtotal,
            bill.credits,
            bill.total,
            [_line_document(line) for line in bill.lines],
            applied_document(bill.credits_applied),
        )
        created = inserted is not None
        if inserted is None:  # finalized before: the stored one stands
            inserted = await one_row(
                conn,
                f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE customer_id = $1 AND period_start = $2",
                customer_id,
                period.start,
            )
        record = invoice_record(inserted)
        announced: list[NotificationType] = []
        if created:
            # In the closing transaction: announced if and only if the invoice
            # exists, once (its dedupe key is the invoice id).
            assert record.invoice_id is not None and record.number is not None
            announced = await outbox.enqueue(
                conn,
                [
                    invoice_finalized_notification(
                        customer_id, str(record.invoice_id), record.number, period, record.total, record.currency
                    )
                ],
            )
        following = closing.following_period_end(period.end, self.customer.billing_anchor)
        await conn.execute(
            "UPDATE customers SET closed_through = $2, closing_period_end = $3 WHERE customer_id = $1",
            customer_id,
            period.end,
            following,
        )
        return Finalized(record, created, following, announced)


async def open_close(conn: Connection, customer_id: str) -> PeriodClose | None:
    """Claim and lock the customer for closing, in the transaction the caller
    opened on `conn`; None when another replica is closing this customer (or
    it does not exist)."""
    row = await conn.fetchrow(
        """
        SELECT customer_id, plan_slug, billing_anchor, created_at, updated_at, closed_through, has_wallet,
               closing_period_end,
               clock_timestamp() AS db_now
          FROM customers
         WHERE customer_id = $1 AND pg_try_advisory_xact_lock($2, hashtext($1))
           FOR UPDATE
        """,
        customer_id,
        CLOSER_LOCK_NAMESPACE,
    )
    if row is None:
        return None
    fields = dict(row)
    period_end, now = fields.pop("closing_period_end"), fields.pop("db_now")
    customer = CustomerRecord(**fields)
    period = BillingPeriod(customer.closed_through or customer.billing_anchor, period_end)
    return PeriodClose(conn, customer, period, now)


@dataclass(frozen=True, slots=True)
class Credited:
    """What writing a credit note did: the note (the one already stored under its id, when
    `created` is False) and the invoice with its credit notes after."""

    note: CreditNote
    created: bool
    invoice: Invoice
    announced: list[NotificationType]  # notifications written (invoice.credit_note_issued when created)


class InvoiceCredit:
    """A finalized invoice locked for a credit note, in the transaction that writes it: the
    invoice with the credit notes issued so far, which cannot change until it commits."""

    def __init__(self, conn: Connection, invoice: Invoice) -> None:
        self._conn = conn
        self.invoice = invoice

    async def find(self, credit_note_id: str) -> CreditNote | None:
        """The customer's credit note with this id (against any of its invoices), if any."""
        return await credit_notes.find(self._conn, self.invoice.customer_id, credit_note_id)

    async def issue(self, note: NewCreditNote) -> Credited:
        """Store `note` and announce it, in this transaction; when its id was
        taken meanwhile (by a note for another invoice), the stored one is
        returned with `created` False and nothing is written."""
        inserted = await credit_notes.insert(self._conn, note)
        if inserted.note is None:
            existing = await self.find(note.credit_note_id)
            assert existing is not None  # ids are never deleted
            return Credited(existing, False, self.invoice, [])
        invoice = replace(self.invoice, credit_notes=(*self.invoice.credit_notes, inserted.note))
        announced = await outbox.enqueue(self._conn, [credit_note_issued_notification(invoice, inserted.note)])
        return Credited(inserted.note, True, invoice, announced)


class DueCustomers(NamedTuple):
    """One step of the walk of due customers, with what the closer's backlog gauge needs."""

    due: list[DueCustomer]  # oldest period first
    oldest_period_end: datetime | None  # of any customer's oldest period not finalized (None: no customer)
    now: datetime  # the database's clock


class InvoiceStore(PoolUser):
    """Invoices and the closing of periods in the database. A period closes in one short
    transaction that either leaves its invoice, the customer's closing state and the announcement
    all written, or nothing; at most one invoice exists per customer and period, whatever the
    number of replicas or crashes."""

    async def due_customers(self, grace: timedelta, after: DueCustomer | None, limit: int) -> DueCustomers:
        """Up to `limit` candidates to close, oldest period first, after
        `after` (keyset); the end of the oldest period not finalized of any
        customer; and the database's clock. A coarse filter only: whether a
        period is due is decided under the customer's lock, by
        metering.domain.closing.is_due (the statement's clock, now(), is the
        transaction's start, so it never selects a period that is not due by
        the later clock_timestamp() of the lock). now(), not clock_timestamp():
        a stable bound is what lets both statements use customers_closing_idx
        instead of reading every customer."""
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(
                """
                SELECT customer_id, closing_period_end FROM customers
                 WHERE closing_period_end <= now() - $1::interval
                   AND ($2::timestamptz IS NULL OR (closing_period_end, customer_id) > ($2, $3))
                 ORDER BY closing_period_end, customer_id
                 LIMIT $4
                """,
                grace,
                after.period_end if after else None,
                after.customer_id if after else "",
                limit,
            )
            oldest = await one_row(
                conn, "SELECT min(closing_period_end) AS oldest, clock_timestamp() AS now FROM customers"
            )
        due = [DueCustomer(row["customer_id"], row["closing_period_end"]) for row in rows]
        return DueCustomers(due, oldest["oldest"], oldest["now"])

    @asynccontextmanager
    async def closing(self, customer_id: str) -> AsyncIterator[PeriodClose | None]:
        """The closing transaction of one customer's oldest open period (see
        the module's docstring): yields the locked customer and its period, or
        None when another replica holds it; commits when the block ends, rolls
        back if it raises. Unbounded: each statement has its timeout, but a
        whole close (the period's bill, the invoice, its lines) may take
        longer than one."""
        async with translate_errors(), self._connection(bounded=False) as conn, conn.transaction():
            yield await open_close(conn, customer_id)

    @asynccontextmanager
    async def crediting(self, customer_id: str, invoice_id: UUID) -> AsyncIterator[InvoiceCredit | None]:
        """The transaction of a credit note against the customer's finalized
        invoice (see the module's docstring): yields the invoice locked, with
        its credit notes, or None when the customer has no such invoice;
        commits when the block ends, rolls back if it raises."""
        async with translate_errors(), self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE customer_id = $1 AND invoice_id = $2 FOR UPDATE",
                customer_id,
                invoice_id,
            )
            if row is None:
                yield None
            else:
                [invoice] = await _with_credit_notes(conn, [invoice_record(row)])
                yield InvoiceCredit(conn, invoice)

    async def get(self, invoice_id: UUID) -> Invoice | None:
        async with translate_errors(), self._connection() as conn:
            row = await conn.fetchrow(f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE invoice_id = $1", invoice_id)
            if row is None:
                return None
            [invoice] = await _with_credit_notes(conn, [invoice_record(row)])
        return invoice

    async def for_period(self, customer_id: str, period_start: datetime) -> Invoice | None:
        async with translate_errors(), self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE customer_id = $1 AND period_start = $2",
                customer_id,
                period_start,
            )
            if row is None:
                return None
            [invoice] = await _with_credit_notes(conn, [invoice_record(row)])
        return invoice

    async def list(self, customer_id: str, before: datetime | None, limit: int) -> list[Invoice]:
        """The customer's finalized invoices, newest period first, before `before` (keyset)."""
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(
                f"""
                SELECT {INVOICE_COLUMNS} FROM invoices
                 WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR period_start < $2)
                 ORDER BY period_start DESC LIMIT $3
                """,
                customer_id,
                before,
                limit,
            )
            return await _with_credit_notes(conn, [invoice_record(row) for row in rows])


async def _with_credit_notes(conn: Connection, invoices: Sequence[Invoice]) -> list[Invoice]:
    """The invoices (of one customer) with their credit notes, read on `conn`
    (in its transaction or snapshot, when it has one)."""
    if not invoices:
        return []
    customer_id = invoices[0].customer_id
    assert all(invoice.customer_id == customer_id for invoice in invoices)
    ids = [invoice.invoice_id for invoice in invoices if invoice.invoice_id is not None]
    notes = await credit_notes.notes_of(conn, customer_id, ids)
    found = []
    for invoice in invoices:
        issued = notes.get(invoice.invoice_id) if invoice.invoice_id is not None else None
        found.append(replace(invoice, credit_notes=tuple(issued)) if issued else invoice)
    return found


# -- the stored document of the lines -------------------------------------------
# Decimals are stored as their exact strings (str(Decimal)), so an invoice
# reads back exactly as it was computed, trailing zeros included.


def _decimal(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _line_document(line: InvoiceLine) -> dict[str, Any]:
    charge = line.charge
    return {
        "meter": line.meter_slug,
        "price": line.price_slug,
        "model": line.model.value,
        "unit_amount": _decimal(line.unit_amount),
        "package_size": _decimal(line.package_size),
        "quantity": str(charge.quantity),
        "included": str(charge.included),
        "billable": str(charge.billable),
        "exact_amount": str(charge.exact_amount),
        "amount": str(charge.amount),
        "tiers": [
            {
                "from": str(tier.from_quantity),
                "up_to": _decimal(tier.up_to),
                "quantity": str(tier.quantity),
                "unit_amount": str(tier.unit_amount),
                "flat_amount": str(tier.flat_amount),
                "amount": str(tier.amount),
            }
            for tier in charge.tiers
        ],
    }


def _optional(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _line(document: dict[str, Any]) -> InvoiceLine:
    charge = LineCharge(
        quantity=Decimal(document["quantity"]),
        included=Decimal(document["included"]),
        billable=Decimal(document["billable"]),
        tiers=tuple(
            TierCharge(
                from_quantity=Decimal(tier["from"]),
                up_to=_optional(tier["up_to"]),
                quantity=Decimal(tier["quantity"]),
                unit_amount=Decimal(tier["unit_amount"]),
                flat_amount=Decimal(tier["flat_amount"]),
                amount=Decimal(tier["amount"]),
            )
            for tier in document["tiers"]
        ),
        exact_amount=Decimal(document["exact_amount"]),
        amount=Decimal(document["amount"]),
    )
    return InvoiceLine(
        meter_slug=document["meter"],
        price_slug=document["price"],
        model=PricingModel(document["model"]),
        unit_amount=_optional(document["unit_amount"]),
        package_size=_optional(document["package_size"]),
        charge=charge,
    )


def invoice_record(row: asyncpg.Record) -> Invoice:
    return Invoice(
        customer_id=row["customer_id"],
        plan_slug=row["plan_slug"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        currency=row["currency"],
        lines=tuple(_line(document) for document in row["lines"]),
        subtotal=row["subtotal"],
        credits=row["credits"],
        total=row["total"],
        status=FINALIZED,
        invoice_id=row["invoice_id"],
        number=row["number"],
        finalized_at=row["finalized_at"],
        credits_applied=tuple(applied_from(row["credits_applied"])),
    )
