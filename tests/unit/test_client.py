"""metering.client without a server: backoff bounds, retry decisions, the
decoding of every refusal the server builds, what counts as unreachable, which
failures fail open, transaction ids, request values."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.api.errors import to_rpc_status
from metering.client import (
    NO_RETRIES,
    BeforeFirstPeriod,
    BillingAnchorImmutable,
    Connection,
    IdempotencyKeyConflict,
    InternalError,
    InvalidRequest,
    LimitExceeded,
    MeteringError,
    MeterNotAllowed,
    NotFound,
    PeriodClosed,
    PriceCurrencyMismatch,
    RateLimited,
    ReservationStateError,
    RetryPolicy,
    RoleRequired,
    TransactionConflict,
    Unauthenticated,
    Unavailable,
    Unreachable,
    UsageRecord,
    error_from_status,
    transaction_id_for,
)
from metering.client.errors import ErrorDetails, decode, exhausted, unreachable_cause
from metering.client.failopen import fail_open_report, fails_open
from metering.client.requests import quantity_text
from metering.client.retry import attempt_timeout, backoff_delay, next_attempt, should_retry
from metering.domain import errors as domain
from metering.domain.periods import BillingPeriod
from tests.support import ROOT

POLICY = RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=2.0, multiplier=2.0, total_timeout=10.0)


@given(retry=st.integers(min_value=1, max_value=60), seed=st.integers())
def test_backoff_is_full_jitter_under_an_exponential_ceiling(retry: int, seed: int) -> None:
    delay = backoff_delay(POLICY, retry, rng=random.Random(seed))
    ceiling = min(2.0, 0.1 * 2.0 ** (retry - 1))
    assert 0.0 <= delay <= ceiling
    assert POLICY.backoff_ceiling(retry) == ceiling


def test_backoff_ceilings_grow_then_cap_and_the_jitter_spreads() -> None:
    assert [POLICY.backoff_ceiling(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    rng = random.Random(7)
    delays = [backoff_delay(POLICY, 5, rng=rng) for _ in range(2000)]
    # Full jitter: uniform over [0, 1.6], not clustered at the ceiling.
    assert min(delays) < 0.1 and max(delays) > 1.5
    assert 0.7 < sum(delays) / len(delays) < 0.9


def test_the_servers_retry_delay_is_a_floor_capped_by_max_backoff() -> None:
    rng = random.Random(1)
    assert all(backoff_delay(POLICY, 1, server_delay=1.0, rng=rng) == 1.0 for _ in range(50))
    assert backoff_delay(POLICY, 1, server_delay=60.0, rng=rng) == 2.0


def test_attempts_are_bounded_in_number_and_in_total_time() -> None:
    assert next_attempt(POLICY, 5, elapsed=1.0, delay=0.5)
    assert not next_attempt(POLICY, 6, elapsed=1.0, delay=0.5)  # max_attempts made
    assert not next_attempt(POLICY, 2, elapsed=9.8, delay=0.5)  # the wait would pass total_timeout
    assert attempt_timeout(POLICY, 3.0, elapsed=1.0) == 3.0
    assert attempt_timeout(POLICY, 3.0, elapsed=8.5) == pytest.approx(1.5)  # cut to what is left
    assert attempt_timeout(POLICY, None, elapsed=4.0) == pytest.approx(6.0)


def test_only_unanswered_calls_are_retried() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        assert should_retry(code, closed_locally=False)
    # A call this client cancelled (its channel closed) is not wanted any more.
    assert not should_retry(grpc.StatusCode.CANCELLED, closed_locally=True)
    assert should_retry(grpc.StatusCode.UNAVAILABLE, closed_locally=True)
    for code in grpc.StatusCode:
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            assert not should_retry(code, closed_locally=False), code


def test_of_the_refusals_only_the_callers_own_rate_limit_is_retried() -> None:
    # RATE_LIMITED wrote nothing and says when to come back; LIMIT_EXCEEDED is the
    # customer's allowance, final until something changes.
    assert should_retry(grpc.StatusCode.RESOURCE_EXHAUSTED, closed_locally=False, reason="RATE_LIMITED")
    assert not should_retry(grpc.StatusCode.RESOURCE_EXHAUSTED, closed_locally=False, reason="LIMIT_EXCEEDED")
    assert not should_retry(grpc.StatusCode.RESOURCE_EXHAUSTED, closed_locally=False)
    assert not should_retry(grpc.StatusCode.INVALID_ARGUMENT, closed_locally=False, reason="RATE_LIMITED")


def test_a_rate_limit_past_the_last_retry_is_raised_as_itself() -> None:
    details = ErrorDetails(
        reason="RATE_LIMITED", metadata={"limit": "rate"}, field_violations=(), retry_delay=0.25, messages={}
    )
    refused = decode(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited", details)
    assert isinstance(refused, RateLimited)
    assert refused.limit == "rate" and refused.retry_after == 0.25
    assert exhausted(refused, 5) is refused
    nothing = ErrorDetails(reason="", metadata={}, field_violations=(), retry_delay=None, messages={})
    lost = exhausted(decode(grpc.StatusCode.UNAVAILABLE, "down", nothing), 5)
    assert isinstance(lost, Unavailable) and lost.attempts == 5


def test_a_call_that_never_reached_the_service_is_not_retried() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert not should_retry(code, closed_locally=False, reached=False)
    assert should_retry(grpc.StatusCode.UNAVAILABLE, closed_locally=False, reached=True)


# What gRPC core (grpcio 1.85) says when a fail-fast call finds no connection; the
# integration test test_client_reach.py checks the first one against a real socket.
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: "
    "Failed to connect to remote host: Connection refused"
)
UNRESOLVED = (
    "errors resolving nosuchhost.invalid:50051: [field:hostname lookup error:address lookup failed for "
    "nosuchhost.invalid:50051: Domain name not found]"
)


def test_only_a_call_that_found_no_connection_is_unreachable() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert unreachable_cause(unavailable, REFUSED) == "connection refused"
    assert unreachable_cause(unavailable, UNRESOLVED) == "the name does not resolve"
    assert unreachable_cause(unavailable, "failed to connect to all addresses; last error: UNKNOWN: odd") == "odd"
    # The service's own UNAVAILABLE (its database is down), a connection lost mid-call, or
    # another code: the call reached the service, and is retried as before.
    assert unreachable_cause(unavailable, "the database is unavailable; retry later") is None
    assert unreachable_cause(unavailable, "Socket closed") is None
    assert unreachable_cause(grpc.StatusCode.DEADLINE_EXCEEDED, REFUSED) is None
    error = Unreachable("127.0.0.1:50051", "connection refused")
    assert str(error) == "cannot reach metering at 127.0.0.1:50051: connection refused" == error.message
    assert isinstance(error, Unavailable) and error.code == grpc.StatusCode.UNAVAILABLE and error.attempts == 1


def test_only_an_outage_fails_open_never_a_refusal() -> None:
    nothing = ErrorDetails(reason="", metadata={}, field_violations=(), retry_delay=None, messages={})
    outages = [
        _decoded(domain.DatabaseUnavailable()),
        Unreachable("127.0.0.1:50051", "connection refused"),
        exhausted(decode(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", nothing), 5),
        exhausted(decode(grpc.StatusCode.CANCELLED, "cancelled by the server", nothing), 5),
    ]
    assert all(fails_open(error) for error in outages)
    refusals = [
        _decoded(domain.NotFound("customer", "nobody")),
        _decoded(domain.InvalidArgument([domain.FieldViolation("requested_quantity", "not a decimal")])),
        _decoded(domain.Unauthenticated(missing=True)),
        _decoded(domain.RoleRequired("bob", "/metering.v1.MeteringService/CheckBalance", "reader")),
        _decoded(domain.MeterNotAllowed("bob", "tokens")),
        _decoded(domain.RateLimited("bob", "rate", 0.5, requests_per_second=1.0, burst=1.0, max_in_flight=None)),
        _decoded(
            domain.LimitExceeded(
                meter="tokens",
                plan="limited",
                unit="token",
                limit=Decimal(1),
                available=Decimal(0),
                requested=Decimal(1),
                period_end=None,
            )
        ),
        _decoded(RuntimeError("a bug in the service")),
    ]
    assert not any(fails_open(error) for error in refusals), [e for e in refusals if fails_open(e)]
    report = fail_open_report("acme", datetime(2026, 1, 1, tzinfo=UTC))
    assert report.fail_open and report.requested_allowed is True and report.balances == ()


def test_a_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(initial_backoff=3.0, max_backoff=1.0)
    with pytest.raises(ValueError, match="total_timeout"):
        RetryPolicy(total_timeout=0)


def _decoded(exc: BaseException) -> MeteringError:
    """The client's exception for what the server answers `exc` with."""
    return error_from_status(to_rpc_status(exc))


def test_limit_exceeded_carries_the_figures() -> None:
    error = _decoded(
        domain.LimitExceeded(
            meter="tokens",
            plan="limited",
            unit="token",
            limit=Decimal(100),
            available=Decimal("60.5"),
            requested=Decimal(61),
            period_end=datetime(2026, 2, 1, tzinfo=UTC),
        )
    )
    assert isinstance(error, LimitExceeded)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (error.meter, error.plan) == ("tokens", "limited")
    assert (error.limit, error.available, error.requested) == (Decimal(100), Decimal("60.5"), Decimal(61))
    assert error.period_end == datetime(2026, 2, 1, tzinfo=UTC)
    assert "QuotaFailure" in error.details.messages
    never_resets = _decoded(
        domain.LimitExceeded(
            meter="m",
            plan="p",
            unit="u",
            limit=Decimal(1),
            available=Decimal(0),
            requested=Decimal(1),
            period_end=None,
        )
    )
    assert isinstance(never_resets, LimitExceeded) and never_resets.period_end is None


def test_invalid_request_carries_the_field_violations() -> None:
    error = _decoded(
        domain.InvalidArgument(
            [domain.FieldViolation("quantity", "not a decimal"), domain.FieldViolation("properties.a", "too long")]
        )
    )
    assert isinstance(error, InvalidRequest)
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("quantity", "not a decimal"),
        ("properties.a", "too long"),
    ]
    page = _decoded(domain.InvalidPageToken("stale"))
    assert isinstance(page, InvalidRequest) and page.reason == "INVALID_PAGE_TOKEN"


def test_conflicts_carry_the_conflicting_fields() -> None:
    error = _decoded(domain.TransactionConflict("t1", ["quantity", "properties"], "evt-1"))
    assert isinstance(error, TransactionConflict)
    assert (error.transaction_id, error.conflicting_fields, error.original_event_id) == (
        "t1",
        ("quantity", "properties"),
        "evt-1",
    )
    grant = _decoded(domain.IdempotencyKeyConflict("grant", "g1", ["quantity"]))
    assert isinstance(grant, IdempotencyKeyConflict)
    assert (grant.kind, grant.key, grant.conflicting_fields) == ("grant", "g1", ("quantity",))
    held = _decoded(domain.IdempotencyKeyConflict("reservation", "r1", [], used_by_event=True))
    assert isinstance(held, IdempotencyKeyConflict) and (held.kind, held.key) == ("reservation", "r1")


@pytest.mark.parametrize("kind", ["customer", "meter", "price", "plan", "reservation", "event", "invoice"])
def test_not_found_names_what_is_missing(kind: str) -> None:
    error = _decoded(domain.NotFound(kind, "x-1"))
    assert isinstance(error, NotFound)
    assert (error.kind, error.name, error.code) == (kind, "x-1", grpc.StatusCode.NOT_FOUND)


def test_preconditions_are_decoded_with_their_times() -> None:
    closed = _decoded(
        domain.PeriodClosed(
            "t9",
            period=BillingPeriod(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)),
            invoice_id="inv-1",
        )
    )
    assert isinstance(closed, PeriodClosed)
    assert (closed.transaction_id, closed.invoice_id) == ("t9", "inv-1")
    assert (closed.period_start, closed.period_end) == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
    )
    early = _decoded(domain.BeforeFirstPeriod("t8", datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC)))
    assert isinstance(early, BeforeFirstPeriod)
    assert early.event_time == datetime(2025, 1, 1, tzinfo=UTC)
    assert early.billing_anchor_time == datetime(2025, 6, 1, tzinfo=UTC)
    anchor = _decoded(domain.BillingAnchorImmutable("c1", datetime(2025, 6, 1, tzinfo=UTC)))
    assert isinstance(anchor, BillingAnchorImmutable)
    assert anchor.billing_anchor_time == datetime(2025, 6, 1, tzinfo=UTC)
    currency = _decoded(domain.PriceCurrencyMismatch("eur_price", "EUR", "USD"))
    assert isinstance(currency, PriceCurrencyMismatch)
    assert (currency.price, currency.price_currency, currency.plan_currency) == ("eur_price", "EUR", "USD")
    for status in ("expired", "released", "committed"):
        state = _decoded(domain.ReservationStateError("r1", status))
        assert isinstance(state, ReservationStateError)
        assert (state.reservation_id, state.status, state.reason) == ("r1", status, f"RESERVATION_{status.upper()}")


def test_credentials_roles_outages_and_bugs() -> None:
    missing = _decoded(domain.Unauthenticated(missing=True))
    assert isinstance(missing, Unauthenticated) and missing.missing
    invalid = _decoded(domain.Unauthenticated(missing=False))
    assert isinstance(invalid, Unauthenticated) and not invalid.missing
    role = _decoded(domain.RoleRequired("bob", "/metering.v1.MeteringService/GrantCredits", "admin"))
    assert isinstance(role, RoleRequired)
    assert (role.caller, role.method, role.required_role) == (
        "bob",
        "/metering.v1.MeteringService/GrantCredits",
        "admin",
    )
    meter = _decoded(domain.MeterNotAllowed("bob", "tokens"))
    assert isinstance(meter, MeterNotAllowed) and (meter.caller, meter.meter) == ("bob", "tokens")
    outage = _decoded(domain.DatabaseUnavailable())
    assert isinstance(outage, Unavailable) and outage.details.retry_delay == 1.0
    bug = _decoded(RuntimeError("boom"))
    assert isinstance(bug, InternalError) and "boom" not in str(bug)


def test_every_reason_the_server_sends_has_a_decoder() -> None:
    from metering.client.errors import _BY_REASON
    from metering.v1 import metering_service_pb2

    sent = {
        name.removeprefix("ERROR_REASON_")
        for name in metering_service_pb2.ErrorReason.DESCRIPTOR.values_by_name
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert sent == set(_BY_REASON)


def test_transaction_ids_depend_on_the_operation_only() -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    base = transaction_id_for("acme", "tokens", Decimal("1.5"), at, {"model": "m1", "region": "eu"}, operation="job-1")
    assert len(base) == 64 and int(base, 16) >= 0
    # The same operation, written differently: the same id.
    same = [
        transaction_id_for("acme", "tokens", Decimal("1.50"), at, {"region": "eu", "model": "m1"}, operation="job-1"),
        transaction_id_for("acme", "tokens", "1.5", at, {"model": "m1", "region": "eu"}, operation="job-1"),
        transaction_id_for(
            "acme",
            "tokens",
            Decimal("1.5"),
            at.astimezone(timezone(timedelta(hours=-5))),
            {"model": "m1", "region": "eu"},
            operation="job-1",
        ),
    ]
    assert set(same) == {base}
    # Any field that differs: another id.
    others = [
        transaction_id_for("acme2", "tokens", Decimal("1.5"), at, {"model": "m1", "region": "eu"}, operation="job-1"),
        transaction_id_for("acme", "tokens2", Decimal("1.5"), at, {"model": "m1", "region": "eu"}, operation="job-1"),
        transaction_id_for("acme", "tokens", Decimal("1.6"), at, {"model": "m1", "region": "eu"}, operation="job-1"),
        transaction_id_for(
            "acme",
            "tokens",
            Decimal("1.5"),
            at + timedelta(microseconds=1),
            {"model": "m1", "region": "eu"},
            operation="job-1",
        ),
        transaction_id_for("acme", "tokens", Decimal("1.5"), at, {"model": "m2", "region": "eu"}, operation="job-1"),
        transaction_id_for("acme", "tokens", Decimal("1.5"), at, {"model": "m1", "region": "eu"}, operation="job-2"),
    ]
    assert len({base, *others}) == 7
    # Pinned: an id already in a ledger must mean the same operation after an upgrade
    # (a change of the canonical form must bump its version, and fails here).
    assert base == "ec63a6a9c8894f1ebf99b067ddce5840c62a3e69dcdaf64cfae7119359cbd752"
    with pytest.raises(ValueError, match="timezone-aware"):
        transaction_id_for("acme", "tokens", 1, datetime(2026, 3, 1), None)  # noqa: DTZ001


@given(
    customer=st.text(min_size=1, max_size=20),
    quantity=st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False),
    properties=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=4),
)
def test_transaction_ids_are_deterministic_and_printable(
    customer: str, quantity: Decimal, properties: dict[str, str]
) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    first = transaction_id_for(customer, "m", quantity, at, properties)
    assert first == transaction_id_for(customer, "m", quantity, at, dict(reversed(list(properties.items()))))
    assert len(first) == 64 and all(c in "0123456789abcdef" for c in first)


def test_quantities_go_out_as_exact_decimal_strings() -> None:
    assert quantity_text(Decimal("1E+3")) == "1000"
    assert quantity_text(Decimal("0.25")) == "0.25"
    assert quantity_text(7) == "7"
    assert quantity_text(None) == ""
    with pytest.raises(TypeError, match="float"):
        quantity_text(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        quantity_text(True)
    with pytest.raises(ValueError, match="transaction_id"):
        UsageRecord("c", "tokens", 1, transaction_id="").to_proto()
    with pytest.raises(ValueError, match="transaction_id"):
        UsageRecord("c", "tokens", 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        UsageRecord("c", "tokens", 1, "t", event_time=datetime(2026, 1, 1)).to_proto()  # noqa: DTZ001


def test_a_usage_event_names_a_meter_or_a_price_exactly() -> None:
    by_meter = UsageRecord("c", "tokens", 5, "t1").to_proto()
    assert (by_meter.meter_slug, by_meter.price_slug) == ("tokens", "")
    by_price = UsageRecord("c", price_slug="tokens_premium", quantity=5, transaction_id="t2").to_proto()
    assert (by_price.meter_slug, by_price.price_slug, by_price.quantity) == ("", "tokens_premium", "5")
    # The old spelling, an empty meter beside the price, still works.
    assert UsageRecord("c", "", 5, "t3", price_slug="tokens_premium").to_proto().price_slug == "tokens_premium"
    with pytest.raises(TypeError, match="exactly one of meter_slug and price_slug, not both"):
        UsageRecord("c", "tokens", 5, "t4", price_slug="tokens_premium")
    with pytest.raises(TypeError, match="exactly one of meter_slug and price_slug, not neither"):
        UsageRecord("c", quantity=5, transaction_id="t5")


def test_the_client_imports_without_the_servers_dependencies() -> None:
    code = (
        "import sys\n"
        "sys.modules['asyncpg'] = None  # importing it would fail\n"
        "import metering.client\n"
        "from metering.client import AsyncMeteringClient, MeteringClient, UsageRecorder\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('metering.') and not\n"
        "    m.startswith(('metering.client', 'metering.v1')))\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_cli_settings_give_the_connection() -> None:
    connection = Connection.from_env(
        {
            "METERING_TARGET": "metering.internal:443",
            "METERING_TOKEN": "secret",
            "METERING_CLIENT_TLS_CA": "/etc/ca.pem",
            "METERING_CLIENT_TLS_CERT": "/etc/me.pem",
            "METERING_CLIENT_TLS_KEY": "/etc/me.key",
            "METERING_CLIENT_TLS_SERVER_NAME": "metering",
        }
    )
    assert connection.target == "metering.internal:443"
    assert connection.metadata() == (("authorization", "Bearer secret"),)
    assert (str(connection.tls_ca), str(connection.tls_cert), str(connection.tls_key)) == (
        "/etc/ca.pem",
        "/etc/me.pem",
        "/etc/me.key",
    )
    assert connection.tls_server_name == "metering"
    plain = Connection.from_env({})
    assert (plain.target, plain.metadata(), plain.tls_ca) == ("127.0.0.1:50051", (), None)
    assert NO_RETRIES.max_attempts == 1
