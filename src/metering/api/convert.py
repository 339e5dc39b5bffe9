"""Domain objects to wire messages. Quantities leave as canonical decimal strings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from metering.catalog import Aggregation, Enforcement, PricingModel
from metering.decimals import format_decimal
from metering.engine import BalanceReport, MeterBalance, RecordResult
from metering.entitlements import GrantView, ReservationResult
from metering.ledger.records import COMMITTED, EXPIRED, HELD, RELEASED, CustomerRecord, StoredEvent
from metering.periods import ResetPeriod
from metering.pricing import round_money
from metering.reporting import Bill, BillLine, PageCursor, UsageRow
from metering.v1 import billing_pb2, customer_pb2, grants_pb2, reservations_pb2, usage_pb2

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


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def usage_event(event: StoredEvent) -> usage_pb2.UsageEvent:
    message = usage_pb2.UsageEvent(
        event_id=str(event.event_id),
        customer_id=event.customer_id,
        transaction_id=event.transaction_id,
        meter_slug=event.meter_slug,
        price_slug=event.price_slug,
        quantity=format_decimal(event.quantity),
        event_time=timestamp(event.event_time),
        recorded_time=timestamp(event.recorded_at),
        properties=event.properties,
    )
    if event.void_time is not None:
        message.void_time.CopyFrom(timestamp(event.void_time))
        message.void_reason = event.void_reason or ""
    return message


def balance(view: MeterBalance) -> usage_pb2.Balance:
    figures = view.figures
    message = usage_pb2.Balance(
        meter_slug=view.meter.slug,
        aggregation=_AGGREGATIONS[view.meter.aggregation],
        unit=view.meter.unit,
        used=format_decimal(figures.used),
        granted=format_decimal(figures.granted),
        reserved=format_decimal(figures.reserved),
        approaching_threshold_percent=format_decimal(view.terms.approaching_threshold),
        approaching_limit=figures.approaching_limit,
        limit_reached=figures.limit_reached,
        included_quantity=format_decimal(view.terms.included),
        period_start_time=timestamp(view.period.start),
        reset_period=_RESETS[view.terms.reset],
        limit_enforcement=_ENFORCEMENTS[view.terms.enforcement],
        price_slug=view.terms.price,
    )
    if figures.limit is not None:
        message.limit = format_decimal(figures.limit)
    if figures.available is not None:
        message.available = format_decimal(figures.available)
    if figures.percent_used is not None:
        message.percent_used = f"{figures.percent_used:f}"  # always two decimals, e.g. "80.00"
    if view.period.end is not None:
        message.period_end_time.CopyFrom(timestamp(view.period.end))
    return message


def record_usage_response(result: RecordResult) -> usage_pb2.RecordUsageResponse:
    return usage_pb2.RecordUsageResponse(
        event=usage_event(result.event),
        duplicate=result.duplicate,
        balance=balance(result.balance),
        overage_quantity=format_decimal(result.overage),
    )


def check_balance_response(report: BalanceReport) -> usage_pb2.CheckBalanceResponse:
    message = usage_pb2.CheckBalanceResponse(
        customer_id=report.customer_id,
        plan_slug=report.plan_slug,
        balances=[balance(view) for view in report.balances],
        as_of_time=timestamp(report.as_of),
    )
    if report.requested_allowed is not None:
        message.requested_allowed = report.requested_allowed
    return message


def customer(record: CustomerRecord) -> customer_pb2.Customer:
    return customer_pb2.Customer(
        customer_id=record.customer_id,
        plan_slug=record.plan_slug,
        billing_anchor_time=timestamp(record.billing_anchor),
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
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


def usage_cursor(cursor: PageCursor) -> dict[str, Any]:
    return {"m": cursor.meter_index, "w": cursor.window_index, "g": list(cursor.groups), "now": cursor.now.isoformat()}


def events_cursor(before: tuple[datetime, str]) -> dict[str, Any]:
    return {"t": before[0].isoformat(), "id": before[1]}


def money(amount: Decimal, currency: str) -> billing_pb2.Money:
    # Amounts are already rounded to the minor unit; this only fixes the digits
    # shown ("0" is "0.00" in USD), it never changes a value.
    shown = round_money(amount, currency)
    assert shown == amount, "money reaches the wire rounded once, at the line total"
    return billing_pb2.Money(currency_code=currency, amount=format(shown, "f"))


def bill(value: Bill) -> billing_pb2.EstimateBillResponse:
    assert value.period.end is not None
    return billing_pb2.EstimateBillResponse(
        customer_id=value.customer_id,
        plan_slug=value.plan.slug,
        period_start_time=timestamp(value.period.start),
        period_end_time=timestamp(value.period.end),
        lines=[bill_line(line, value.currency) for line in value.lines],
        subtotal=money(value.subtotal, value.currency),
        credits=money(value.credits, value.currency),
        total=money(value.total, value.currency),
    )


def bill_line(line: BillLine, currency: str) -> billing_pb2.BillLine:
    price, charge = line.price, line.charge
    message = billing_pb2.BillLine(
        meter_slug=line.meter.slug,
        price_slug=price.slug,
        pricing_model=_PRICING_MODELS[price.model],
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
    if price.model in (PricingModel.PER_UNIT, PricingModel.PACKAGE):
        message.unit_amount = format_decimal(price.unit_amount)
    if price.package_size is not None:
        message.package_size = format_decimal(price.package_size)
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
