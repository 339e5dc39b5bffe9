"""The billing sync's pure rules (metering.domain.stripe) and its mapping file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.config.settings import ConfigError, Settings
from metering.config.stripe import StripeMappingError, UnlistedCustomers, parse_mapping
from metering.domain.catalog import Aggregation, Meter
from metering.domain.stripe import (
    MAX_IDENTIFIER_LENGTH,
    HourUsage,
    Progress,
    Step,
    abandoned,
    closed_end,
    identifier,
    lag_seconds,
    plan_steps,
    reportable,
)
from metering.domain.windows import HOUR

D = Decimal  # short for the many literals below
NOW = datetime(2026, 11, 21, 14, 30, tzinfo=UTC)
START = datetime(2026, 11, 21, 0, tzinfo=UTC)


def h(n: int) -> datetime:
    return START + n * HOUR


# -- closed and reportable hours -------------------------------------------------


def test_an_hour_closes_once_the_settle_delay_has_passed() -> None:
    settle = timedelta(minutes=5)
    assert closed_end(datetime(2026, 11, 21, 14, 4, 59, tzinfo=UTC), settle) == h(13)  # 13:00 still settling
    assert closed_end(datetime(2026, 11, 21, 14, 5, tzinfo=UTC), settle) == h(14)
    assert closed_end(NOW, timedelta(0)) == h(14)


def test_hours_older_than_stripes_35_days_are_not_reportable() -> None:
    assert reportable(NOW - timedelta(days=34), NOW)
    assert reportable(NOW - timedelta(days=35) + timedelta(minutes=10), NOW)
    assert not reportable(NOW - timedelta(days=35) + timedelta(minutes=9), NOW)  # too close to the limit
    assert not reportable(NOW - timedelta(days=36), NOW)


def test_lag_is_the_age_of_the_oldest_closed_hour_not_exported() -> None:
    settle = timedelta(minutes=5)
    assert lag_seconds(None, NOW, settle) == 0
    assert lag_seconds(h(13), NOW, settle) == 25 * 60  # closed at 14:05
    assert lag_seconds(h(14), NOW, settle) == 0  # not closed yet


# -- identifiers ----------------------------------------------------------------

texts = st.text(min_size=1, max_size=300)


@given(customer=texts, meter=texts, hours=st.integers(min_value=0, max_value=10**6))
def test_identifiers_are_deterministic_short_and_name_their_hour(customer: str, meter: str, hours: int) -> None:
    hour = datetime(2020, 1, 1, tzinfo=UTC) + hours * HOUR
    first = identifier("metering-production", customer, meter, hour)
    assert first == identifier("metering-production", customer, meter, hour + timedelta(minutes=30))
    assert len(first) <= MAX_IDENTIFIER_LENGTH
    assert f"-{hour:%Y%m%dT%H}Z-" in first


@given(a=st.tuples(texts, texts, st.integers(0, 10**5)), b=st.tuples(texts, texts, st.integers(0, 10**5)))
def test_identifiers_differ_for_any_other_customer_meter_or_hour(
    a: tuple[str, str, int], b: tuple[str, str, int]
) -> None:
    if a == b:
        return
    epoch = datetime(2020, 1, 1, tzinfo=UTC)
    assert identifier("m", a[0], a[1], epoch + a[2] * HOUR) != identifier("m", b[0], b[1], epoch + b[2] * HOUR)


def test_a_separator_inside_an_id_cannot_make_two_pairs_collide() -> None:
    assert identifier("m", "a", "b_c", h(1)) != identifier("m", "a_b", "c", h(1))


# -- whole units, carried fractions ---------------------------------------------


def test_fractions_are_carried_forward_exactly() -> None:
    usage = [HourUsage(h(1), D("1.2")), HourUsage(h(2), D("0.5")), HourUsage(h(3), D("1.3"))]
    steps = plan_steps(Progress(None), exported_range_total=D(0), usage=usage, closed_before=h(4), now=NOW)
    assert [s.units for s in steps] == [1, 0, 2]  # 1.2 -> 1; 1.7 -> 1 (nothing due); 3.0 -> 3
    assert steps[-1].progress == Progress(h(4), D("3.0"), D(0), 3)


def test_open_hours_and_hours_already_exported_are_left_alone() -> None:
    usage = [HourUsage(h(1), D(5)), HourUsage(h(2), D(7)), HourUsage(h(3), D(9))]
    progress = Progress(h(2), D(5), D(0), 5)
    steps = plan_steps(progress, exported_range_total=D(5), usage=usage, closed_before=h(3), now=NOW)
    assert steps == [Step(h(2), Progress(h(3), D(12), D(0), 12), 7)]


def test_a_late_event_in_a_reported_hour_goes_with_the_next_hour() -> None:
    progress = Progress(h(2), D(5), D(0), 5)
    usage = [HourUsage(h(3), D(2))]
    steps = plan_steps(progress, exported_range_total=D(8), usage=usage, closed_before=h(4), now=NOW)
    assert steps == [Step(h(3), Progress(h(4), D(10), D(0), 10), 5)]  # 2 of hour 3 and 3 late


def test_a_late_event_without_later_usage_goes_with_the_last_closed_hour() -> None:
    progress = Progress(h(2), D(5), D(0), 5)
    steps = plan_steps(progress, exported_range_total=D("6.5"), usage=[], closed_before=h(6), now=NOW)
    assert steps == [Step(h(5), Progress(h(6), D("6.5"), D(0), 6), 1)]
    # Until a new hour closes, its identifier would be one already used: nothing yet.
    assert plan_steps(progress, exported_range_total=D("6.5"), usage=[], closed_before=h(2), now=NOW) == []


def test_a_void_after_export_is_carried_forward_never_sent_negative() -> None:
    progress = Progress(h(2), D(5), D(0), 5)
    usage = [HourUsage(h(2), D(1)), HourUsage(h(3), D(4))]
    steps = plan_steps(progress, exported_range_total=D(2), usage=usage, closed_before=h(4), now=NOW)
    # 3 voided: hour 2 brings the total to 3 (nothing due), hour 3 to 7 (2 due).
    assert [s.units for s in steps] == [0, 2]
    assert steps[-1].progress == Progress(h(4), D(7), D(0), 7)


def test_hours_too_old_for_stripe_are_skipped_and_not_carried() -> None:
    old = NOW - timedelta(days=40)
    old_hour = old.replace(minute=0)
    usage = [HourUsage(old_hour, D("2.5")), HourUsage(h(1), D("1.75"))]
    steps = plan_steps(Progress(None), exported_range_total=D(0), usage=usage, closed_before=h(2), now=NOW)
    assert steps[0] == Step(old_hour, Progress(old_hour + HOUR, D("2.5"), D("2.5"), 0), 0, skipped=True)
    assert steps[1] == Step(h(1), Progress(h(2), D("4.25"), D("2.5"), 1), 1)


def test_an_event_abandoned_as_too_old_leaves_the_carry_where_it_was() -> None:
    before = Progress(h(1), D("3.5"), D(0), 3)
    step = Step(h(1), Progress(h(2), D("6.0"), D(0), 6), 3)
    after = abandoned(before, step)
    assert after == Progress(h(2), D("6.0"), D("2.5"), 3)
    assert after.reportable_total == before.reportable_total


quantities = st.decimals(min_value=0, max_value=1000, places=3)


@given(
    hourly=st.lists(quantities, min_size=1, max_size=30),
    late=st.lists(st.tuples(st.integers(0, 29), quantities), max_size=10),
    passes=st.lists(st.integers(1, 34), max_size=8),
)
def test_every_pass_sequence_sends_the_floor_of_the_total_once_per_hour(
    hourly: list[Decimal], late: list[tuple[int, Decimal]], passes: list[int]
) -> None:
    """Whatever the passes (closed hours advancing irregularly) and late events
    landing between them, every hour gets at most one meter event, no value is
    negative, and once every hour is closed the units sent equal the floor of
    the exact total."""
    rollups = {h(i): q for i, q in enumerate(hourly) if q}
    progress = Progress(None)
    sent: dict[datetime, int] = {}
    late_queue = list(late)
    closings = sorted([*passes, len(hourly) + 1])
    for closed in closings:
        if late_queue:  # a late event lands before this pass
            index, quantity = late_queue.pop()
            rollups[h(index % len(hourly))] = rollups.get(h(index % len(hourly)), D(0)) + quantity
        start = progress.exported_through
        exported = sum((q for hour, q in rollups.items() if start is not None and hour < start), D(0))
        usage = [HourUsage(hour, q) for hour, q in sorted(rollups.items()) if start is None or hour >= start]
        for step in plan_steps(progress, exported_range_total=exported, usage=usage, closed_before=h(closed), now=NOW):
            assert step.hour not in sent
            assert step.units >= 0
            if step.units:
                sent[step.hour] = step.units
            progress = step.progress
    for index, quantity in late_queue:  # left over: land, then two more hours close
        rollups[h(index % len(hourly))] = rollups.get(h(index % len(hourly)), D(0)) + quantity
    start = progress.exported_through
    exported = sum((q for hour, q in rollups.items() if start is not None and hour < start), D(0))
    usage = [HourUsage(hour, q) for hour, q in sorted(rollups.items()) if start is None or hour >= start]
    end = h(closings[-1] + 1)  # one more hour closes after the last pass
    for step in plan_steps(progress, exported_range_total=exported, usage=usage, closed_before=end, now=NOW):
        assert step.hour not in sent
        if step.units:
            sent[step.hour] = step.units
        progress = step.progress
    total = sum(rollups.values(), D(0))
    assert progress.accounted_total == total
    assert sum(sent.values()) == progress.sent_units == int(total // 1)


# -- the mapping file -----------------------------------------------------------

METERS = {
    "tokens": Meter("tokens", Aggregation.SUM, "token"),
    "calls": Meter("calls", Aggregation.COUNT, "call"),
    "peak": Meter("peak", Aggregation.MAX, "session"),
    "storage": Meter("storage", Aggregation.LATEST, "GB"),
    "users": Meter("users", Aggregation.UNIQUE_COUNT, "user", unique_property="user_id"),
}

GOOD = """
identifier_prefix = "metering-prod"
[meters.tokens]
event_name = "api_tokens"
[meters.calls]
event_name = "api_calls"
value_payload_key = "count"
[customers]
unlisted = "skip"
[customers.ids]
acme = "cus_NciAYcXfLnqBoz"
"""


def test_a_good_mapping() -> None:
    mapping = parse_mapping(GOOD, METERS)
    assert set(mapping.meters) == {"tokens", "calls"}
    assert mapping.meters["calls"].value_payload_key == "count"
    assert mapping.meters["tokens"].customer_payload_key == "stripe_customer_id"
    assert mapping.identifier_prefix == "metering-prod"
    assert mapping.stripe_customer("acme") == "cus_NciAYcXfLnqBoz"
    assert mapping.stripe_customer("other") is None
    assert mapping.listed_only


def test_unlisted_customers_may_use_their_own_id() -> None:
    mapping = parse_mapping(
        '[meters.tokens]\nevent_name = "t"\n[customers]\nunlisted = "same_id"\n[customers.ids]\nacme = "cus_1"\n',
        METERS,
    )
    assert mapping.unlisted is UnlistedCustomers.SAME_ID
    assert mapping.stripe_customer("acme") == "cus_1"
    assert mapping.stripe_customer("cus_Other") == "cus_Other"
    assert mapping.stripe_customer("not a stripe id") is None
    assert not mapping.listed_only


def test_every_problem_is_reported_with_its_key() -> None:
    text = """
identifier_prefix = "Bad Prefix"
colour = "blue"
[meters.peak]
event_name = "peak"
[meters.storage]
event_name = "storage"
[meters.users]
event_name = "users"
[meters.nothing]
event_name = "x"
[meters.tokens]
event_name = "has spaces"
flavour = 1
[meters.calls]
event_name = "peak"
customer_payload_key = "k"
value_payload_key = "k"
[customers]
unlisted = "maybe"
[customers.ids]
acme = 42
"""
    with pytest.raises(StripeMappingError) as caught:
        parse_mapping(text, METERS, source="stripe.toml")
    problems = caught.value.problems
    assert "identifier_prefix: 1 to 24 characters of [a-z0-9_-]" in problems
    assert "colour: unknown key" in problems
    for meter, aggregation in (("peak", "max"), ("storage", "latest"), ("users", "unique_count")):
        assert any(p.startswith(f"meters.{meter}: a {aggregation} meter cannot be reported") for p in problems)
    assert "meters.nothing: the catalog has no meter named 'nothing'" in problems
    assert "meters.tokens.event_name: 1 to 100 characters of [A-Za-z0-9_.:-]" in problems
    assert "meters.tokens.flavour: unknown key" in problems
    assert "meters.calls.event_name: 'peak' is already the event of meters.peak" in problems
    assert "meters.calls: customer_payload_key and value_payload_key must differ" in problems
    assert "customers.unlisted: 'maybe' is not one of 'skip', 'same_id'" in problems
    assert "customers.ids.acme: a Stripe customer id such as 'cus_NciAYcXfLnqBoz'" in problems
    assert "invalid Stripe mapping stripe.toml" in str(caught.value)


def test_skipping_unlisted_customers_needs_a_listed_one() -> None:
    with pytest.raises(StripeMappingError) as caught:
        parse_mapping('[meters.tokens]\nevent_name = "t"\n[customers]\nunlisted = "skip"\n', METERS)
    assert caught.value.problems == ["customers.ids: with unlisted = 'skip', list at least one customer to export"]


# -- settings --------------------------------------------------------------------


def test_the_sync_is_off_unless_configured_and_its_key_never_shown() -> None:
    assert Settings.from_env({}).stripe_file is None
    settings = Settings.from_env(
        {
            "METERING_STRIPE_FILE": "stripe.toml",
            "STRIPE_API_KEY": "sk_test_secret",
            "METERING_STRIPE_SETTLE_DELAY": "1s",
        }
    )
    assert settings.stripe_api_key == "sk_test_secret"
    assert settings.stripe_settle_delay == timedelta(seconds=1)
    assert settings.stripe_api_base == "https://api.stripe.com"
    assert "sk_test_secret" not in repr(settings)
    own = Settings.from_env(
        {"METERING_STRIPE_FILE": "s.toml", "METERING_STRIPE_API_KEY": "sk_a", "STRIPE_API_KEY": "sk_b"}
    )
    assert own.stripe_api_key == "sk_a"


def test_a_mapping_without_a_key_or_with_a_bad_base_is_refused() -> None:
    with pytest.raises(ConfigError, match="METERING_STRIPE_API_KEY"):
        Settings.from_env({"METERING_STRIPE_FILE": "stripe.toml"})
    with pytest.raises(ConfigError, match="METERING_STRIPE_API_BASE"):
        Settings.from_env({"METERING_STRIPE_API_BASE": "ftp://x"})
