"""Domain objects to wire messages. Quantities leave as canonical decimal strings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from metering.domain.bills import WhatIfBill
from metering.domain.catalog import (
    Aggregation,
    Enforcement,
    Meter,
    PackageRounding,
    Plan,
    PlanMeter,
    Price,
    PricingModel,
)
from metering.domain.decimals import ZERO, format_decimal
from metering.domain.periods import Period, ResetPeriod
from metering.domain.records import (
    COMMITTED,
    DRAFT,
    EXPIRED,
    FINALIZED,
    GATHERING,
    HELD,
    RELEASED,
    CustomerRecord,
    Invoice,
    InvoiceLine,
    StoredEvent,
    event_id_text,
)
from metering.domain.wallets import CreditApplied, CreditCategory, GrantBalance
from metering.services.catalog import LoadedCatalog
from metering.services.entitlements import GrantView, ReservationResult
from metering.services.invoicing import Estimate
from metering.services.reporting import UsageRow
from metering.services.usage import BalanceReport, CustomersPage, MeterBalance, RecordedEvents, RecordResult
from metering.services.wallets import BalanceWallet, WalletView
from metering.v1 import (
    billing_pb2,
    catalog_pb2,
    customer_pb2,
    grants_pb2,
    invoices_pb2,
    reservations_pb2,
    usage_pb2,
    wallets_pb2,
)
from metering.wire.credit_notes import credit_note
from metering.wire.values import exact_money, money, set_timestamp, timestamp

_AGGREGATIONS = {
    Aggregation.SUM: usage_pb2.AGGREGATION_SUM,
    Aggregation.COUNT: usage_pb2.AGGREGATION_COUNT,
    Aggregation.MAX: usage_pb2.AGGREGATION_MAX,
    Aggregation.UNIQUE_COUNT: usage_pb2.AGGREGATION_UNIQUE_COUNT,
    Aggregation.LATEST: usage_pb2.AGGREGATION_LATEST,
}
_RESETS = {
    ResetPeriod.DAY: usage_pb2.RESET_PERIOD_DAY,
    ResetPeriod.WEEK: usage_pb2.RESET_PERIOD_WEEK,
    ResetPeriod.MONTH: usage_pb2.RESET_PERIOD_MONTH,
    ResetPeriod.NONE: usage_pb2.RESET_PERIOD_NONE,
}
_PRICING_MODELS = {
    PricingModel.PER_UNIT: billing_pb2.PRICING_MODEL_PER_UNIT,
    PricingModel.PACKAGE: billing_pb2.PRICING_MODEL_PACKAGE,
    PricingModel.GRADUATED: billing_pb2.PRICING_MODEL_GRADUATED,
    PricingModel.VOLUME: billing_pb2.PRICING_MODEL_VOLUME,
}
_ENFORCEMENTS = {
    Enforcement.HARD: usage_pb2.LIMIT_ENFORCEMENT_HARD,
    Enforcement.SOFT: usage_pb2.LIMIT_ENFORCEMENT_SOFT,
    Enforcement.UNLIMITED: usage_pb2.LIMIT_ENFORCEMENT_UNLIMITED,
}
_PACKAGE_ROUNDINGS = {
    PackageRounding.UP: catalog_pb2.PACKAGE_ROUNDING_UP,
    PackageRounding.DOWN: catalog_pb2.PACKAGE_ROUNDING_DOWN,
}


def usage_event(event: StoredEvent) -> usage_pb2.UsageEvent:
    message = usage_pb2.UsageEvent()
    write_usage_event(message, event)
    return message


def write_usage_event(message: usage_pb2.UsageEvent, event: StoredEvent) -> None:
    """Fills an empty UsageEvent in place (no copy when it is a field of a response)."""
    message.event_id = event_id_text(event.event_id)
    message.customer_id = event.customer_id
    message.transaction_id = event.transaction_id
    message.meter_slug = event.meter_slug
    message.price_slug = event.price_slug
    message.quantity = format_decimal(event.quantity)
    set_timestamp(message.event_time, event.event_time)
    set_timestamp(message.recorded_time, event.recorded_at)
    if event.properties:
        message.properties.update(event.properties)
    if event.void_time is not None:
        set_timestamp(message.void_time, event.void_time)
        message.void_reason = event.void_reason or ""


class Balances:
    """Encodes meter balances. What the meter, the plan's terms and the period
    fix is encoded once and copied after: the events of a customer and meter
    share it for a whole period. Remembers at most `capacity` of them, then
    starts over."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._fixed: dict[tuple[Meter, PlanMeter, Period], usage_pb2.Balance] = {}
        # The same, by the objects' identities (a TermsBook and its periods hand
        # out the same objects): no hash of three dataclasses per look-up. Each
        # entry keeps its objects, so an id is never another object's.
        self._same: dict[tuple[int, int, int], tuple[Meter, PlanMeter, Period, usage_pb2.Balance]] = {}

    def fixed(self, meter: Meter, terms: PlanMeter, period: Period) -> usage_pb2.Balance:
        """What the meter, the plan's terms and the period fix of a balance (copy it, never change it)."""
        same = self._same.get((id(meter), id(terms), id(period)))
        if same is not None and same[0] is meter and same[1] is terms and same[2] is period:
            return same[3]
        key = (meter, terms, period)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = _fixed_balance(meter, terms, period)
            if len(self._fixed) >= self._capacity:
                self._fixed.clear()
            self._fixed[key] = fixed
        if len(self._same) >= self._capacity:
            self._same.clear()
        self._same[(id(meter), id(terms), id(period))] = (meter, terms, period, fixed)
        return fixed

    def write(self, message: usage_pb2.Balance, view: MeterBalance) -> None:
        """Fills an empty Balance in place."""
        message.CopyFrom(self.fixed(view.meter, view.terms, view.period))
        figures = view.figures
        _write_allowance(message, figures.limit, figures.granted, figures.reserved)
        _write_used(
            message,
            figures.used,
            figures.available,
            figures.percent_used,
            approaching_limit=figures.approaching_limit,
            limit_reached=figures.limit_reached,
        )


# A balance's figures (metering.domain.limits.BalanceFigures) are written in two
# parts, whether from one MeterBalance or from the columns of a call recorded
# as columns (RecordedResponses): what the allowance fixes, and what usage moves.


def _write_allowance(message: usage_pb2.Balance, limit: Decimal | None, granted: Decimal, reserved: Decimal) -> None:
    message.granted = format_decimal(granted)
    message.reserved = format_decimal(reserved)
    if limit is not None:
        message.limit = format_decimal(limit)


def _write_used(
    message: usage_pb2.Balance,
    used: Decimal,
    available: Decimal | None,
    percent_used: Decimal | None,
    *,
    approaching_limit: bool,
    limit_reached: bool,
) -> None:
    message.used = format_decimal(used)
    message.approaching_limit = approaching_limit
    message.limit_reached = limit_reached
    if available is not None:
        message.available = format_decimal(available)
    if percent_used is not None:
        message.percent_used = f"{percent_used:f}"  # always two decimals, e.g. "80.00"


def _fixed_balance(meter: Meter, terms: PlanMeter, period: Period) -> usage_pb2.Balance:
    message = usage_pb2.Balance(
        meter_slug=meter.slug,
        aggregation=_AGGREGATIONS[meter.aggregation],
        unit=meter.unit,
        approaching_threshold_percent=format_decimal(terms.approaching_threshold),
        included_quantity=format_decimal(terms.included),
        period_start_time=timestamp(period.start),
        reset_period=_RESETS[terms.reset],
        limit_enforcement=_ENFORCEMENTS[terms.enforcement],
        price_slug=terms.price,
    )
    if period.end is not None:
        message.period_end_time.CopyFrom(timestamp(period.end))
    return message


# Every balance this process answers with: what a meter, its terms and a period
# fix is encoded once for all calls. Keyed by their values, so a reloaded
# catalog's changed meter or terms are encoded afresh.
_BALANCES = Balances()


def balance(view: MeterBalance) -> usage_pb2.Balance:
    message = usage_pb2.Balance()
    _BALANCES.write(message, view)
    return message


def record_usage_response(result: RecordResult) -> usage_pb2.RecordUsageResponse:
    message = usage_pb2.RecordUsageResponse()
    write_record_usage_response(message, result)
    return message


def write_record_usage_response(message: usage_pb2.RecordUsageResponse, result: RecordResult) -> None:
    """Fills an empty RecordUsageResponse in place (e.g. one result of a batch)."""
    write_usage_event(message.event, result.event)
    message.duplicate = result.duplicate
    assert result.balance is not None, "RecordUsage answers carry their balance"
    _BALANCES.write(message.balance, result.balance)
    message.overage_quantity = format_decimal(result.overage)


class RecordedResponses:
    """Writes the RecordUsageResponse of each event of a call recorded as
    columns (RecordedEvents): what write_record_usage_response writes for the
    same event recorded one object at a time, with what an allowance fixes
    written once per call.

    What the events of one allowance share (its customer, meter and event
    time, their price, the time the batch was recorded, the balance's fixed
    part and the overage: zero) is written once into a template response,
    and each event's response starts as a copy of it (one CopyFrom, not a
    dozen field writes); only what varies from event to event is written
    then. The template is keyed by all of those values, so an event that
    differs in any of them gets its own."""

    def __init__(self, recorded: RecordedEvents) -> None:
        assert recorded.balances is not None, "RecordUsage answers carry their balance"
        self._recorded = recorded
        self._balances = recorded.balances
        self._templates: dict[tuple[int, str, str, str, datetime, datetime], usage_pb2.RecordUsageResponse] = {}

    def write(self, message: usage_pb2.RecordUsageResponse, index: int) -> None:
        """Fills an empty RecordUsageResponse with the answer of event `index` of the call's recorded events."""
        recorded, balances = self._recorded, self._balances
        events = recorded.events
        resolution = events.resolutions[index]
        event = resolution.event
        allowance_index = events.allowance_of[index]
        recorded_at = events.recorded_at[index]
        key = (allowance_index, event.customer_id, event.meter_slug, event.price_slug, event.event_time, recorded_at)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = self._template(index, recorded_at)
        message.CopyFrom(template)
        written = message.event
        written.event_id = event_id_text(events.event_ids[index])
        written.transaction_id = event.transaction_id
        written.quantity = format_decimal(event.quantity)
        if event.properties:
            written.properties.update(event.properties)
        # duplicate: False, proto3's default
        _write_used(
            message.balance,
            events.used[index],
            balances.available[index],
            balances.percent_used[index],
            approaching_limit=balances.approaching_limit[index],
            limit_reached=balances.limit_reached[index],
        )

    def _template(self, index: int, recorded_at: datetime) -> usage_pb2.RecordUsageResponse:
        """What event `index` shares with the other events of its allowance, price and recording time."""
        recorded = self._recorded
        events = recorded.events
        resolution = events.resolutions[index]
        event = resolution.event
        allowance_index = events.allowance_of[index]
        template = usage_pb2.RecordUsageResponse(overage_quantity=_NO_OVERAGE)
        written = template.event
        written.customer_id = event.customer_id
        written.meter_slug = event.meter_slug
        written.price_slug = event.price_slug
        set_timestamp(written.event_time, event.event_time)
        set_timestamp(written.recorded_time, recorded_at)
        known = recorded.terms[allowance_index]
        template.balance.CopyFrom(_BALANCES.fixed(known.meter, known.terms, resolution.period))
        allowance = events.allowances[allowance_index]
        _write_allowance(template.balance, allowance.limit, allowance.granted, allowance.reserved)
        return template


_NO_OVERAGE = format_decimal(ZERO)  # the common case's overage: it decides only events that fit


def check_balance_response(report: BalanceReport, wallet: BalanceWallet) -> usage_pb2.CheckBalanceResponse:
    message = usage_pb2.CheckBalanceResponse(customer_id=report.customer_id, plan_slug=report.plan_slug)
    for view in report.balances:
        _BALANCES.write(message.balances.add(), view)
    set_timestamp(message.as_of_time, report.as_of)
    if wallet.requested_allowed is not None:
        message.requested_allowed = wallet.requested_allowed
    if wallet.view is not None:
        message.wallet.CopyFrom(wallet_summary(wallet.view))
    return message


_CREDIT_CATEGORIES = {
    CreditCategory.PAID: billing_pb2.CREDIT_CATEGORY_PAID,
    CreditCategory.PROMOTIONAL: billing_pb2.CREDIT_CATEGORY_PROMOTIONAL,
}


def wallet_grant(balance: GrantBalance, currency: str) -> wallets_pb2.WalletGrant:
    grant = balance.grant
    message = wallets_pb2.WalletGrant(
        grant_id=grant.grant_id,
        customer_id=grant.customer_id,
        amount=exact_money(grant.amount, grant.currency),
        remaining=exact_money(balance.remaining, grant.currency),
        category=_CREDIT_CATEGORIES[grant.category],
        priority=grant.priority,
        effective_time=timestamp(grant.effective_at),
        meter_slugs=list(grant.meters),
        active=balance.active,
        reason=grant.reason,
        create_time=timestamp(grant.created_at),
    )
    if grant.expires_at is not None:
        set_timestamp(message.expire_time, grant.expires_at)
    return message


def wallet_summary(view: WalletView) -> wallets_pb2.WalletSummary:
    summary = view.summary
    message = wallets_pb2.WalletSummary(
        available=exact_money(summary.available, summary.currency),
        grants=[wallet_grant(g, summary.currency) for g in summary.grants],
        prepaid=view.prepaid,
    )
    if view.low_threshold is not None:
        message.low_threshold.CopyFrom(exact_money(view.low_threshold, summary.currency))
    return message


def credits_applied(applied: Sequence[CreditApplied], currency: str) -> list[billing_pb2.CreditApplied]:
    return [
        billing_pb2.CreditApplied(
            grant_id=c.grant_id, category=_CREDIT_CATEGORIES[c.category], amount=exact_money(c.amount, currency)
        )
        for c in applied
    ]


def customer(record: CustomerRecord) -> customer_pb2.Customer:
    return customer_pb2.Customer(
        customer_id=record.customer_id,
        plan_slug=record.plan_slug,
        billing_anchor_time=timestamp(record.billing_anchor),
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
    )


def customers_page(page: CustomersPage) -> customer_pb2.ListCustomersResponse:
    """A page of customers without its token (the servicer signs it)."""
    return customer_pb2.ListCustomersResponse(customers=[customer(record) for record in page.customers])


def catalog(loaded: LoadedCatalog) -> catalog_pb2.GetCatalogResponse:
    """The catalog in force, every field a caller needs to act on it."""
    value = loaded.catalog
    return catalog_pb2.GetCatalogResponse(
        meters=[_catalog_meter(meter) for meter in value.meters.values()],
        prices=[_catalog_price(price) for price in value.prices.values()],
        plans=[_catalog_plan(plan) for plan in value.plans.values()],
        revision=value.revision,
        load_time=timestamp(loaded.load_time),
    )


def _catalog_meter(meter: Meter) -> catalog_pb2.CatalogMeter:
    return catalog_pb2.CatalogMeter(
        slug=meter.slug,
        aggregation=_AGGREGATIONS[meter.aggregation],
        unit=meter.unit,
        description=meter.description,
        unique_property=meter.unique_property or "",
        default_price_slug=meter.default_price or "",
        no_charge_price_slug=meter.no_charge_price,
        dimensions=meter.dimensions,
    )


def _catalog_price(price: Price) -> catalog_pb2.CatalogPrice:
    message = catalog_pb2.CatalogPrice(
        slug=price.slug,
        meter_slug=price.meter,
        pricing_model=_PRICING_MODELS[price.model],
        currency_code=price.currency or "",
        no_charge=price.is_no_charge,
    )
    if price.model in (PricingModel.PER_UNIT, PricingModel.PACKAGE):
        message.unit_amount = format_decimal(price.unit_amount)
    if price.model is PricingModel.PACKAGE:
        assert price.package_size is not None  # the catalog check
        message.package_size = format_decimal(price.package_size)
        message.package_rounding = _PACKAGE_ROUNDINGS[price.package_rounding]
    for tier in price.tiers:
        message.tiers.add(
            up_to_quantity="" if tier.up_to is None else format_decimal(tier.up_to),
            unit_amount=format_decimal(tier.unit_amount),
            flat_amount=format_decimal(tier.flat_amount),
        )
    return message


def _catalog_plan(plan: Plan) -> catalog_pb2.CatalogPlan:
    return catalog_pb2.CatalogPlan(
        slug=plan.slug,
        name=plan.name,
        currency_code=plan.currency or "",
        meters=[_catalog_plan_meter(terms) for terms in plan.meters.values()],
        prepaid=plan.prepaid,
        credits_low_threshold="" if plan.credits_low_threshold is None else format_decimal(plan.credits_low_threshold),
    )


def _catalog_plan_meter(terms: PlanMeter) -> catalog_pb2.CatalogPlanMeter:
    return catalog_pb2.CatalogPlanMeter(
        meter_slug=terms.meter,
        price_slug=terms.price,
        limit="" if terms.limit is None else format_decimal(terms.limit),
        included_quantity=format_decimal(terms.included),
        reset_period=_RESETS[terms.reset],
        limit_enforcement=_ENFORCEMENTS[terms.enforcement],
        approaching_threshold_percent=format_decimal(terms.approaching_threshold),
    )


def usage_row(row: UsageRow) -> usage_pb2.UsageRow:
    return usage_pb2.UsageRow(
        meter_slug=row.meter.slug,
        window_start_time=timestamp(row.window[0]),
        window_end_time=timestamp(row.window[1]),
        value=format_decimal(row.value),
        event_count=row.event_count,
        group_values=row.groups,
    )


_INVOICE_STATUSES = {
    GATHERING: billing_pb2.INVOICE_STATUS_GATHERING,
    DRAFT: billing_pb2.INVOICE_STATUS_DRAFT,
    FINALIZED: billing_pb2.INVOICE_STATUS_FINALIZED,
}


def bill(estimate: Estimate) -> billing_pb2.EstimateBillResponse:
    value = estimate.invoice
    response = billing_pb2.EstimateBillResponse(
        customer_id=value.customer_id,
        plan_slug=value.plan_slug,
        period_start_time=timestamp(value.period_start),
        period_end_time=timestamp(value.period_end),
        lines=[bill_line(line, value.currency) for line in value.lines],
        subtotal=money(value.subtotal, value.currency),
        credits=money(value.credits, value.currency),
        total=money(value.total, value.currency),
        credits_applied=credits_applied(value.credits_applied, value.currency),
        invoice_status=_INVOICE_STATUSES[value.status],
        invoice_id=str(value.invoice_id) if value.invoice_id is not None else "",
        invoice_number=value.number or 0,
    )
    if value.finalized_at is not None:
        set_timestamp(response.finalize_time, value.finalized_at)
    if estimate.what_if is not None:
        response.what_if.CopyFrom(what_if_bill(estimate.what_if))
    return response


def what_if_bill(value: WhatIfBill) -> billing_pb2.WhatIfBill:
    return billing_pb2.WhatIfBill(
        plan_slug=value.plan.slug,
        lines=[bill_line(line, value.currency) for line in value.lines],
        subtotal=money(value.subtotal, value.currency),
        credits=money(value.credits, value.currency),
        total=money(value.total, value.currency),
        unlisted_meter_slugs=value.unlisted_meters,
    )


def invoice(value: Invoice) -> invoices_pb2.Invoice:
    message = invoices_pb2.Invoice(
        invoice_id=str(value.invoice_id) if value.invoice_id is not None else "",
        customer_id=value.customer_id,
        number=value.number or 0,
        status=_INVOICE_STATUSES[value.status],
        plan_slug=value.plan_slug,
        period_start_time=timestamp(value.period_start),
        period_end_time=timestamp(value.period_end),
        lines=[bill_line(line, value.currency) for line in value.lines],
        subtotal=money(value.subtotal, value.currency),
        credits=money(value.credits, value.currency),
        total=money(value.total, value.currency),
        credit_notes=[credit_note(note) for note in value.credit_notes],
        credited=money(value.credited, value.currency),
        net_total=money(value.net_total, value.currency),
        credits_applied=credits_applied(value.credits_applied, value.currency),
    )
    if value.finalized_at is not None:
        set_timestamp(message.finalize_time, value.finalized_at)
    return message


def bill_line(line: InvoiceLine, currency: str) -> billing_pb2.BillLine:
    charge = line.charge
    message = billing_pb2.BillLine(
        meter_slug=line.meter_slug,
        price_slug=line.price_slug,
        pricing_model=_PRICING_MODELS[line.model],
        quantity=format_decimal(charge.quantity),
        included_quantity=format_decimal(charge.included),
        billable_quantity=format_decimal(charge.billable),
        tiers=[
            billing_pb2.BillTier(
                from_quantity=format_decimal(tier.from_quantity),
                up_to_quantity=format_decimal(tier.up_to) if tier.up_to is not None else "",
                quantity=format_decimal(tier.quantity),
                unit_amount=format_decimal(tier.unit_amount),
                flat_amount=format_decimal(tier.flat_amount),
                amount=format_decimal(tier.amount),
            )
            for tier in charge.tiers
        ],
        amount=money(charge.amount, currency),
    )
    if line.unit_amount is not None:
        message.unit_amount = format_decimal(line.unit_amount)
    if line.package_size is not None:
        message.package_size = format_decimal(line.package_size)
    return message


_RESERVATION_STATUSES = {
    HELD: reservations_pb2.RESERVATION_STATUS_HELD,
    COMMITTED: reservations_pb2.RESERVATION_STATUS_COMMITTED,
    RELEASED: reservations_pb2.RESERVATION_STATUS_RELEASED,
    EXPIRED: reservations_pb2.RESERVATION_STATUS_EXPIRED,
}


def reservation(result: ReservationResult) -> reservations_pb2.Reservation:
    record = result.reservation
    message = reservations_pb2.Reservation(
        reservation_id=record.reservation_id,
        customer_id=record.customer_id,
        meter_slug=record.meter_slug,
        quantity=format_decimal(record.quantity),
        status=_RESERVATION_STATUSES[result.status],
        create_time=timestamp(record.created_at),
        expire_time=timestamp(record.expires_at),
    )
    if record.committed_quantity is not None:
        message.committed_quantity = format_decimal(record.committed_quantity)
    if record.event_id is not None:
        message.event_id = str(record.event_id)
    return message


def grant(view: GrantView) -> grants_pb2.Grant:
    record = view.grant
    message = grants_pb2.Grant(
        grant_id=record.grant_id,
        customer_id=record.customer_id,
        meter_slug=record.meter_slug,
        quantity=format_decimal(record.quantity),
        remaining_quantity=format_decimal(view.remaining),
        effective_time=timestamp(record.effective_at),
        active=view.active,
        reason=record.reason,
        create_time=timestamp(record.created_at),
    )
    if record.expires_at is not None:
        message.expire_time.CopyFrom(timestamp(record.expires_at))
    return message
