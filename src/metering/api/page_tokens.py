"""Page tokens (AIP-158) and watch cursors: their whole wire formats, in one place.

A token is base64url (unpadded) of

    version (1 byte, 2) | tag (32 bytes) | body (JSON: {"q": fingerprint, "c": cursor})

where tag = HMAC-SHA256(key, "metering page token" NUL listing NUL body), the
listing is the request message's full name (GetUsageRequest,
ListUsageEventsRequest, ListInvoicesRequest, ListCustomersRequest), and the fingerprint is a hash of
the request without page_token and page_size (customer, meters, range,
filters...). The key is one random row of the database (ledger.page_token_key),
the same for every replica.

So a token cannot be forged or altered (the tag), carried to another listing
(the listing is in the tag), or to another query or customer (the fingerprint).
Any of these is INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN. The tag is
checked before the body is parsed, so no hostile JSON is ever decoded; the
cursor's values are still checked for type and range (defence in depth, and a
token issued by a service with other limits).

A watch cursor (Notification.cursor, WatchNotificationsRequest.cursor) is an
outbox position signed with the same key:

    "n2_" + base64url (unpadded) of  tag (32 bytes) | body ("<txid>.<seq>", ASCII)

where tag = HMAC-SHA256(key, "metering watch cursor" NUL body). It belongs to
no query: one from a webhook body or a filtered watch resumes any watch. A
cursor that is not exactly one this service issued (a character changed,
truncated, forged, another encoding of the same bytes) is INVALID_ARGUMENT
with a BadRequest violation of field `cursor`, never a position elsewhere.
Unsigned cursors of earlier versions ("n1_" + base64url of the body) are
still accepted for one release (see CHANGELOG), so a consumer resumes across
a rolling upgrade; they carry no tag, and are refused from the next release.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from metering.domain.errors import FieldViolation, InvalidArgument, InvalidPageToken
from metering.domain.notifications import Position
from metering.domain.periods import MAX_TIME, MIN_TIME
from metering.services.reporting import PageCursor

VERSION = 2
KEY_BYTES = 32  # at least: HMAC-SHA256 wants a key as long as its output
_TAG_BYTES = 32
_DOMAIN = b"metering page token\x00"
# A token longer than this is not one of ours (ours: well under 1 KiB), refused before decoding.
MAX_TOKEN_CHARS = 4096
_MAX_CUSTOMER_ID = 128

NOT_OURS = "not a page token issued by this service (altered, truncated or forged)"
OTHER_QUERY = "the token belongs to a different query: resend the original fields with it"

CURSOR_PREFIX = "n2_"
LEGACY_CURSOR_PREFIX = "n1_"  # unsigned, accepted for one release
_CURSOR_DOMAIN = b"metering watch cursor\x00"
_CURSOR_BODY = re.compile(rb"(0|[1-9][0-9]{0,19})\.(0|[1-9][0-9]{0,18})\Z")
_LEGACY_CURSOR_BODY = re.compile(rb"([0-9]{1,20})\.([0-9]{1,19})\Z")
_MAX_CURSOR_CHARS = 200  # ours: under 90
_POSITION_MAX = 2**63 - 1  # txid (xid8) and seq (bigint) as PostgreSQL stores them
NOT_OUR_CURSOR = "not a notification cursor issued by this service (altered, truncated or forged)"


@dataclass(frozen=True, slots=True)
class EventsCursor:
    """Where a ListUsageEvents page ended: the last event's time and id (newest first)."""

    event_time: datetime
    event_id: str


@dataclass(frozen=True, slots=True)
class InvoicesCursor:
    """Where a ListInvoices page ended: the last period's start (newest first)."""

    before: datetime


@dataclass(frozen=True, slots=True)
class CustomersCursor:
    """Where a ListCustomers page ended: the last customer id (ascending, byte order)."""

    after: str


def fingerprint(request: Message) -> str:
    """The query a token belongs to: the request without its page_token and page_size."""
    query = type(request)()
    query.CopyFrom(request)
    query.ClearField("page_token")
    query.ClearField("page_size")
    digest = hashlib.sha256(query.SerializeToString(deterministic=True)).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class PageTokens:
    """Issues and opens the page tokens of every listing with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a page token key has at least {KEY_BYTES} bytes")
        self._key = key

    # -- issuing ----------------------------------------------------------------

    def usage(self, request: Message, cursor: PageCursor) -> str:
        fields = {"m": cursor.meter_index, "w": cursor.window_index, "g": list(cursor.groups)}
        return self.seal(request, {**fields, "now": cursor.now.isoformat()})

    def events(self, request: Message, cursor: EventsCursor) -> str:
        return self.seal(request, {"t": cursor.event_time.isoformat(), "id": cursor.event_id})

    def invoices(self, request: Message, cursor: InvoicesCursor) -> str:
        return self.seal(request, {"before": cursor.before.isoformat()})

    def customers(self, request: Message, cursor: CustomersCursor) -> str:
        return self.seal(request, {"after": cursor.after})

    def seal(self, request: Message, cursor: dict[str, Any]) -> str:
        """A token for any cursor fields (the typed methods above; tests sign hostile cursors with it)."""
        body = json.dumps({"q": fingerprint(request), "c": cursor}, separators=(",", ":")).encode()
        raw = bytes([VERSION]) + self._tag(request, body) + body
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    # -- opening ----------------------------------------------------------------

    def usage_cursor(self, request: Message, token: str, *, meters: int, groups: int, max_windows: int) -> PageCursor:
        raw = self.open(request, token)
        try:
            cursor = PageCursor(
                meter_index=_index(raw["m"], meters - 1),
                window_index=_index(raw["w"], max_windows),
                groups=tuple(_text(g) for g in _list(raw["g"])),
                now=_time(raw["now"]),
            )
        except (KeyError, TypeError, ValueError):
            raise InvalidPageToken(NOT_OURS) from None
        if len(cursor.groups) != groups:
            raise InvalidPageToken(NOT_OURS)
        return cursor

    def events_cursor(self, request: Message, token: str) -> EventsCursor:
        raw = self.open(request, token)
        try:
            return EventsCursor(_time(raw["t"]), str(uuid.UUID(_text(raw["id"]))))
        except (KeyError, TypeError, ValueError):
            raise InvalidPageToken(NOT_OURS) from None

    def invoices_cursor(self, request: Message, token: str) -> InvoicesCursor:
        raw = self.open(request, token)
        try:
            return InvoicesCursor(_time(raw["before"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidPageToken(NOT_OURS) from None

    def customers_cursor(self, request: Message, token: str) -> CustomersCursor:
        raw = self.open(request, token)
        try:
            after = _text(raw["after"])
        except (KeyError, TypeError):
            raise InvalidPageToken(NOT_OURS) from None
        # A customer id as the service accepts them (api.validation): 1 to 128 printable ASCII.
        if not 0 < len(after) <= _MAX_CUSTOMER_ID or not (after.isascii() and after.isprintable()) or " " in after:
            raise InvalidPageToken(NOT_OURS)
        return CustomersCursor(after)

    def open(self, request: Message, token: str) -> dict[str, Any]:
        """The cursor fields of a token this service issued for this listing and query."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidPageToken(NOT_OURS)
        try:
            raw = base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode("ascii"))
        except (ValueError, UnicodeError, binascii.Error):
            raise InvalidPageToken(NOT_OURS) from None
        if len(raw) <= 1 + _TAG_BYTES or raw[0] != VERSION:
            raise InvalidPageToken(NOT_OURS)
        tag, body = raw[1 : 1 + _TAG_BYTES], raw[1 + _TAG_BYTES :]
        if not hmac.compare_digest(tag, self._tag(request, body)):
            raise InvalidPageToken(NOT_OURS)
        # Signed with our key: the body is JSON of our own making (checked all the same).
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidPageToken(NOT_OURS) from None
        if not isinstance(payload, dict):
            raise InvalidPageToken(NOT_OURS)
        if payload.get("q") != fingerprint(request):
            raise InvalidPageToken(OTHER_QUERY)
        cursor = payload.get("c")
        if not isinstance(cursor, dict):
            raise InvalidPageToken(NOT_OURS)
        return cursor

    def _tag(self, request: Message, body: bytes) -> bytes:
        listing = request.DESCRIPTOR.full_name.encode()
        return hmac.new(self._key, _DOMAIN + listing + b"\x00" + body, hashlib.sha256).digest()

    # -- watch cursors ------------------------------------------------------------

    def cursor(self, position: Position) -> str:
        """The signed cursor of an outbox position (a Notification's `cursor`)."""
        body = f"{position.txid}.{position.seq}".encode()
        return CURSOR_PREFIX + _b64(self._cursor_tag(body) + body)

    def position(self, cursor: str) -> Position:
        """The position a cursor from `cursor` (or, for one release, an unsigned
        one of an earlier version) names; INVALID_ARGUMENT (field `cursor`) for
        anything else."""
        if len(cursor) <= _MAX_CURSOR_CHARS and cursor.startswith(CURSOR_PREFIX):
            raw = _canonical_b64(cursor.removeprefix(CURSOR_PREFIX))
            if raw is not None and len(raw) > _TAG_BYTES:
                tag, body = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
                match = _CURSOR_BODY.match(body)
                if hmac.compare_digest(tag, self._cursor_tag(body)) and match is not None:
                    return _position(int(match[1]), int(match[2]))
        elif len(cursor) <= _MAX_CURSOR_CHARS and cursor.startswith(LEGACY_CURSOR_PREFIX):
            raw = _canonical_b64(cursor.removeprefix(LEGACY_CURSOR_PREFIX))
            match = None if raw is None else _LEGACY_CURSOR_BODY.match(raw)
            if match is not None:
                return _position(int(match[1]), int(match[2]))
        raise _not_our_cursor()

    def _cursor_tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, _CURSOR_DOMAIN + body, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _canonical_b64(text: str) -> bytes | None:
    """The bytes of unpadded base64url `text`, or None unless `text` is
    exactly how they are written (another alphabet, padding, stray bits in the
    last character: every other spelling of the same bytes is refused)."""
    try:
        raw = base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))
    except (ValueError, UnicodeError, binascii.Error):
        return None
    return raw if _b64(raw) == text else None


def _position(txid: int, seq: int) -> Position:
    if txid > _POSITION_MAX or seq > _POSITION_MAX:
        raise _not_our_cursor()
    return Position(txid, seq)


def _not_our_cursor() -> InvalidArgument:
    return InvalidArgument([FieldViolation("cursor", NOT_OUR_CURSOR)])


# Cursor values, checked for type and range before they reach period math or a
# query parameter.


def _time(value: object) -> datetime:
    parsed = datetime.fromisoformat(_text(value))
    if parsed.tzinfo is None:
        raise ValueError("naive time in a page token")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range in a page token") from None
    if not MIN_TIME <= parsed <= MAX_TIME:  # the range of every timestamp the service accepts
        raise ValueError("time out of range in a page token")
    return parsed


def _index(value: object, maximum: int) -> int:
    # bool is an int subclass, and a float such as 1e308 or Infinity is no index.
    if type(value) is not int or not 0 <= value <= maximum:
        raise ValueError("index out of range in a page token")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("text expected in a page token")
    return value


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError("list expected in a page token")
    return value
