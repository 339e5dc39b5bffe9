"""RecordUsage validation: the common event's shortcut (validation._plain_usage)
decides exactly what the full validation (validation._usage) decides, for any
request: the same command, or it declines and the full validation decides."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.api import validation
from metering.config.catalog import parse_catalog
from metering.domain.errors import MeteringError
from metering.domain.usage import UsageCommand
from metering.v1 import usage_pb2

CATALOG = parse_catalog(
    """
    [meters.tokens]
    aggregation = "sum"
    unit = "token"
    dimensions = ["model"]

    [meters.calls]
    aggregation = "count"
    unit = "call"

    [meters.seats]
    aggregation = "unique_count"
    unit = "seat"
    property = "user"

    [meters.peak]
    aggregation = "max"
    unit = "gb"

    [prices.tokens_usd]
    meter = "tokens"
    model = "per_unit"
    currency = "USD"
    unit_amount = "0.01"

    [plans.pro]
    currency = "USD"
    [plans.pro.meters.tokens]
    limit = "1000"
    """
)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=35)

identifiers = st.sampled_from(["c1", "t-1", "", "a b", "é", "x" * 128, "x" * 129, "ok\x7f"])
slugs = st.sampled_from(["tokens", "calls", "seats", "peak", "unknown", "Bad-Slug", ""])
quantities = st.sampled_from(["", "1", "2", "0.25", "-1", "1e3", "abc", "1.000", "0"])
seconds = st.one_of(
    st.none(),
    st.sampled_from(
        [
            NOW,
            NOW - timedelta(days=34),
            NOW - timedelta(days=36),
            NOW + timedelta(minutes=4),
            NOW + timedelta(minutes=6),
        ]
    ).map(lambda t: int(t.timestamp())),
    st.integers(min_value=-(2**40), max_value=2**40),
)


@st.composite
def requests(draw: st.DrawFn) -> usage_pb2.RecordUsageRequest:
    request = usage_pb2.RecordUsageRequest(
        customer_id=draw(identifiers),
        transaction_id=draw(identifiers),
        meter_slug=draw(slugs),
        price_slug=draw(st.sampled_from(["", "", "", "tokens_usd", "nope"])),
        quantity=draw(quantities),
        # 99: a value the enum does not define (an unknown mode is refused)
        enforcement_mode=cast("usage_pb2.EnforcementMode", draw(st.sampled_from([0, 0, 1, 2, 99]))),
    )
    when = draw(seconds)
    if when is not None:
        request.event_time.seconds = when
        request.event_time.nanos = draw(st.sampled_from([0, 1500, 999_999_999, 1_000_000_000, -1]))
    if draw(st.booleans()) and draw(st.booleans()):
        keys = st.sampled_from(["user", "model", "bad key"])
        request.properties.update(draw(st.dictionaries(keys, st.text(max_size=3))))
    return request


Outcome = tuple[UsageCommand, str] | tuple[type[MeteringError], str]


def outcome(command: UsageCommand) -> Outcome:
    """A command, with its too-old refusal as text (errors compare by identity)."""
    too_old = repr(command.too_old.violations) if command.too_old is not None else ""
    return replace(command, too_old=None), too_old


def refusal(exc: MeteringError) -> Outcome:
    return type(exc), repr(getattr(exc, "violations", exc.args))


def full(request: usage_pb2.RecordUsageRequest) -> Outcome:
    try:
        return outcome(validation._usage(request, CATALOG, NOW, WINDOW))
    except MeteringError as exc:
        return refusal(exc)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_shortcut_decides_what_the_full_validation_decides(request: usage_pb2.RecordUsageRequest) -> None:
    for _ in range(2):  # the second time, every parsable quantity is known (the shortcut takes only those)
        plain = validation._plain_usage(request, CATALOG, NOW, WINDOW)
        expected = full(request)
        if plain is not None:
            assert outcome(plain) == expected
        try:
            answered = outcome(validation.record_usage(request, CATALOG, now=NOW, backfill_window=WINDOW))
        except MeteringError as exc:
            answered = refusal(exc)
        assert answered == expected


def test_the_common_event_takes_the_shortcut() -> None:
    for request in [
        usage_pb2.RecordUsageRequest(customer_id="c1", transaction_id="t1", meter_slug="tokens", quantity="1"),
        usage_pb2.RecordUsageRequest(customer_id="c1", transaction_id="t2", meter_slug="calls"),
    ]:
        validation.record_usage(request, CATALOG, now=NOW, backfill_window=WINDOW)  # its quantity is known now
        request.event_time.FromDatetime(NOW - timedelta(hours=1))
        command = validation._plain_usage(request, CATALOG, NOW, WINDOW)
        assert command is not None
        assert command == validation._usage(request, CATALOG, NOW, WINDOW)
        assert command.properties == {} and command.event_time == NOW - timedelta(hours=1)
