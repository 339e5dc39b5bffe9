"""Credit notes on the wire: the reason enum both ways, and the CreditNote message."""

from __future__ import annotations

from metering.domain.records import CreditNote, CreditNoteReason
from metering.v1 import invoices_pb2
from metering.wire.values import money, timestamp

REASONS: dict[CreditNoteReason, invoices_pb2.CreditNoteReason] = {
    CreditNoteReason.DUPLICATE: invoices_pb2.CREDIT_NOTE_REASON_DUPLICATE,
    CreditNoteReason.FRAUDULENT: invoices_pb2.CREDIT_NOTE_REASON_FRAUDULENT,
    CreditNoteReason.ORDER_CHANGE: invoices_pb2.CREDIT_NOTE_REASON_ORDER_CHANGE,
    CreditNoteReason.PRODUCT_UNSATISFACTORY: invoices_pb2.CREDIT_NOTE_REASON_PRODUCT_UNSATISFACTORY,
    CreditNoteReason.BILLING_ERROR: invoices_pb2.CREDIT_NOTE_REASON_BILLING_ERROR,
    CreditNoteReason.GOODWILL: invoices_pb2.CREDIT_NOTE_REASON_GOODWILL,
}
FROM_WIRE: dict[int, CreditNoteReason] = {number: reason for reason, number in REASONS.items()}


def credit_note(note: CreditNote) -> invoices_pb2.CreditNote:
    return invoices_pb2.CreditNote(
        credit_note_id=note.credit_note_id,
        customer_id=note.customer_id,
        invoice_id=str(note.invoice_id),
        number=note.number,
        reason=REASONS[note.reason],
        memo=note.memo,
        whole_invoice=note.whole_invoice,
        lines=[
            invoices_pb2.CreditNoteLine(
                meter_slug=line.line.meter_slug,
                price_slug=line.line.price_slug,
                amount=money(line.amount, note.currency),
            )
            for line in note.lines
        ],
        amount=money(note.amount, note.currency),
        issue_time=timestamp(note.issued_at),
    )
