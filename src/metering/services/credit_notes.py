"""The service of credit notes: corrections of finalized invoices. No gRPC, no SQL.

IssueCreditNote is a unit of work this module drives, as the closer drives a
close: the ledger opens it (metering.ledger.invoicing.InvoiceStore.crediting:
the invoice locked, with its credit notes), the service answers a replay or
decides the new note (metering.domain.credit_notes, pure), then asks the
ledger to write it with its announcement; leaving the block commits. An id
that names no stored invoice is either the invoice of a period not finalized
yet (metering.domain.closing.unfinalized_period: FAILED_PRECONDITION) or none
of the customer's (NOT_FOUND).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from metering.domain import closing, credit_notes
from metering.domain.credit_notes import CreditNoteCommand
from metering.domain.errors import IdempotencyKeyConflict, InvoiceNotFinalized, NotFound
from metering.domain.notifications import NotificationType
from metering.domain.records import DRAFT, GATHERING, CreditNote, Invoice
from metering.ledger.customers import CustomerStore
from metering.ledger.invoicing import Credited, InvoiceStore
from metering.services.usage import require_customer, utc_now


@dataclass(frozen=True, slots=True)
class IssuedCreditNote:
    """What IssueCreditNote answers: the note as stored, whether the call was a replay, and the
    invoice with every credit note issued against it so far."""

    note: CreditNote
    duplicate: bool
    invoice: Invoice


class CreditNotes:
    """IssueCreditNote: a credit note against a finalized invoice, decided and written under the
    invoice's lock, so that the credit notes of a line or an invoice never add up to more than was
    invoiced, whatever the concurrency or the number of replicas."""

    def __init__(
        self,
        ledger: CustomerStore,
        invoices: InvoiceStore,
        *,
        clock: Callable[[], datetime] = utc_now,
        on_notifications: Callable[[Sequence[NotificationType]], None] = lambda types: None,
    ) -> None:
        self._ledger = ledger
        self._invoices = invoices  # the primary's: a credit note is a write
        self._clock = clock
        self._on_notifications = on_notifications  # observes the notifications written

    async def issue(self, command: CreditNoteCommand) -> IssuedCreditNote:
        written: Credited | None = None
        async with self._invoices.crediting(command.customer_id, command.invoice_id) as credit:
            if credit is not None:
                existing = await credit.find(command.credit_note_id)
                if existing is not None:
                    return _replayed(existing, command, credit.invoice)
                written = await credit.issue(credit_notes.decide(credit.invoice, command))
        if written is None:
            raise await self._not_stored(command)
        return self._answer(written, command)

    def _answer(self, written: Credited, command: CreditNoteCommand) -> IssuedCreditNote:
        if not written.created:
            # Its id was taken meanwhile by a note against another invoice.
            return _replayed(written.note, command, written.invoice)
        self._on_notifications(written.announced)
        return IssuedCreditNote(written.note, False, written.invoice)

    async def _not_stored(self, command: CreditNoteCommand) -> Exception:
        """Why no stored invoice of the customer has the command's id."""
        customer = await require_customer(self._ledger, command.customer_id)
        now = self._clock()
        period = closing.unfinalized_period(
            customer.customer_id, customer.billing_anchor, customer.closed_through, command.invoice_id, now
        )
        if period is None:
            return NotFound("invoice", str(command.invoice_id))
        return InvoiceNotFinalized(str(command.invoice_id), period, GATHERING if now < period.end else DRAFT)


def _replayed(stored: CreditNote, command: CreditNoteCommand, invoice: Invoice) -> IssuedCreditNote:
    """A call whose credit note id is stored: the original note, or a conflict."""
    differences = credit_notes.payload_differences(stored, command)
    if differences:
        raise IdempotencyKeyConflict("credit_note", command.credit_note_id, differences)
    return IssuedCreditNote(stored, True, invoice)
