"""The responses of a call recorded as columns (convert.RecordedResponses)
are, event for event, what write_record_usage_response writes for the same
event recorded one object at a time."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.api.convert import RecordedResponses, write_record_usage_response
from metering.domain import columns, limits
from metering.domain.records import CustomerRecord, StoredEvent, new_event_ids
from metering.domain.terms import MeterBalance, PlanTerms, TermsBook
from metering.domain.usage import Resolution, UsageCommand, resolve
from metering.services.usage import RecordedEvents, RecordResult
from metering.v1 import usage_pb2
from tests.unit.test_columns import plain_reads
from tests.unit.test_resolve import ANCHOR, CATALOG, NOW

BOOK = TermsBook(CATALOG)

events = st.lists(
    st.tuples(
        st.integers(0, 3),  # customer
        st.sampled_from(["1", "2", "0.5", "3"]),  # quantity
        st.sampled_from([None, 0, 1, 3600]),  # event time: the call's, or seconds before it
        st.booleans(),  # names the price
        st.sampled_from([{}, {}, {"model": "a"}]),  # properties
    ),
    min_size=1,
    max_size=40,
)


def command(
    customer: int, quantity: str, before: int | None, priced: bool, properties: dict[str, str], n: int
) -> UsageCommand:
    return UsageCommand(
        customer_id=f"c{customer}",
        transaction_id=f"t{n}",
        meter=CATALOG.meter("tokens"),
        price=CATALOG.price("tokens_usd") if priced else None,
        quantity=Decimal(quantity),
        event_time=None if before is None else NOW - timedelta(seconds=before),
        properties=dict(properties),
        unique_value=None,
        allow_overage=False,
        received_at=NOW,
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.sampled_from(["0", "10"]))
def test_each_response_is_the_one_written_for_the_event_alone(
    drawn: list[tuple[int, str, int | None, bool, dict[str, str]]], used: str
) -> None:
    commands = [command(*fields, n) for n, fields in enumerate(drawn)]
    customers = {c.customer_id: CustomerRecord(c.customer_id, "pro", ANCHOR, ANCHOR, ANCHOR) for c in commands}
    resolutions: list[Resolution] = [resolve(c, customers[c.customer_id], BOOK) for c in commands]
    reads = plain_reads(list(resolutions), used=used)
    plan = columns.decide_common(list(resolutions), reads, new_event_ids(len(resolutions)))
    if plan is None:
        return  # past the limit: not the common case
    recorded_at = [NOW + timedelta(seconds=1)] * len(resolutions)
    written = columns.recorded(plan, resolutions, recorded_at, 0, len(resolutions))
    terms: dict[int, PlanTerms] = {}
    for c, index in zip(commands, written.allowance_of, strict=True):
        terms.setdefault(index, BOOK.of("pro", c.meter))
    recorded = RecordedEvents(commands, written, terms, columns.balance_columns(written))
    responses = RecordedResponses(recorded)
    for index, (c, resolution) in enumerate(zip(commands, resolutions, strict=True)):
        columnar = usage_pb2.RecordUsageResponse()
        responses.write(columnar, index)
        event = resolution.event
        stored = StoredEvent(
            plan.event_ids[index],
            event.customer_id,
            event.transaction_id,
            event.meter_slug,
            event.price_slug,
            event.requested_price_slug,
            event.quantity,
            event.event_time,
            resolution.period.start,
            recorded_at[index],
            event.properties,
        )
        allowance = written.allowances[written.allowance_of[index]]
        figures = limits.balance_figures(allowance, plan.used[index], resolution.plan_terms.approaching_threshold)
        balance = MeterBalance(c.meter, resolution.plan_terms, resolution.period, figures)
        typed = usage_pb2.RecordUsageResponse()
        write_record_usage_response(typed, RecordResult("pro", stored, False, balance, Decimal(0)))
        assert columnar == typed
