"""Credit notes in the ledger database: reading them with their invoices, and writing one.

A credit note is written in the transaction that holds its invoice's row lock
(metering.ledger.invoicing.InvoiceCredit), so that the credit notes an
invoice already has, which the decision reads, cannot change until it
commits: two credit notes that together would credit more than was invoiced
cannot both pass, on any number of replicas. It is written once (its id is
the primary key with the customer) and never changed (a trigger refuses
UPDATE and DELETE), and its `invoice.credit_note_issued` notification is
written in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from metering.domain.credit_notes import NewCreditNote
from metering.domain.records import CreditNote, CreditNoteLine, CreditNoteReason, InvoiceLineKey
from metering.ledger.pool import Connection

CREDIT_NOTE_COLUMNS = (
    "credit_note_id, customer_id, invoice_id, number, reason, memo, whole_invoice, lines, currency, amount, issued_at"
)


class Inserted(NamedTuple):
    """What inserting a credit note did: the note as stored, or None when its id was taken meanwhile."""

    note: CreditNote | None


def _lines_document(lines: Sequence[CreditNoteLine]) -> list[dict[str, str]]:
    # Amounts as their exact strings, so a note reads back exactly as decided.
    return [
        {"meter": line.line.meter_slug, "price": line.line.price_slug, "amount": str(line.amount)} for line in lines
    ]


def _line(document: dict[str, Any]) -> CreditNoteLine:
    return CreditNoteLine(InvoiceLineKey(document["meter"], document["price"]), Decimal(document["amount"]))


def credit_note_record(row: asyncpg.Record) -> CreditNote:
    return CreditNote(
        credit_note_id=row["credit_note_id"],
        customer_id=row["customer_id"],
        invoice_id=row["invoice_id"],
        number=row["number"],
        reason=CreditNoteReason(row["reason"]),
        memo=row["memo"],
        whole_invoice=row["whole_invoice"],
        lines=tuple(_line(document) for document in row["lines"]),
        amount=row["amount"],
        currency=row["currency"],
        issued_at=row["issued_at"],
    )


async def notes_of(conn: Connection, customer_id: str, invoice_ids: Sequence[UUID]) -> dict[UUID, list[CreditNote]]:
    """The credit notes of the customer's invoices `invoice_ids`, each invoice's in number order."""
    found: dict[UUID, list[CreditNote]] = {}
    if not invoice_ids:
        return found
    rows = await conn.fetch(
        f"""
        SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes
         WHERE customer_id = $1 AND invoice_id = ANY($2::uuid[])
         ORDER BY invoice_id, number
        """,
        customer_id,
        list(invoice_ids),
    )
    for row in rows:
        found.setdefault(row["invoice_id"], []).append(credit_note_record(row))
    return found


async def find(conn: Connection, customer_id: str, credit_note_id: str) -> CreditNote | None:
    row = await conn.fetchrow(
        f"SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE customer_id = $1 AND credit_note_id = $2",
        customer_id,
        credit_note_id,
    )
    return None if row is None else credit_note_record(row)


async def insert(conn: Connection, note: NewCreditNote) -> Inserted:
    """Write `note` in the caller's transaction (which holds its invoice's
    lock); None when another transaction took its id meanwhile (for another
    invoice: the same invoice's are serialized by the lock)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO credit_notes ({CREDIT_NOTE_COLUMNS})
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, now())
        ON CONFLICT (customer_id, credit_note_id) DO NOTHING
        RETURNING {CREDIT_NOTE_COLUMNS}
        """,
        note.credit_note_id,
        note.customer_id,
        note.invoice_id,
        note.number,
        str(note.reason),
        note.memo,
        note.whole_invoice,
        _lines_document(note.lines),
        note.currency,
        note.amount,
    )
    return Inserted(None if row is None else credit_note_record(row))
