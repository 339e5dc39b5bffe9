"""Page tokens and watch cursors: the round trip of each, and every kind of forgery refused."""

from __future__ import annotations

import base64
import string
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.api.page_tokens import NOT_OUR_CURSOR, CustomersCursor, EventsCursor, InvoicesCursor, PageTokens
from metering.domain.errors import InvalidArgument, InvalidPageToken
from metering.domain.notifications import Position
from metering.services.reporting import PageCursor
from metering.v1 import customer_pb2, events_pb2, invoices_pb2, usage_pb2

KEY = bytes(range(32))
TOKENS = PageTokens(KEY)
NOW = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)


def usage_request(customer: str = "acme") -> usage_pb2.GetUsageRequest:
    return usage_pb2.GetUsageRequest(customer_id=customer, meter_slugs=["tokens", "calls"], group_by=["model"])


def open_usage(tokens: PageTokens, request: usage_pb2.GetUsageRequest, token: str) -> PageCursor:
    return tokens.usage_cursor(request, token, meters=2, groups=1, max_windows=10_000)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_each_listing_round_trips() -> None:
    usage = usage_request()
    cursor = PageCursor(meter_index=1, window_index=42, groups=("small",), now=NOW)
    assert open_usage(TOKENS, usage, TOKENS.usage(usage, cursor)) == cursor
    events = events_pb2.ListUsageEventsRequest(customer_id="acme", meter_slug="tokens")
    after = EventsCursor(NOW, "0190a1b2-0000-7000-8000-000000000001")
    assert TOKENS.events_cursor(events, TOKENS.events(events, after)) == after
    invoices = invoices_pb2.ListInvoicesRequest(customer_id="acme")
    before = InvoicesCursor(NOW)
    assert TOKENS.invoices_cursor(invoices, TOKENS.invoices(invoices, before)) == before


def test_the_page_size_may_change_between_pages() -> None:
    request = usage_request()
    cursor = PageCursor(0, 3, ("big",), NOW)
    token = TOKENS.usage(request, cursor)
    request.page_size, request.page_token = 7, token
    assert open_usage(TOKENS, request, token) == cursor


@given(
    meter=st.integers(0, 1),
    window=st.integers(0, 10_000),
    group=st.text(max_size=40),
    # hypothesis takes naive bounds and adds the time zone itself
    now=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),  # noqa: DTZ001
)
def test_any_usage_cursor_round_trips(meter: int, window: int, group: str, now: datetime) -> None:
    request = usage_request()
    cursor = PageCursor(meter, window, (group,), now)
    assert open_usage(TOKENS, request, TOKENS.usage(request, cursor)) == cursor


def refused(open_token: Callable[[], object]) -> str:
    with pytest.raises(InvalidPageToken) as caught:
        open_token()
    return str(caught.value)


@given(position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_any_altered_byte_is_refused(position: int, flip: int) -> None:
    request = usage_request()
    raw = bytearray(unb64(TOKENS.usage(request, PageCursor(0, 1, ("a",), NOW))))
    raw[position % len(raw)] ^= flip
    assert "not a page token issued by this service" in refused(lambda: open_usage(TOKENS, request, b64(bytes(raw))))


@given(keep=st.integers(min_value=0))
def test_a_truncated_token_is_refused(keep: int) -> None:
    request = usage_request()
    token = TOKENS.usage(request, PageCursor(0, 1, ("a",), NOW))
    cut = token[: keep % len(token)]
    refused(lambda: open_usage(TOKENS, request, cut))


def test_a_token_signed_with_another_key_is_refused() -> None:
    request = usage_request()
    theirs = PageTokens(bytes(32)).usage(request, PageCursor(0, 1, ("a",), NOW))
    assert "not a page token issued by this service" in refused(lambda: open_usage(TOKENS, request, theirs))


def test_a_token_of_another_customer_is_refused() -> None:
    token = TOKENS.usage(usage_request("acme"), PageCursor(0, 1, ("a",), NOW))
    assert "different query" in refused(lambda: open_usage(TOKENS, usage_request("globex"), token))


def test_a_token_of_another_query_is_refused() -> None:
    token = TOKENS.usage(usage_request(), PageCursor(0, 1, ("a",), NOW))
    other = usage_request()
    other.time_zone = "Europe/Berlin"
    assert "different query" in refused(lambda: open_usage(TOKENS, other, token))


def test_a_token_of_another_listing_is_refused() -> None:
    # Same customer, same (empty) filters: only the listing differs.
    events = events_pb2.ListUsageEventsRequest(customer_id="acme")
    invoices = invoices_pb2.ListInvoicesRequest(customer_id="acme")
    token = TOKENS.events(events, EventsCursor(NOW, "0190a1b2-0000-7000-8000-000000000001"))
    refused(lambda: TOKENS.invoices_cursor(invoices, token))
    refused(lambda: open_usage(TOKENS, usage_pb2.GetUsageRequest(customer_id="acme"), token))


@pytest.mark.parametrize(
    "token",
    ["", "x", "====", "not-a-token", b64(b"\x01" + bytes(40)), b64(b"\x02" + bytes(32)), "A" * 5000, "é"],
)
def test_garbage_is_refused(token: str) -> None:
    refused(lambda: open_usage(TOKENS, usage_request(), token))


@pytest.mark.parametrize(
    "cursor",
    [
        {"m": 2, "w": 0, "g": ["a"], "now": NOW.isoformat()},  # past the request's meters
        {"m": 0, "w": 10_001, "g": ["a"], "now": NOW.isoformat()},
        {"m": True, "w": 0, "g": ["a"], "now": NOW.isoformat()},
        {"m": 0, "w": 0, "g": [], "now": NOW.isoformat()},  # another number of groups
        {"m": 0, "w": 0, "g": [1], "now": NOW.isoformat()},
        {"m": 0, "w": 0, "g": ["a"], "now": "2026-05-01T12:30:00"},  # naive
        {"m": 0, "w": 0, "g": ["a"], "now": "0001-01-01T00:00:00+14:00"},
        {"m": 0, "w": 0, "g": ["a"]},
    ],
)
def test_a_signed_cursor_with_values_out_of_range_is_refused(cursor: dict[str, object]) -> None:
    # Only a key holder can sign one; its values are checked all the same.
    request = usage_request()
    refused(lambda: open_usage(TOKENS, request, TOKENS.seal(request, cursor)))


def test_a_key_is_at_least_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PageTokens(bytes(31))


def test_a_customers_token_round_trips_and_belongs_to_its_plan_filter() -> None:
    request = customer_pb2.ListCustomersRequest(plan_slug="pro")
    cursor = CustomersCursor("cust-0042")
    token = TOKENS.customers(request, cursor)
    request.page_size, request.page_token = 5, token
    assert TOKENS.customers_cursor(request, token) == cursor
    with pytest.raises(InvalidPageToken, match="different query"):
        TOKENS.customers_cursor(customer_pb2.ListCustomersRequest(plan_slug="free"), token)
    # Another listing's token, signed with the same key, is refused too.
    invoices = invoices_pb2.ListInvoicesRequest(customer_id="cust-0042")
    refused(lambda: TOKENS.customers_cursor(request, TOKENS.invoices(invoices, InvoicesCursor(NOW))))


@pytest.mark.parametrize("after", ["", "with space", "x" * 129, "caf\u00e9", 7, None])
def test_a_signed_customers_cursor_that_is_no_customer_id_is_refused(after: object) -> None:
    request = customer_pb2.ListCustomersRequest()
    refused(lambda: TOKENS.customers_cursor(request, TOKENS.seal(request, {"after": after})))


# -- watch cursors ----------------------------------------------------------------------

POSITIONS = st.builds(Position, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
# Every character a cursor could be mistyped into: base64url's, standard
# base64's, padding, and a few others.
ALPHABET = string.ascii_letters + string.digits + "-_+/=. ~é"


def cursor_refused(cursor: str, tokens: PageTokens = TOKENS) -> None:
    with pytest.raises(InvalidArgument) as caught:
        tokens.position(cursor)
    assert not isinstance(caught.value, InvalidPageToken)  # reason INVALID_ARGUMENT, not a page token's
    assert [(v.field, v.description) for v in caught.value.violations] == [("cursor", NOT_OUR_CURSOR)]


@given(POSITIONS)
def test_a_cursor_round_trips(position: Position) -> None:
    cursor = TOKENS.cursor(position)
    assert cursor.startswith("n2_")
    assert TOKENS.position(cursor) == position


@settings(max_examples=25, deadline=None)  # each example tries every change: about 6,000 cursors
@given(POSITIONS)
def test_every_single_character_change_of_a_cursor_is_refused(position: Position) -> None:
    cursor = TOKENS.cursor(position)
    for index, original in enumerate(cursor):
        for replacement in ALPHABET:
            if replacement != original:
                cursor_refused(cursor[:index] + replacement + cursor[index + 1 :])
        cursor_refused(cursor[:index] + cursor[index + 1 :])  # and every character dropped


def test_a_cursor_of_another_key_or_a_page_token_is_refused() -> None:
    position = Position(123456789, 42)
    cursor_refused(PageTokens(bytes(range(1, 33))).cursor(position))
    cursor_refused(TOKENS.cursor(position) + "A")
    cursor_refused(TOKENS.events(events_pb2.ListUsageEventsRequest(customer_id="acme"), EventsCursor(NOW, "x")))
    # The same bytes spelled otherwise (padded, in standard base64) are not the cursor issued.
    for txid in range(200):  # positions whose spelling has padding to add, and - or _ to change
        body = TOKENS.cursor(Position(txid, 7)).removeprefix("n2_")
        padded = body + "=" * (-len(body) % 4)
        standard = body.replace("-", "+").replace("_", "/")
        for other in {padded, standard} - {body}:
            cursor_refused("n2_" + other)


@pytest.mark.parametrize(
    "cursor",
    ["", "garbage", "n2_", "n2_!!!", "n1_", "n1_!!!", "n1_MTIz", "p1_MS4y", "n1_LTEuMg", "é", "n2_" + "A" * 300],
)
def test_garbage_cursors_are_refused(cursor: str) -> None:
    cursor_refused(cursor)


def test_a_signed_body_out_of_range_or_not_canonical_is_refused() -> None:
    # Only a key holder can sign one; its values are checked all the same.
    for body in [b"9223372036854775808.1", b"1.9223372036854775808", b"01.2", b"1.02", b"1.2.3", b"-1.2", b"1"]:
        tag = TOKENS._cursor_tag(body)
        cursor_refused("n2_" + b64(tag + body))


def test_an_unsigned_cursor_of_the_previous_version_is_accepted_for_one_release() -> None:
    # Before signing: "n1_" + base64url of "<txid>.<seq>".
    assert TOKENS.position("n1_" + b64(b"123456789.42")) == Position(123456789, 42)
    cursor_refused("n1_" + b64(b"123456789.42") + "=")  # not as the earlier version wrote it
