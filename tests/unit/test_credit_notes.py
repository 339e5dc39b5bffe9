"""Credit notes decided without a database (metering.domain.credit_notes): whole
or by line, exact amounts in the invoice's currency, never above what was
invoiced, numbered per invoice, idempotent by id."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.domain import closing
from metering.domain.catalog import Price, PricingModel
from metering.domain.credit_notes import CreditNoteCommand, decide, payload_differences
from metering.domain.errors import CreditExceedsInvoiced, InvalidArgument
from metering.domain.notifications import (
    CreditNoteIssued,
    NotificationType,
    credit_note_issued_notification,
    dedupe_key,
    payload_from_json,
    payload_json,
)
from metering.domain.periods import BillingPeriod
from metering.domain.pricing import price_line
from metering.domain.records import (
    FINALIZED,
    CreditNoteLine,
    CreditNoteReason,
    Invoice,
    InvoiceLine,
    InvoiceLineKey,
)

D = Decimal
INVOICE_ID = uuid.UUID("6f1c0d4e-0000-5000-8000-000000000001")
TOKENS = InvoiceLineKey("tokens", "tokens_premium")
CALLS = InvoiceLineKey("calls", "calls_per_unit")
ISSUED_AT = datetime(2026, 3, 2, tzinfo=UTC)


def line(key: InvoiceLineKey, amount: str) -> InvoiceLine:
    """A per-unit line of `amount` units at 1.00: its amount is `amount`."""
    price = Price(key.price_slug, key.meter_slug, PricingModel.PER_UNIT, "USD", unit_amount=D(1))
    return InvoiceLine(
        key.meter_slug, key.price_slug, PricingModel.PER_UNIT, D(1), None, price_line(price, D(amount), D(0), "USD")
    )


def invoice(tokens: str = "6.00", calls: str = "4.00", credits: str = "0", currency: str = "USD") -> Invoice:
    lines = (line(TOKENS, tokens), line(CALLS, calls))
    subtotal = D(tokens) + D(calls)
    return Invoice(
        customer_id="acme",
        plan_slug="pro",
        period_start=datetime(2026, 2, 1, tzinfo=UTC),
        period_end=datetime(2026, 3, 1, tzinfo=UTC),
        currency=currency,
        lines=lines,
        subtotal=subtotal,
        credits=D(credits),
        total=max(D(0), subtotal + D(credits)),
        status=FINALIZED,
        invoice_id=INVOICE_ID,
        number=3,
        finalized_at=ISSUED_AT,
    )


def command(
    note_id: str = "cn-1", *lines: tuple[InvoiceLineKey, str], whole: bool = False, memo: str = ""
) -> CreditNoteCommand:
    return CreditNoteCommand(
        customer_id="acme",
        invoice_id=INVOICE_ID,
        credit_note_id=note_id,
        reason=CreditNoteReason.BILLING_ERROR,
        memo=memo,
        whole_invoice=whole,
        lines=tuple(CreditNoteLine(key, D(amount)) for key, amount in lines),
    )


def issue(target: Invoice, request: CreditNoteCommand) -> Invoice:
    """`target` with the credit note `request` decided and stored."""
    note = decide(target, request).issued(ISSUED_AT)
    return replace(target, credit_notes=(*target.credit_notes, note))


def test_a_line_note_credits_its_lines_and_is_numbered_per_invoice() -> None:
    first = decide(invoice(), command("cn-1", (TOKENS, "1.50"), (CALLS, "0.25")))
    assert (first.number, first.amount, first.currency, first.whole_invoice) == (1, D("1.75"), "USD", False)
    assert first.lines == (CreditNoteLine(TOKENS, D("1.50")), CreditNoteLine(CALLS, D("0.25")))
    after = issue(invoice(), command("cn-1", (TOKENS, "1.50"), (CALLS, "0.25")))
    assert decide(after, command("cn-2", (TOKENS, "1"))).number == 2
    assert (after.credited, after.net_total) == (D("1.75"), D("8.25"))


def test_a_whole_invoice_note_credits_what_remains_of_the_total() -> None:
    after = issue(invoice(), command("cn-1", (TOKENS, "2.50")))
    whole = decide(after, command("cn-2", whole=True))
    assert (whole.amount, whole.lines, whole.whole_invoice) == (D("7.50"), (), True)
    credited = issue(after, command("cn-2", whole=True))
    assert credited.net_total == D(0)
    # Nothing is left: another whole note, or any line note, is refused.
    with pytest.raises(CreditExceedsInvoiced) as caught:
        decide(credited, command("cn-3", whole=True))
    assert (caught.value.meter_slug, caught.value.invoiced, caught.value.credited) == ("", D("10.00"), D("10.00"))
    assert "nothing is left" in str(caught.value)
    with pytest.raises(CreditExceedsInvoiced) as caught:
        decide(credited, command("cn-4", (CALLS, "0.01")))
    assert caught.value.meter_slug == ""  # the line has room; the invoice's total has none


def test_a_line_is_credited_up_to_its_amount_and_not_a_cent_more() -> None:
    full = issue(invoice(), command("cn-1", (TOKENS, "4.00")))
    full = issue(full, command("cn-2", (TOKENS, "2.00")))  # exactly the line's 6.00
    with pytest.raises(CreditExceedsInvoiced) as caught:
        decide(full, command("cn-3", (TOKENS, "0.01")))
    refusal = caught.value
    assert (refusal.meter_slug, refusal.price_slug) == ("tokens", "tokens_premium")
    assert (refusal.invoiced, refusal.credited, refusal.requested, refusal.currency) == (
        D("6.00"),
        D("6.00"),
        D("0.01"),
        "USD",
    )
    assert decide(full, command("cn-3", (CALLS, "4"))).amount == D(4)  # the other line is untouched


def test_an_invoice_total_below_its_lines_bounds_the_line_notes_together() -> None:
    # Credits brought the total (7.00) below the lines' sum (10.00): each line
    # can be credited up to its amount, all of them together up to the total.
    reduced = invoice(credits="-3.00")
    partial = issue(reduced, command("cn-1", (TOKENS, "6.00")))
    with pytest.raises(CreditExceedsInvoiced) as caught:
        decide(partial, command("cn-2", (CALLS, "1.01")))
    assert (caught.value.meter_slug, caught.value.invoiced, caught.value.credited) == ("", D("7.00"), D("6.00"))
    assert decide(partial, command("cn-2", (CALLS, "1.00"))).amount == D("1.00")


def test_a_line_the_invoice_does_not_have_and_an_amount_finer_than_the_currency_are_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        decide(
            invoice(),
            command("cn-1", (InvoiceLineKey("tokens", "tokens_per_unit"), "1"), (CALLS, "0.005")),
        )
    assert [v.field for v in caught.value.violations] == ["lines[0]", "lines[1].amount"]
    yen = invoice(tokens="600", calls="400", currency="JPY")
    with pytest.raises(InvalidArgument) as caught:
        decide(yen, command("cn-1", (TOKENS, "1.5")))
    assert [v.field for v in caught.value.violations] == ["lines[0].amount"]
    assert decide(yen, command("cn-1", (TOKENS, "150"))).amount == D(150)


def test_a_replay_is_the_same_request_and_anything_else_names_what_differs() -> None:
    stored = decide(invoice(), command("cn-1", (TOKENS, "1.50"), (CALLS, "1"))).issued(ISSUED_AT)
    assert payload_differences(stored, command("cn-1", (CALLS, "1.00"), (TOKENS, "1.5"))) == []  # order, zeros
    assert payload_differences(stored, command("cn-1", (TOKENS, "1.50"))) == ["lines"]
    assert payload_differences(stored, command("cn-1", whole=True, memo="x")) == ["memo", "whole_invoice", "lines"]
    elsewhere = replace(command("cn-1", (TOKENS, "1.50"), (CALLS, "1")), invoice_id=uuid.uuid4())
    assert payload_differences(stored, elsewhere) == ["invoice_id"]
    other_reason = replace(command("cn-1", (TOKENS, "1.50"), (CALLS, "1")), reason=CreditNoteReason.GOODWILL)
    assert payload_differences(stored, other_reason) == ["reason"]


requests = st.lists(
    st.one_of(
        st.just(("whole", 0)),
        st.tuples(st.sampled_from(["tokens", "calls"]), st.integers(min_value=1, max_value=700)),
    ),
    max_size=12,
)


@given(requests)
def test_whatever_the_requests_the_notes_never_credit_more_than_was_invoiced(
    asked: list[tuple[str, int]],
) -> None:
    """A model: each request is accepted exactly when it fits what is left, on its line and on the total."""
    current = invoice()
    invoiced = {TOKENS: D("6.00"), CALLS: D("4.00")}
    by_line = {TOKENS: D(0), CALLS: D(0)}
    total = D(0)
    for n, (kind, cents) in enumerate(asked):
        if kind == "whole":
            request = command(f"cn-{n}", whole=True)
            fits = total < D("10.00")
        else:
            key = TOKENS if kind == "tokens" else CALLS
            amount = D(cents).scaleb(-2)
            request = command(f"cn-{n}", (key, str(amount)))
            fits = by_line[key] + amount <= invoiced[key] and total + amount <= D("10.00")
        try:
            current = issue(current, request)
        except CreditExceedsInvoiced:
            assert not fits
            continue
        assert fits
        note = current.credit_notes[-1]
        total += note.amount
        for credited in note.lines:
            by_line[credited.line] += credited.amount
    assert current.credited == total <= current.total
    assert all(by_line[key] <= invoiced[key] for key in invoiced)
    assert [note.number for note in current.credit_notes] == list(range(1, len(current.credit_notes) + 1))


def test_a_credit_note_is_announced_once_with_the_invoices_net_total() -> None:
    credited = issue(invoice(), command("cn-1", (TOKENS, "2.50"), memo="wrong region"))
    new = credit_note_issued_notification(credited, credited.credit_notes[0])
    assert new.type is NotificationType.CREDIT_NOTE_ISSUED
    assert new.payload == CreditNoteIssued(
        invoice_id=str(INVOICE_ID),
        invoice_number=3,
        credit_note_id="cn-1",
        credit_note_number=1,
        reason=CreditNoteReason.BILLING_ERROR,
        amount=D("2.50"),
        invoice_net_total=D("7.50"),
        currency="USD",
        whole_invoice=False,
    )
    assert dedupe_key(new.payload) == "invoice.credit_note_issued/cn-1"
    assert payload_from_json(new.type, payload_json(new.payload)) == new.payload


def test_the_invoice_id_of_a_period_not_finalized_is_recognised() -> None:
    anchor = datetime(2026, 1, 15, tzinfo=UTC)
    now = datetime(2026, 4, 20, tzinfo=UTC)
    closed_through = datetime(2026, 2, 15, tzinfo=UTC)  # January's period is finalized

    def unfinalized(start: datetime) -> BillingPeriod | None:
        return closing.unfinalized_period("acme", anchor, closed_through, closing.invoice_id_for("acme", start), now)

    # February's and March's periods ended and wait to close (drafts); April's is running.
    assert unfinalized(datetime(2026, 2, 15, tzinfo=UTC)) == BillingPeriod(
        datetime(2026, 2, 15, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC)
    )
    assert unfinalized(datetime(2026, 4, 15, tzinfo=UTC)) == BillingPeriod(
        datetime(2026, 4, 15, tzinfo=UTC), datetime(2026, 5, 15, tzinfo=UTC)
    )
    assert unfinalized(datetime(2026, 1, 15, tzinfo=UTC)) is None  # finalized: stored, not this case
    assert unfinalized(datetime(2026, 5, 15, tzinfo=UTC)) is None  # the future has no invoice yet
    assert closing.unfinalized_period("acme", anchor, None, uuid.uuid4(), now) is None
