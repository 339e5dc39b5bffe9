"""Timestamps and money as the wire carries them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from metering.domain.decimals import format_decimal
from metering.domain.pricing import round_money
from metering.v1 import billing_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_timestamp(message: Timestamp, value: datetime) -> None:
    """What Timestamp.FromDatetime sets (a naive value is UTC), by integer
    arithmetic; setting a field of a sub-message also marks it present."""
    message.seconds, message.nanos = timestamp_parts(value)


def timestamp_parts(value: datetime) -> tuple[int, int]:
    """The seconds and nanos of a Timestamp of `value` (set_timestamp)."""
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return delta.days * 86400 + delta.seconds, delta.microseconds * 1000


def timestamp_json(value: datetime) -> str:
    """A Timestamp of `value` in proto3 JSON, as json_format writes it (RFC 3339
    in UTC, "Z", the fraction in 0, 3, 6 or 9 digits), without the message. A
    naive value is UTC, as in set_timestamp."""
    utc = value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    text = utc.isoformat(timespec="seconds")
    micros = utc.microsecond  # a datetime's nanos are whole microseconds: never 9 digits
    if micros == 0:
        return text + "Z"
    if micros % 1_000 == 0:
        return f"{text}.{micros // 1_000:03d}Z"
    return f"{text}.{micros:06d}Z"


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    set_timestamp(stamp, value)
    return stamp


def money(amount: Decimal, currency: str) -> billing_pb2.Money:
    # Amounts are already rounded to the minor unit; this only fixes the digits
    # shown ("0" is "0.00" in USD), it never changes a value.
    shown = round_money(amount, currency)
    assert shown == amount, "money reaches the wire rounded once, at the line total"
    return billing_pb2.Money(currency_code=currency, amount=format(shown, "f"))


def exact_money(amount: Decimal, currency: str) -> billing_pb2.Money:
    """Wallet credit and burns: exact, never rounded (metering.domain.wallets), with
    at least the currency's minor-unit digits ("0.5" is "0.50" in USD)."""
    text = format_decimal(amount)
    shown = round_money(amount, currency)
    if shown == amount:  # no more digits than the minor unit: shown with all of them
        text = format(shown, "f")
    return billing_pb2.Money(currency_code=currency, amount=text)
