"""The `Idempotency-Key` header of plain-HTTP callers, applied to the request message.

The RPCs that create something under a caller-chosen idempotency key take it
from the header when the body has none (IDEMPOTENCY_FIELDS); the key itself is
then checked as the body's field would be (api.validation), in one place. The
same value in both is fine; a different one is INVALID_ARGUMENT with a
BadRequest field violation naming the body's field, before anything is read or
written. Other RPCs ignore the header: their ids name something that exists
(VoidUsage's transaction id, a reservation to commit or release), and a batch
carries one id per event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.message import Message

from metering.domain.errors import FieldViolation, InvalidArgument

HEADER = "idempotency-key"

# RPC name: the request field the header fills.
IDEMPOTENCY_FIELDS: Mapping[str, str] = {
    "RecordUsage": "transaction_id",
    "ReserveUsage": "reservation_id",
    "GrantCredits": "grant_id",
    "IssueCreditNote": "credit_note_id",
}


def apply_idempotency_key(method: str, request: Message, keys: Sequence[str]) -> None:
    """Put the header's key (`keys`: its values, normally one) into `request` of
    RPC `method` where the body has none; InvalidArgument where they differ."""
    field = IDEMPOTENCY_FIELDS.get(method)
    if field is None or not keys:
        return
    if len(keys) > 1:
        raise InvalidArgument([FieldViolation(field, "the Idempotency-Key header is given more than once")])
    key = keys[0].strip()
    in_body = getattr(request, field)
    if not in_body:
        setattr(request, field, key)
    elif in_body != key:
        raise InvalidArgument(
            [FieldViolation(field, f"differs from the Idempotency-Key header ({key!r}); send one, or the same in both")]
        )
