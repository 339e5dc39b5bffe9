"""Notifications as written and as stored: their type follows their payload,
and a watch shows only the types and customer it asked for."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest

from metering.domain.notifications import (
    InvoiceFinalized,
    NotificationType,
    Position,
    StoredNotification,
    WatchQuery,
    invoice_finalized_notification,
)
from metering.domain.periods import Period

PERIOD = Period(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def stored(customer_id: str) -> StoredNotification:
    payload = InvoiceFinalized("inv-1", 7, PERIOD, Decimal("12.50"), "USD")
    return StoredNotification(uuid4(), customer_id, datetime(2026, 12, 2, tzinfo=UTC), Position(5, 1), payload)


def test_an_invoice_notification_is_of_its_type_and_once_per_invoice() -> None:
    new = invoice_finalized_notification("c1", "inv-1", 7, PERIOD, Decimal("12.50"), "USD")
    assert new.type is NotificationType.INVOICE_FINALIZED
    assert new.payload == InvoiceFinalized("inv-1", 7, PERIOD, Decimal("12.50"), "USD")
    again = invoice_finalized_notification("c1", "inv-1", 7, PERIOD, Decimal("12.50"), "USD")
    assert again.notification_id != new.notification_id and again.dedupe_key == new.dedupe_key
    assert stored("c1").type is NotificationType.INVOICE_FINALIZED


@pytest.mark.parametrize(
    ("types", "customer_id", "wanted"),
    [
        (frozenset(), None, {"c1", "c2"}),
        (frozenset(), "c1", {"c1"}),
        (frozenset({NotificationType.INVOICE_FINALIZED}), "c2", {"c2"}),
        (frozenset({NotificationType.THRESHOLD_CROSSED}), None, set()),
    ],
)
def test_a_watch_shows_its_types_and_customer_only(
    types: frozenset[NotificationType], customer_id: str | None, wanted: set[str]
) -> None:
    query = WatchQuery(after=None, types=types, customer_id=customer_id)
    assert {n.customer_id for n in (stored("c1"), stored("c2")) if query.wants(n)} == wanted
