"""Credit notes: corrections of finalized invoices, decided purely (no I/O).

A finalized invoice never changes (metering.domain.closing). Real billing
corrects it after the fact with a credit note that references it and lowers
what is owed. The rules, all decided here under the invoice's lock (the
ledger, metering.ledger.credit_notes, reads the invoice with its credit notes
and stores what this module decides):

1. A credit note credits either what remains of the invoice's total
   (`whole_invoice`: its total less every credit note before), or amounts on
   named lines (a line is a meter at a price: an invoice has one per pair).
2. Amounts are exact decimals in the invoice's currency, positive, with at
   most the currency's minor-unit digits (2 for USD, 0 for JPY): no rounding.
3. Never above what was invoiced: the line credit notes of a line add up to
   at most the line's amount, and every credit note of an invoice to at most
   its total. A whole-invoice note is not spread over lines: it counts
   against the total only.
4. Numbered 1, 2, 3... per invoice, in the order issued.
5. Idempotent by credit note id (per customer): the same id with the same
   request is the original note; with another, a conflict
   (`payload_differences`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from metering.domain import decimals
from metering.domain.catalog import minor_unit_digits
from metering.domain.decimals import ZERO
from metering.domain.errors import CreditExceedsInvoiced, FieldViolation, InvalidArgument
from metering.domain.pricing import round_money
from metering.domain.records import (
    FINALIZED,
    CreditNote,
    CreditNoteLine,
    CreditNoteReason,
    Invoice,
    InvoiceLineKey,
)


@dataclass(frozen=True, slots=True)
class CreditNoteCommand:
    """An IssueCreditNote request, checked (its amounts not yet against the invoice)."""

    customer_id: str
    invoice_id: UUID
    credit_note_id: str
    reason: CreditNoteReason
    memo: str
    whole_invoice: bool
    lines: tuple[CreditNoteLine, ...]  # empty when whole_invoice; at most one per invoice line


@dataclass(frozen=True, slots=True)
class NewCreditNote:
    """A credit note decided and about to be stored; the database adds the time it is issued."""

    credit_note_id: str
    customer_id: str
    invoice_id: UUID
    number: int
    reason: CreditNoteReason
    memo: str
    whole_invoice: bool
    lines: tuple[CreditNoteLine, ...]
    amount: Decimal
    currency: str

    def issued(self, at: datetime) -> CreditNote:
        return CreditNote(
            credit_note_id=self.credit_note_id,
            customer_id=self.customer_id,
            invoice_id=self.invoice_id,
            number=self.number,
            reason=self.reason,
            memo=self.memo,
            whole_invoice=self.whole_invoice,
            lines=self.lines,
            amount=self.amount,
            currency=self.currency,
            issued_at=at,
        )


def invoiced_lines(invoice: Invoice) -> dict[InvoiceLineKey, Decimal]:
    """What each line of the invoice invoiced, by meter and price."""
    invoiced: dict[InvoiceLineKey, Decimal] = {}
    for line in invoice.lines:
        key = InvoiceLineKey(line.meter_slug, line.price_slug)
        invoiced[key] = decimals.add(invoiced.get(key, ZERO), line.charge.amount)
    return invoiced


def credited_lines(notes: Iterable[CreditNote]) -> dict[InvoiceLineKey, Decimal]:
    """What the line credit notes credit on each line (whole-invoice notes count against the total only)."""
    credited: dict[InvoiceLineKey, Decimal] = {}
    for note in notes:
        for line in note.lines:
            credited[line.line] = decimals.add(credited.get(line.line, ZERO), line.amount)
    return credited


def decide(invoice: Invoice, command: CreditNoteCommand) -> NewCreditNote:
    """The credit note `command` asks for, against `invoice` as it stands with
    the credit notes issued before (`invoice.credit_notes`); or why not
    (InvalidArgument for a line the invoice does not have or an amount finer
    than the currency, CreditExceedsInvoiced for more than was invoiced)."""
    assert invoice.status == FINALIZED and invoice.invoice_id == command.invoice_id
    currency = invoice.currency
    credited_total = invoice.credited
    if command.whole_invoice:
        amount = decimals.sub(invoice.total, credited_total)
        if amount <= ZERO:
            raise _exceeds(invoice, None, invoice.total, credited_total, amount)
        return _new(invoice, command, (), amount)
    invoiced = invoiced_lines(invoice)
    credited = credited_lines(invoice.credit_notes)
    digits = minor_unit_digits(currency)
    violations = []
    for index, line in enumerate(command.lines):
        if line.line not in invoiced:
            violations.append(
                FieldViolation(
                    f"lines[{index}]",
                    f"invoice {invoice.invoice_id} has no line for meter {line.line.meter_slug!r} "
                    f"at price {line.line.price_slug!r}",
                )
            )
        if round_money(line.amount, currency) != line.amount:
            violations.append(
                FieldViolation(f"lines[{index}].amount", f"at most {digits} decimals in {currency}, the invoice's")
            )
    if violations:
        raise InvalidArgument(violations)
    for line in command.lines:
        before = credited.get(line.line, ZERO)
        if decimals.add(before, line.amount) > invoiced[line.line]:
            raise _exceeds(invoice, line.line, invoiced[line.line], before, line.amount)
    amount = decimals.add(*(line.amount for line in command.lines))
    if decimals.add(credited_total, amount) > invoice.total:
        raise _exceeds(invoice, None, invoice.total, credited_total, amount)
    return _new(invoice, command, command.lines, amount)


def _new(
    invoice: Invoice, command: CreditNoteCommand, lines: tuple[CreditNoteLine, ...], amount: Decimal
) -> NewCreditNote:
    return NewCreditNote(
        credit_note_id=command.credit_note_id,
        customer_id=command.customer_id,
        invoice_id=command.invoice_id,
        number=len(invoice.credit_notes) + 1,
        reason=command.reason,
        memo=command.memo,
        whole_invoice=command.whole_invoice,
        lines=lines,
        amount=amount,
        currency=invoice.currency,
    )


def _exceeds(
    invoice: Invoice, line: InvoiceLineKey | None, invoiced: Decimal, credited: Decimal, requested: Decimal
) -> CreditExceedsInvoiced:
    return CreditExceedsInvoiced(
        str(invoice.invoice_id),
        meter_slug=line.meter_slug if line else "",
        price_slug=line.price_slug if line else "",
        invoiced=invoiced,
        credited=credited,
        requested=max(ZERO, requested),
        currency=invoice.currency,
    )


def payload_differences(stored: CreditNote, command: CreditNoteCommand) -> list[str]:
    """The request fields in which a call differs from the credit note stored
    under its id (empty: a replay, answered with the stored note)."""
    requested: Mapping[InvoiceLineKey, Decimal] = {line.line: line.amount for line in command.lines}
    stored_lines: Mapping[InvoiceLineKey, Decimal] = {line.line: line.amount for line in stored.lines}
    return [
        name
        for name, same in (
            ("invoice_id", stored.invoice_id == command.invoice_id),
            ("reason", stored.reason == command.reason),
            ("memo", stored.memo == command.memo),
            ("whole_invoice", stored.whole_invoice == command.whole_invoice),
            ("lines", stored_lines == requested),
        )
        if not same
    ]
