"""A notification's type is spelled one way outside gRPC (the dotted name: webhooks file,
webhook bodies, metrics, docs) and by the enum on the watch stream; one table maps them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from metering.domain.notifications import (
    InvoiceFinalized,
    LimitRejected,
    NotificationType,
    Payload,
    Position,
    StoredNotification,
    ThresholdCrossed,
)
from metering.domain.periods import Period
from metering.v1 import notifications_pb2
from metering.wire.notifications import NOTIFICATION_TYPE_NAMES, NOTIFICATION_TYPES, notification, notification_json
from metering.wire.values import timestamp, timestamp_json

START = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD = Period(START, datetime(2026, 2, 1, tzinfo=UTC))
PAYLOADS: dict[str, Payload] = {
    "usage.threshold_crossed": ThresholdCrossed(
        "tokens", "pro", "token", PERIOD, Decimal(80), Decimal(80), Decimal(100), Decimal(0), Decimal(100), Decimal(80)
    ),
    "usage.limit_rejected": LimitRejected(
        "tokens", "pro", "token", PERIOD, Decimal(100), Decimal(5), Decimal(7), "txn-1"
    ),
    "invoice.finalized": InvoiceFinalized(str(uuid.uuid4()), 3, PERIOD, Decimal("12.50"), "USD"),
}


def stored(payload: Payload) -> StoredNotification:
    return StoredNotification(uuid.uuid4(), "acme", START, Position(42, 7), payload)


def test_the_table_maps_every_type_both_ways() -> None:
    unspecified = notifications_pb2.NOTIFICATION_TYPE_UNSPECIFIED
    descriptor = notifications_pb2.DESCRIPTOR.enum_types_by_name["NotificationType"]
    enum_values = {notifications_pb2.NotificationType.Value(value.name) for value in descriptor.values}
    assert set(NOTIFICATION_TYPES) == set(NotificationType)
    assert set(NOTIFICATION_TYPES.values()) == enum_values - {unspecified}
    assert set(NOTIFICATION_TYPE_NAMES) == enum_values - {unspecified}
    assert set(NOTIFICATION_TYPE_NAMES.values()) == set(NotificationType)
    assert unspecified not in NOTIFICATION_TYPE_NAMES


@pytest.mark.parametrize("dotted", sorted(PAYLOADS))
def test_a_webhook_body_names_its_type_as_the_webhooks_file_does(dotted: str) -> None:
    item = stored(PAYLOADS[dotted])
    body = json.loads(notification_json(item, "n2_cursor"))
    assert body["type"] == dotted
    assert NotificationType(body["type"]) is item.type  # what an endpoint subscribes with
    # The rest is the Notification's proto3 JSON; the watch stream keeps the enum.
    assert body["id"] == str(item.notification_id) and body["customerId"] == "acme"
    assert body["cursor"] == "n2_cursor"
    assert notification(item, "n2_cursor").type == NOTIFICATION_TYPES[item.type]


def through_the_message(item: StoredNotification, cursor: str) -> str:
    """The webhook body as json_format writes it: what notification_json's direct path must equal."""
    body = json_format.MessageToDict(notification(item, cursor))
    body["type"] = item.type.value
    return json.dumps(body, separators=(",", ":"))


_zones = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
# hypothesis takes naive bounds, and puts the zone on
_times = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1), timezones=_zones)  # noqa: DTZ001
_texts = st.text(max_size=8)  # "" included: proto3 JSON leaves empty strings out
_amounts = st.builds(lambda digits, places: Decimal(digits).scaleb(-places), st.integers(0, 10**15), st.integers(0, 9))
_periods = st.builds(Period, _times, st.none() | _times)
_usage_payloads = st.one_of(
    st.builds(
        ThresholdCrossed, _texts, _texts, _texts, _periods, _amounts, _amounts, _amounts, _amounts, _amounts, _amounts
    ),
    st.builds(LimitRejected, _texts, _texts, _texts, _periods, _amounts, _amounts, _amounts, _texts),
)


@given(st.uuids(), _texts, _times, _usage_payloads, _texts)
def test_a_usage_webhook_body_is_the_messages_proto3_json_byte_for_byte(
    notification_id: uuid.UUID, customer_id: str, created_at: datetime, payload: Payload, cursor: str
) -> None:
    item = StoredNotification(notification_id, customer_id, created_at, Position(1, 2), payload)
    assert notification_json(item, cursor) == through_the_message(item, cursor)


@pytest.mark.parametrize("dotted", sorted(PAYLOADS))
def test_every_webhook_body_is_the_messages_proto3_json(dotted: str) -> None:
    item = stored(PAYLOADS[dotted])
    assert notification_json(item, "n2_cursor") == through_the_message(item, "n2_cursor")


@given(_times)
def test_a_timestamps_json_is_json_formats(value: datetime) -> None:
    assert timestamp_json(value) == timestamp(value).ToJsonString()
