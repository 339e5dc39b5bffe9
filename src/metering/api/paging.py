"""Opaque page tokens (AIP-158), bound to the query that produced them.

A token carries the keyset cursor and a fingerprint of the request without
its page_token and page_size: reusing it with other filters, another range or
another customer is refused (INVALID_ARGUMENT, reason INVALID_PAGE_TOKEN)
instead of silently paging through a different result.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from google.protobuf.message import Message

from metering.errors import InvalidPageToken

_VERSION = 1


def _fingerprint(request: Message) -> str:
    query = type(request)()
    query.CopyFrom(request)
    query.ClearField("page_token")
    query.ClearField("page_size")
    return hashlib.sha256(query.SerializeToString(deterministic=True)).hexdigest()[:24]


def encode_token(request: Message, cursor: dict[str, Any]) -> str:
    payload = {"v": _VERSION, "q": _fingerprint(request), "c": cursor}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(request: Message, token: str) -> dict[str, Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(payload, dict) or payload.get("v") != _VERSION or not isinstance(payload.get("c"), dict):
            raise ValueError("unexpected shape")
    # RecursionError: json refuses arrays or objects nested deeper than the
    # interpreter's recursion limit ("[[[[..."), which a forged token can be.
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise InvalidPageToken("not a page token issued by this service") from None
    if payload.get("q") != _fingerprint(request):
        raise InvalidPageToken("the token belongs to a different query: resend the original fields with it")
    return payload["c"]  # type: ignore[no-any-return]
