"""What the service answers, as plain typed values: Decimal quantities and
money, timezone-aware datetimes (UTC), enums; one dataclass per message.

Each `from_proto` is the one place a response message is read. The raw
protobuf responses stay available through `AsyncMeteringClient.call`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import IntEnum

from google.protobuf.timestamp_pb2 import Timestamp

from metering.client.errors import MeteringError, error_from_status
from metering.v1 import (
    billing_pb2,
    catalog_pb2,
    customer_pb2,
    events_pb2,
    grants_pb2,
    ingest_pb2,
    invoices_pb2,
    notifications_pb2,
    reservations_pb2,
    usage_pb2,
    wallets_pb2,
)


class Aggregation(IntEnum):
    """How a meter aggregates its events over a period (metering.v1.Aggregation)."""

    UNSPECIFIED = 0
    SUM = 1
    COUNT = 2
    MAX = 3
    UNIQUE_COUNT = 4
    LATEST = 5


class ResetPeriod(IntEnum):
    """When a meter's allowance starts again (metering.v1.ResetPeriod); NONE: never."""

    UNSPECIFIED = 0
    DAY = 1
    WEEK = 2
    MONTH = 3
    NONE = 4


class LimitEnforcement(IntEnum):
    """What a limit does (metering.v1.LimitEnforcement): HARD refuses past it, SOFT records the overage."""

    UNSPECIFIED = 0
    HARD = 1
    SOFT = 2
    UNLIMITED = 3


class EnforcementMode(IntEnum):
    """What to do with an event that would pass a hard limit: refuse it, or record the overage."""

    UNSPECIFIED = 0
    ENFORCE_LIMIT = 1
    ALLOW_OVERAGE = 2


class WindowSize(IntEnum):
    """The width of GetUsage's windows (metering.v1.WindowSize)."""

    UNSPECIFIED = 0  # one window for the whole range
    HOUR = 1
    DAY = 2
    MONTH = 3


class PricingModel(IntEnum):
    """How a price turns a quantity into money (metering.v1.PricingModel)."""

    UNSPECIFIED = 0
    PER_UNIT = 1
    PACKAGE = 2
    GRADUATED = 3
    VOLUME = 4


class PackageRounding(IntEnum):
    """How a PACKAGE price counts a partial package (metering.v1.PackageRounding)."""

    UNSPECIFIED = 0  # not a PACKAGE price
    UP = 1
    DOWN = 2


class InvoiceStatus(IntEnum):
    """Where a period's invoice stands (metering.v1.InvoiceStatus): gathering, draft or finalized."""

    UNSPECIFIED = 0
    GATHERING = 1
    DRAFT = 2
    FINALIZED = 3


class ReservationStatus(IntEnum):
    """Where a hold stands (metering.v1.ReservationStatus)."""

    UNSPECIFIED = 0
    HELD = 1
    COMMITTED = 2
    RELEASED = 3
    EXPIRED = 4


class NotificationType(IntEnum):
    """What a notification announces (metering.v1.NotificationType)."""

    UNSPECIFIED = 0
    USAGE_THRESHOLD_CROSSED = 1
    USAGE_LIMIT_REJECTED = 2
    INVOICE_FINALIZED = 3
    INVOICE_CREDIT_NOTE_ISSUED = 10


class CreditNoteReason(IntEnum):
    """Why a credit note was issued (the first four are Stripe's credit note reasons)."""

    UNSPECIFIED = 0
    DUPLICATE = 1
    FRAUDULENT = 2
    ORDER_CHANGE = 3
    PRODUCT_UNSATISFACTORY = 4
    BILLING_ERROR = 5
    GOODWILL = 6
    CREDITS_LOW = 11
    CREDITS_EXHAUSTED = 12


class CreditCategory(IntEnum):
    """What the customer gave for a wallet grant's credit."""

    UNSPECIFIED = 0  # as a request value: PAID
    PAID = 1
    PROMOTIONAL = 2


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _optional_time(message: object, field: str) -> datetime | None:
    return _time(getattr(message, field)) if message.HasField(field) else None  # type: ignore[attr-defined]


def _decimal(text: str) -> Decimal:
    return Decimal(text) if text else Decimal(0)


def _optional_decimal(text: str) -> Decimal | None:
    return Decimal(text) if text else None


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One event as the ledger stores it; `void_time` is set once it is voided."""

    event_id: str
    customer_id: str
    transaction_id: str
    meter_slug: str
    price_slug: str
    quantity: Decimal
    event_time: datetime
    recorded_time: datetime
    properties: Mapping[str, str]
    void_time: datetime | None
    void_reason: str

    @classmethod
    def from_proto(cls, m: usage_pb2.UsageEvent) -> UsageEvent:
        """Read a UsageEvent message."""
        return cls(
            event_id=m.event_id,
            customer_id=m.customer_id,
            transaction_id=m.transaction_id,
            meter_slug=m.meter_slug,
            price_slug=m.price_slug,
            quantity=_decimal(m.quantity),
            event_time=_time(m.event_time),
            recorded_time=_time(m.recorded_time),
            properties=dict(m.properties),
            void_time=_optional_time(m, "void_time"),
            void_reason=m.void_reason,
        )


@dataclass(frozen=True, slots=True)
class Balance:
    """One meter's balance in the current period: used, limit, grants, holds, what is available."""

    meter_slug: str
    aggregation: Aggregation
    unit: str
    used: Decimal
    limit: Decimal | None  # None: unlimited
    granted: Decimal
    reserved: Decimal
    available: Decimal | None  # None: unlimited
    percent_used: Decimal | None
    approaching_threshold_percent: Decimal
    approaching_limit: bool
    limit_reached: bool
    included_quantity: Decimal
    period_start: datetime
    period_end: datetime | None  # None: the meter never resets
    reset_period: ResetPeriod
    limit_enforcement: LimitEnforcement
    price_slug: str

    @classmethod
    def from_proto(cls, m: usage_pb2.Balance) -> Balance:
        """Read a Balance message."""
        return cls(
            meter_slug=m.meter_slug,
            aggregation=Aggregation(m.aggregation),
            unit=m.unit,
            used=_decimal(m.used),
            limit=Decimal(m.limit) if m.HasField("limit") else None,
            granted=_decimal(m.granted),
            reserved=_decimal(m.reserved),
            available=Decimal(m.available) if m.HasField("available") else None,
            percent_used=Decimal(m.percent_used) if m.HasField("percent_used") else None,
            approaching_threshold_percent=_decimal(m.approaching_threshold_percent),
            approaching_limit=m.approaching_limit,
            limit_reached=m.limit_reached,
            included_quantity=_decimal(m.included_quantity),
            period_start=_time(m.period_start_time),
            period_end=_optional_time(m, "period_end_time"),
            reset_period=ResetPeriod(m.reset_period),
            limit_enforcement=LimitEnforcement(m.limit_enforcement),
            price_slug=m.price_slug,
        )


@dataclass(frozen=True, slots=True)
class RecordResult:
    """RecordUsage's answer: the stored event (the original one for a duplicate)."""

    event: UsageEvent
    duplicate: bool
    balance: Balance
    overage: Decimal

    @classmethod
    def from_proto(cls, m: usage_pb2.RecordUsageResponse) -> RecordResult:
        """Read a RecordUsageResponse message."""
        return cls(
            event=UsageEvent.from_proto(m.event),
            duplicate=m.duplicate,
            balance=Balance.from_proto(m.balance),
            overage=_decimal(m.overage_quantity),
        )


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One event of a batch or stream: its result, or the refusal RecordUsage would have raised."""

    index: int
    result: RecordResult | None
    error: MeteringError | None

    @classmethod
    def from_proto(cls, m: ingest_pb2.RecordUsageResult) -> BatchOutcome:
        """Read a RecordUsageResult message."""
        if m.status.code == 0:
            return cls(index=m.index, result=RecordResult.from_proto(m.response), error=None)
        return cls(index=m.index, result=None, error=error_from_status(m.status))


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """RecordUsageStream's answer: counts, and only the refused events."""

    recorded: int
    duplicates: int
    failed: int
    failures: tuple[BatchOutcome, ...]  # only the refused events, by stream index

    @classmethod
    def from_proto(cls, m: ingest_pb2.RecordUsageStreamResponse) -> StreamSummary:
        """Read a RecordUsageStreamResponse message."""
        return cls(
            recorded=m.recorded_count,
            duplicates=m.duplicate_count,
            failed=m.failed_count,
            failures=tuple(BatchOutcome.from_proto(f) for f in m.failures),
        )


@dataclass(frozen=True, slots=True)
class VoidResult:
    """VoidUsage's answer: the voided event and the balance it left."""

    event: UsageEvent
    duplicate: bool
    balance: Balance

    @classmethod
    def from_proto(cls, m: events_pb2.VoidUsageResponse) -> VoidResult:
        """Read a VoidUsageResponse message."""
        return cls(event=UsageEvent.from_proto(m.event), duplicate=m.duplicate, balance=Balance.from_proto(m.balance))


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of ListUsageEvents."""

    events: tuple[UsageEvent, ...]
    next_page_token: str  # empty on the last page

    @classmethod
    def from_proto(cls, m: events_pb2.ListUsageEventsResponse) -> EventPage:
        """Read a ListUsageEventsResponse message."""
        return cls(events=tuple(UsageEvent.from_proto(e) for e in m.events), next_page_token=m.next_page_token)


@dataclass(frozen=True, slots=True)
class BalanceReport:
    """CheckBalance's answer, or, with `fail_open=True`, the client's own "allowed" during an
    outage (check_balance in fail-open mode): then no balances, `requested_allowed` True."""

    customer_id: str
    plan_slug: str
    balances: tuple[Balance, ...]
    requested_allowed: bool | None  # None unless a requested quantity was given
    as_of: datetime
    fail_open: bool = False  # True: the service could not answer; this "allowed" is the client's
    # The customer's wallet (prepaid credit in money); None without one on a plan that needs none.
    wallet: Wallet | None = None

    @classmethod
    def from_proto(cls, m: usage_pb2.CheckBalanceResponse) -> BalanceReport:
        """Read a CheckBalanceResponse."""
        return cls(
            customer_id=m.customer_id,
            plan_slug=m.plan_slug,
            balances=tuple(Balance.from_proto(b) for b in m.balances),
            requested_allowed=m.requested_allowed if m.HasField("requested_allowed") else None,
            as_of=_time(m.as_of_time),
            wallet=Wallet.from_proto(m.wallet) if m.HasField("wallet") else None,
        )


@dataclass(frozen=True, slots=True)
class UsageRow:
    """GetUsage's value of one meter in one window (and group)."""

    meter_slug: str
    window_start: datetime
    window_end: datetime
    value: Decimal
    event_count: int
    group_values: Mapping[str, str]

    @classmethod
    def from_proto(cls, m: usage_pb2.UsageRow) -> UsageRow:
        """Read a UsageRow message."""
        return cls(
            meter_slug=m.meter_slug,
            window_start=_time(m.window_start_time),
            window_end=_time(m.window_end_time),
            value=_decimal(m.value),
            event_count=m.event_count,
            group_values=dict(m.group_values),
        )


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One page of GetUsage's rows."""

    rows: tuple[UsageRow, ...]
    next_page_token: str

    @classmethod
    def from_proto(cls, m: usage_pb2.GetUsageResponse) -> UsagePage:
        """Read a GetUsageResponse message."""
        return cls(rows=tuple(UsageRow.from_proto(r) for r in m.rows), next_page_token=m.next_page_token)


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount of money in a currency."""

    amount: Decimal
    currency: str  # ISO 4217

    @classmethod
    def from_proto(cls, m: billing_pb2.Money) -> Money:
        """Read a Money message."""
        return cls(amount=_decimal(m.amount), currency=m.currency_code)


@dataclass(frozen=True, slots=True)
class BillTier:
    """The part of a bill line that fell in one tier of a graduated or volume price."""

    from_quantity: Decimal
    up_to_quantity: Decimal | None  # None: the open-ended last tier
    quantity: Decimal
    unit_amount: Decimal
    flat_amount: Decimal
    amount: Decimal

    @classmethod
    def from_proto(cls, m: billing_pb2.BillTier) -> BillTier:
        """Read a BillTier message."""
        return cls(
            from_quantity=_decimal(m.from_quantity),
            up_to_quantity=_optional_decimal(m.up_to_quantity),
            quantity=_decimal(m.quantity),
            unit_amount=_decimal(m.unit_amount),
            flat_amount=_decimal(m.flat_amount),
            amount=_decimal(m.amount),
        )


@dataclass(frozen=True, slots=True)
class BillLine:
    """One priced meter of a bill: quantity, included units, billable units, amount."""

    meter_slug: str
    price_slug: str
    pricing_model: PricingModel
    quantity: Decimal
    included_quantity: Decimal
    billable_quantity: Decimal
    unit_amount: Decimal | None  # PER_UNIT: the unit amount; PACKAGE: the package amount
    package_size: Decimal | None  # PACKAGE only
    tiers: tuple[BillTier, ...]
    amount: Money

    @classmethod
    def from_proto(cls, m: billing_pb2.BillLine) -> BillLine:
        """Read a BillLine message."""
        return cls(
            meter_slug=m.meter_slug,
            price_slug=m.price_slug,
            pricing_model=PricingModel(m.pricing_model),
            quantity=_decimal(m.quantity),
            included_quantity=_decimal(m.included_quantity),
            billable_quantity=_decimal(m.billable_quantity),
            unit_amount=_optional_decimal(m.unit_amount),
            package_size=_optional_decimal(m.package_size),
            tiers=tuple(BillTier.from_proto(t) for t in m.tiers),
            amount=Money.from_proto(m.amount),
        )


@dataclass(frozen=True, slots=True)
class WhatIfBill:
    """A billing period's usage priced on another plan (EstimateBill's `what_if_plan_slug`):
    one line per meter, never stored. `unlisted_meter_slugs` are meters with usage that the
    plan does not list (their lines are what that plan would charge: the meter's default
    price, else nothing)."""

    plan_slug: str
    lines: tuple[BillLine, ...]
    subtotal: Money
    credits: Money
    total: Money
    unlisted_meter_slugs: tuple[str, ...]

    @classmethod
    def from_proto(cls, m: billing_pb2.WhatIfBill) -> WhatIfBill:
        """Read a WhatIfBill message."""
        return cls(
            plan_slug=m.plan_slug,
            lines=tuple(BillLine.from_proto(line) for line in m.lines),
            subtotal=Money.from_proto(m.subtotal),
            credits=Money.from_proto(m.credits),
            total=Money.from_proto(m.total),
            unlisted_meter_slugs=tuple(m.unlisted_meter_slugs),
        )


@dataclass(frozen=True, slots=True)
class Bill:
    """EstimateBill's answer."""

    customer_id: str
    plan_slug: str
    period_start: datetime
    period_end: datetime
    lines: tuple[BillLine, ...]
    subtotal: Money
    credits: Money
    total: Money
    invoice_status: InvoiceStatus
    invoice_id: str  # empty until finalized
    invoice_number: int  # 0 until finalized
    finalize_time: datetime | None
    what_if: WhatIfBill | None = None  # when a what-if plan was asked for
    credits_applied: tuple[CreditApplied, ...] = ()  # wallet credit per grant; `credits` is minus their sum

    @classmethod
    def from_proto(cls, m: billing_pb2.EstimateBillResponse) -> Bill:
        """Read a EstimateBillResponse message."""
        return cls(
            customer_id=m.customer_id,
            plan_slug=m.plan_slug,
            period_start=_time(m.period_start_time),
            period_end=_time(m.period_end_time),
            lines=tuple(BillLine.from_proto(line) for line in m.lines),
            subtotal=Money.from_proto(m.subtotal),
            credits=Money.from_proto(m.credits),
            total=Money.from_proto(m.total),
            invoice_status=InvoiceStatus(m.invoice_status),
            invoice_id=m.invoice_id,
            invoice_number=m.invoice_number,
            finalize_time=_optional_time(m, "finalize_time"),
            credits_applied=tuple(CreditApplied.from_proto(c) for c in m.credits_applied),
            what_if=WhatIfBill.from_proto(m.what_if) if m.HasField("what_if") else None,
        )


@dataclass(frozen=True, slots=True)
class CreditNoteLine:
    """The amount a credit note credits on one invoice line (a meter at a price)."""

    meter_slug: str
    price_slug: str
    amount: Money

    @classmethod
    def from_proto(cls, m: invoices_pb2.CreditNoteLine) -> CreditNoteLine:
        """Read a CreditNoteLine message."""
        return cls(meter_slug=m.meter_slug, price_slug=m.price_slug, amount=Money.from_proto(m.amount))


@dataclass(frozen=True, slots=True)
class CreditNote:
    """A correction of a finalized invoice, stored once and never changed."""

    credit_note_id: str  # the caller's idempotency key
    customer_id: str
    invoice_id: str
    number: int  # 1, 2, 3... per invoice
    reason: CreditNoteReason
    memo: str
    whole_invoice: bool  # True: what remained of the invoice's total (lines is empty)
    lines: tuple[CreditNoteLine, ...]
    amount: Money
    issue_time: datetime

    @classmethod
    def from_proto(cls, m: invoices_pb2.CreditNote) -> CreditNote:
        """Read a CreditNote message."""
        return cls(
            credit_note_id=m.credit_note_id,
            customer_id=m.customer_id,
            invoice_id=m.invoice_id,
            number=m.number,
            reason=CreditNoteReason(m.reason),
            memo=m.memo,
            whole_invoice=m.whole_invoice,
            lines=tuple(CreditNoteLine.from_proto(line) for line in m.lines),
            amount=Money.from_proto(m.amount),
            issue_time=_time(m.issue_time),
        )


@dataclass(frozen=True, slots=True)
class Invoice:
    """A period's invoice; finalized ones never change."""

    invoice_id: str  # empty for a draft
    customer_id: str
    number: int  # 0 for a draft
    status: InvoiceStatus
    plan_slug: str
    period_start: datetime
    period_end: datetime
    lines: tuple[BillLine, ...]
    subtotal: Money
    credits: Money
    total: Money
    finalize_time: datetime | None
    credit_notes: tuple[CreditNote, ...] = ()  # issued against it, in number order
    credited: Money | None = None  # the credit notes' sum
    net_total: Money | None = None  # total - credited: what is owed after the credit notes
    credits_applied: tuple[CreditApplied, ...] = ()  # wallet credit per grant; `credits` is minus their sum

    @classmethod
    def from_proto(cls, m: invoices_pb2.Invoice) -> Invoice:
        """Read a Invoice message."""
        return cls(
            invoice_id=m.invoice_id,
            customer_id=m.customer_id,
            number=m.number,
            status=InvoiceStatus(m.status),
            plan_slug=m.plan_slug,
            period_start=_time(m.period_start_time),
            period_end=_time(m.period_end_time),
            lines=tuple(BillLine.from_proto(line) for line in m.lines),
            subtotal=Money.from_proto(m.subtotal),
            credits=Money.from_proto(m.credits),
            total=Money.from_proto(m.total),
            finalize_time=_optional_time(m, "finalize_time"),
            credits_applied=tuple(CreditApplied.from_proto(c) for c in m.credits_applied),
            credit_notes=tuple(CreditNote.from_proto(note) for note in m.credit_notes),
            credited=Money.from_proto(m.credited) if m.HasField("credited") else None,
            net_total=Money.from_proto(m.net_total) if m.HasField("net_total") else None,
        )


@dataclass(frozen=True, slots=True)
class IssueCreditNoteResult:
    """IssueCreditNote's answer: the note (the original, for a replay) and its invoice with every
    credit note issued against it so far."""

    credit_note: CreditNote
    duplicate: bool
    invoice: Invoice

    @classmethod
    def from_proto(cls, m: invoices_pb2.IssueCreditNoteResponse) -> IssueCreditNoteResult:
        """Read an IssueCreditNoteResponse message."""
        return cls(
            credit_note=CreditNote.from_proto(m.credit_note),
            duplicate=m.duplicate,
            invoice=Invoice.from_proto(m.invoice),
        )


@dataclass(frozen=True, slots=True)
class InvoicePage:
    """One page of ListInvoices."""

    invoices: tuple[Invoice, ...]
    next_page_token: str

    @classmethod
    def from_proto(cls, m: invoices_pb2.ListInvoicesResponse) -> InvoicePage:
        """Read a ListInvoicesResponse message."""
        return cls(invoices=tuple(Invoice.from_proto(i) for i in m.invoices), next_page_token=m.next_page_token)


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer: its plan and billing anchor."""

    customer_id: str
    plan_slug: str
    billing_anchor: datetime
    create_time: datetime
    update_time: datetime

    @classmethod
    def from_proto(cls, m: customer_pb2.Customer) -> Customer:
        """Read a Customer message."""
        return cls(
            customer_id=m.customer_id,
            plan_slug=m.plan_slug,
            billing_anchor=_time(m.billing_anchor_time),
            create_time=_time(m.create_time),
            update_time=_time(m.update_time),
        )


@dataclass(frozen=True, slots=True)
class CustomerPage:
    """ListCustomers' answer: customers by id (byte order), and the token of the next page."""

    customers: tuple[Customer, ...]
    next_page_token: str  # empty on the last page

    @classmethod
    def from_proto(cls, m: customer_pb2.ListCustomersResponse) -> CustomerPage:
        """Read a ListCustomersResponse message."""
        return cls(customers=tuple(Customer.from_proto(c) for c in m.customers), next_page_token=m.next_page_token)


@dataclass(frozen=True, slots=True)
class CatalogMeter:
    """A meter of the catalog."""

    slug: str
    aggregation: Aggregation
    unit: str
    description: str
    unique_property: str | None  # UNIQUE_COUNT meters only
    default_price_slug: str | None  # None: the no-charge price applies
    no_charge_price_slug: str
    dimensions: tuple[str, ...]

    @classmethod
    def from_proto(cls, m: catalog_pb2.CatalogMeter) -> CatalogMeter:
        """Read a CatalogMeter message."""
        return cls(
            slug=m.slug,
            aggregation=Aggregation(m.aggregation),
            unit=m.unit,
            description=m.description,
            unique_property=m.unique_property or None,
            default_price_slug=m.default_price_slug or None,
            no_charge_price_slug=m.no_charge_price_slug,
            dimensions=tuple(m.dimensions),
        )


@dataclass(frozen=True, slots=True)
class CatalogPriceTier:
    """One tier of a GRADUATED or VOLUME price."""

    up_to_quantity: Decimal | None  # None: the open-ended last tier
    unit_amount: Decimal
    flat_amount: Decimal

    @classmethod
    def from_proto(cls, m: catalog_pb2.CatalogPriceTier) -> CatalogPriceTier:
        """Read a CatalogPriceTier message."""
        return cls(
            up_to_quantity=_optional_decimal(m.up_to_quantity),
            unit_amount=_decimal(m.unit_amount),
            flat_amount=_decimal(m.flat_amount),
        )


@dataclass(frozen=True, slots=True)
class CatalogPrice:
    """A price of the catalog (the built-in no-charge ones included)."""

    slug: str
    meter_slug: str
    pricing_model: PricingModel
    currency: str | None  # None: a no-charge price, billed in the plan's currency
    unit_amount: Decimal | None  # PER_UNIT: per unit; PACKAGE: per package; None for tiered prices
    package_size: Decimal | None  # PACKAGE only
    package_rounding: PackageRounding
    tiers: tuple[CatalogPriceTier, ...]  # GRADUATED and VOLUME only
    no_charge: bool

    @classmethod
    def from_proto(cls, m: catalog_pb2.CatalogPrice) -> CatalogPrice:
        """Read a CatalogPrice message."""
        return cls(
            slug=m.slug,
            meter_slug=m.meter_slug,
            pricing_model=PricingModel(m.pricing_model),
            currency=m.currency_code or None,
            unit_amount=_optional_decimal(m.unit_amount),
            package_size=_optional_decimal(m.package_size),
            package_rounding=PackageRounding(m.package_rounding),
            tiers=tuple(CatalogPriceTier.from_proto(t) for t in m.tiers),
            no_charge=m.no_charge,
        )


@dataclass(frozen=True, slots=True)
class CatalogPlanMeter:
    """What a plan says of one meter."""

    meter_slug: str
    price_slug: str
    limit: Decimal | None  # None: unlimited
    included_quantity: Decimal
    reset_period: ResetPeriod
    limit_enforcement: LimitEnforcement
    approaching_threshold_percent: Decimal

    @classmethod
    def from_proto(cls, m: catalog_pb2.CatalogPlanMeter) -> CatalogPlanMeter:
        """Read a CatalogPlanMeter message."""
        return cls(
            meter_slug=m.meter_slug,
            price_slug=m.price_slug,
            limit=_optional_decimal(m.limit),
            included_quantity=_decimal(m.included_quantity),
            reset_period=ResetPeriod(m.reset_period),
            limit_enforcement=LimitEnforcement(m.limit_enforcement),
            approaching_threshold_percent=_decimal(m.approaching_threshold_percent),
        )


@dataclass(frozen=True, slots=True)
class CatalogPlan:
    """A plan of the catalog. A meter it does not list is unlimited on it, resets monthly and
    is billed at the meter's default price (else its no-charge price)."""

    slug: str
    name: str
    currency: str
    meters: tuple[CatalogPlanMeter, ...]  # in the catalog file's order
    prepaid: bool  # usage is paid from wallet credit; an event it cannot cover is refused
    credits_low_threshold: Decimal | None  # wallet credit below which credits.low is announced; None: never

    @classmethod
    def from_proto(cls, m: catalog_pb2.CatalogPlan) -> CatalogPlan:
        """Read a CatalogPlan message."""
        return cls(
            slug=m.slug,
            name=m.name,
            currency=m.currency_code,
            meters=tuple(CatalogPlanMeter.from_proto(t) for t in m.meters),
            prepaid=m.prepaid,
            credits_low_threshold=_optional_decimal(m.credits_low_threshold),
        )


@dataclass(frozen=True, slots=True)
class Catalog:
    """GetCatalog's answer: the catalog the answering process serves with."""

    meters: tuple[CatalogMeter, ...]
    prices: tuple[CatalogPrice, ...]
    plans: tuple[CatalogPlan, ...]
    revision: str  # hexadecimal SHA-256 of the catalog file's text
    load_time: datetime

    @classmethod
    def from_proto(cls, m: catalog_pb2.GetCatalogResponse) -> Catalog:
        """Read a GetCatalogResponse message."""
        return cls(
            meters=tuple(CatalogMeter.from_proto(x) for x in m.meters),
            prices=tuple(CatalogPrice.from_proto(x) for x in m.prices),
            plans=tuple(CatalogPlan.from_proto(x) for x in m.plans),
            revision=m.revision,
            load_time=_time(m.load_time),
        )

    def meter(self, slug: str) -> CatalogMeter | None:
        """The meter named `slug`, or None."""
        return next((meter for meter in self.meters if meter.slug == slug), None)

    def price(self, slug: str) -> CatalogPrice | None:
        """The price named `slug`, or None."""
        return next((price for price in self.prices if price.slug == slug), None)

    def plan(self, slug: str) -> CatalogPlan | None:
        """The plan named `slug`, or None."""
        return next((plan for plan in self.plans if plan.slug == slug), None)


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """UpsertCustomer's answer: the customer, and whether it was created."""

    customer: Customer
    created: bool

    @classmethod
    def from_proto(cls, m: customer_pb2.UpsertCustomerResponse) -> UpsertResult:
        """Read a UpsertCustomerResponse message."""
        return cls(customer=Customer.from_proto(m.customer), created=m.created)


@dataclass(frozen=True, slots=True)
class Grant:
    """Credits added to a meter's allowance for a time."""

    grant_id: str
    customer_id: str
    meter_slug: str
    quantity: Decimal
    remaining_quantity: Decimal
    effective_time: datetime
    expire_time: datetime | None  # None: never expires
    active: bool
    reason: str
    create_time: datetime

    @classmethod
    def from_proto(cls, m: grants_pb2.Grant) -> Grant:
        """Read a Grant message."""
        return cls(
            grant_id=m.grant_id,
            customer_id=m.customer_id,
            meter_slug=m.meter_slug,
            quantity=_decimal(m.quantity),
            remaining_quantity=_decimal(m.remaining_quantity),
            effective_time=_time(m.effective_time),
            expire_time=_optional_time(m, "expire_time"),
            active=m.active,
            reason=m.reason,
            create_time=_time(m.create_time),
        )


@dataclass(frozen=True, slots=True)
class GrantResult:
    """GrantCredits' answer: the grant (the original one for a replay)."""

    grant: Grant
    duplicate: bool

    @classmethod
    def from_proto(cls, m: grants_pb2.GrantCreditsResponse) -> GrantResult:
        """Read a GrantCreditsResponse message."""
        return cls(grant=Grant.from_proto(m.grant), duplicate=m.duplicate)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on units of a meter, until committed, released or expired."""

    reservation_id: str
    customer_id: str
    meter_slug: str
    quantity: Decimal
    status: ReservationStatus
    create_time: datetime
    expire_time: datetime
    committed_quantity: Decimal | None  # COMMITTED only
    event_id: str  # COMMITTED only

    @classmethod
    def from_proto(cls, m: reservations_pb2.Reservation) -> Reservation:
        """Read a Reservation message."""
        return cls(
            reservation_id=m.reservation_id,
            customer_id=m.customer_id,
            meter_slug=m.meter_slug,
            quantity=_decimal(m.quantity),
            status=ReservationStatus(m.status),
            create_time=_time(m.create_time),
            expire_time=_time(m.expire_time),
            committed_quantity=_optional_decimal(m.committed_quantity),
            event_id=m.event_id,
        )


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """ReserveUsage's answer: the hold and the balance with it."""

    reservation: Reservation
    duplicate: bool
    balance: Balance

    @classmethod
    def from_proto(cls, m: reservations_pb2.ReserveUsageResponse) -> ReserveResult:
        """Read a ReserveUsageResponse message."""
        return cls(
            reservation=Reservation.from_proto(m.reservation),
            duplicate=m.duplicate,
            balance=Balance.from_proto(m.balance),
        )


@dataclass(frozen=True, slots=True)
class CommitResult:
    """CommitReservation's answer: the recorded event, the reservation and the balance."""

    event: UsageEvent
    reservation: Reservation
    duplicate: bool
    balance: Balance

    @classmethod
    def from_proto(cls, m: reservations_pb2.CommitReservationResponse) -> CommitResult:
        """Read a CommitReservationResponse message."""
        return cls(
            event=UsageEvent.from_proto(m.event),
            reservation=Reservation.from_proto(m.reservation),
            duplicate=m.duplicate,
            balance=Balance.from_proto(m.balance),
        )


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """ReleaseReservation's answer: the reservation and the balance without it."""

    reservation: Reservation
    balance: Balance

    @classmethod
    def from_proto(cls, m: reservations_pb2.ReleaseReservationResponse) -> ReleaseResult:
        """Read a ReleaseReservationResponse message."""
        return cls(reservation=Reservation.from_proto(m.reservation), balance=Balance.from_proto(m.balance))


@dataclass(frozen=True, slots=True)
class ThresholdCrossed:
    """A notification's payload: a meter's usage crossed its approaching-limit threshold."""

    meter_slug: str
    plan_slug: str
    period_start: datetime
    period_end: datetime | None
    threshold_percent: Decimal
    used: Decimal
    limit: Decimal
    granted: Decimal
    allowance: Decimal
    percent_used: Decimal
    unit: str


@dataclass(frozen=True, slots=True)
class LimitRejected:
    """A notification's payload: an event was refused by a hard limit."""

    meter_slug: str
    plan_slug: str
    period_start: datetime
    period_end: datetime | None
    limit: Decimal
    available: Decimal
    requested: Decimal
    transaction_id: str
    unit: str


@dataclass(frozen=True, slots=True)
class InvoiceFinalized:
    """A notification's payload: a period's invoice was finalized."""

    invoice_id: str
    invoice_number: int
    period_start: datetime
    period_end: datetime
    total: Money


@dataclass(frozen=True, slots=True)
class CreditNoteIssued:
    """A notification's payload: a credit note was issued against a finalized invoice."""

    invoice_id: str
    invoice_number: int
    credit_note_id: str
    credit_note_number: int
    reason: CreditNoteReason
    amount: Money
    invoice_net_total: Money  # the invoice's total less every credit note so far, this one included
    whole_invoice: bool


@dataclass(frozen=True, slots=True)
class CreditsLow:
    """A wallet's available credit fell below the plan's threshold (the hook for an auto top-up)."""

    available: Money
    threshold: Money
    transaction_id: str


@dataclass(frozen=True, slots=True)
class CreditsExhaustedNotice:
    """A wallet's available credit reached zero, or a prepaid plan's event was refused for credit."""

    available: Money
    requested: Money
    transaction_id: str
    meter_slug: str
    refused: bool


NotificationPayload = (
    ThresholdCrossed | LimitRejected | InvoiceFinalized | CreditNoteIssued | CreditsLow | CreditsExhaustedNotice
)


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification of the outbox (WatchNotifications); deduplicate on `id`."""

    id: str  # deduplicate on it
    type: NotificationType
    time: datetime
    customer_id: str
    cursor: str  # resume a watch right after this notification
    payload: NotificationPayload | None

    @classmethod
    def from_proto(cls, m: notifications_pb2.Notification) -> Notification:
        """Read a Notification message."""
        payload: NotificationPayload | None = None
        kind = m.WhichOneof("payload")
        if kind == "threshold_crossed":
            t = m.threshold_crossed
            payload = ThresholdCrossed(
                meter_slug=t.meter_slug,
                plan_slug=t.plan_slug,
                period_start=_time(t.period_start_time),
                period_end=_optional_time(t, "period_end_time"),
                threshold_percent=_decimal(t.threshold_percent),
                used=_decimal(t.used),
                limit=_decimal(t.limit),
                granted=_decimal(t.granted),
                allowance=_decimal(t.allowance),
                percent_used=_decimal(t.percent_used),
                unit=t.unit,
            )
        elif kind == "limit_rejected":
            r = m.limit_rejected
            payload = LimitRejected(
                meter_slug=r.meter_slug,
                plan_slug=r.plan_slug,
                period_start=_time(r.period_start_time),
                period_end=_optional_time(r, "period_end_time"),
                limit=_decimal(r.limit),
                available=_decimal(r.available),
                requested=_decimal(r.requested),
                transaction_id=r.transaction_id,
                unit=r.unit,
            )
        elif kind == "invoice_finalized":
            f = m.invoice_finalized
            payload = InvoiceFinalized(
                invoice_id=f.invoice_id,
                invoice_number=f.invoice_number,
                period_start=_time(f.period_start_time),
                period_end=_time(f.period_end_time),
                total=Money.from_proto(f.total),
            )
        elif kind == "credit_note_issued":
            c = m.credit_note_issued
            payload = CreditNoteIssued(
                invoice_id=c.invoice_id,
                invoice_number=c.invoice_number,
                credit_note_id=c.credit_note_id,
                credit_note_number=c.credit_note_number,
                reason=CreditNoteReason(c.reason),
                amount=Money.from_proto(c.amount),
                invoice_net_total=Money.from_proto(c.invoice_net_total),
                whole_invoice=c.whole_invoice,
            )
        elif kind == "credits_low":
            low = m.credits_low
            payload = CreditsLow(
                available=Money.from_proto(low.available),
                threshold=Money.from_proto(low.threshold),
                transaction_id=low.transaction_id,
            )
        elif kind == "credits_exhausted":
            out = m.credits_exhausted
            payload = CreditsExhaustedNotice(
                available=Money.from_proto(out.available),
                requested=Money.from_proto(out.requested),
                transaction_id=out.transaction_id,
                meter_slug=out.meter_slug,
                refused=out.refused,
            )
        return cls(
            id=m.id,
            type=NotificationType(m.type),
            time=_time(m.time),
            customer_id=m.customer_id,
            cursor=m.cursor,
            payload=payload,
        )


@dataclass(frozen=True, slots=True)
class CreditApplied:
    """The wallet credit one grant paid toward a bill (exact, never rounded)."""

    grant_id: str
    category: CreditCategory
    amount: Money

    @classmethod
    def from_proto(cls, m: billing_pb2.CreditApplied) -> CreditApplied:
        """Read a CreditApplied message."""
        return cls(grant_id=m.grant_id, category=CreditCategory(m.category), amount=Money.from_proto(m.amount))


@dataclass(frozen=True, slots=True)
class WalletGrant:
    """One credit grant of a wallet and what is left of it."""

    grant_id: str
    customer_id: str
    amount: Money
    remaining: Money
    category: CreditCategory
    priority: int  # lower burns first
    effective_time: datetime
    expire_time: datetime | None  # None: never expires
    meter_slugs: tuple[str, ...]  # empty: every meter
    active: bool
    reason: str
    create_time: datetime

    @classmethod
    def from_proto(cls, m: wallets_pb2.WalletGrant) -> WalletGrant:
        """Read a WalletGrant message."""
        return cls(
            grant_id=m.grant_id,
            customer_id=m.customer_id,
            amount=Money.from_proto(m.amount),
            remaining=Money.from_proto(m.remaining),
            category=CreditCategory(m.category),
            priority=m.priority,
            effective_time=_time(m.effective_time),
            expire_time=_optional_time(m, "expire_time"),
            meter_slugs=tuple(m.meter_slugs),
            active=m.active,
            reason=m.reason,
            create_time=_time(m.create_time),
        )


@dataclass(frozen=True, slots=True)
class Wallet:
    """A customer's wallet: the credit available now, grant by grant (in burn order)."""

    available: Money
    grants: tuple[WalletGrant, ...]
    prepaid: bool  # whether the plan requires prepaid credit for priced usage
    low_threshold: Money | None  # credits.low below it; None: no threshold

    @classmethod
    def from_proto(cls, m: wallets_pb2.WalletSummary) -> Wallet:
        """Read a WalletSummary message."""
        return cls(
            available=Money.from_proto(m.available),
            grants=tuple(WalletGrant.from_proto(g) for g in m.grants),
            prepaid=m.prepaid,
            low_threshold=Money.from_proto(m.low_threshold) if m.HasField("low_threshold") else None,
        )


@dataclass(frozen=True, slots=True)
class WalletGrantResult:
    """GrantWalletCredit's answer: the grant as stored, whether it was a replay, and the wallet after."""

    grant: WalletGrant
    duplicate: bool
    wallet: Wallet

    @classmethod
    def from_proto(cls, m: wallets_pb2.GrantWalletCreditResponse) -> WalletGrantResult:
        """Read a GrantWalletCreditResponse message."""
        return cls(grant=WalletGrant.from_proto(m.grant), duplicate=m.duplicate, wallet=Wallet.from_proto(m.wallet))
