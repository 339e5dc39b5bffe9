"""Transaction ids derived from the operation itself ("hash of the operation").

A caller that retries after a crash, or a second worker picking up the same
job, computes the same id from the same operation and so cannot bill it twice;
a fresh random id per attempt would. The id hashes the fields that identify
the operation, in a canonical form: the same quantity written "1.5" or "1.50",
the same instant in any time zone, properties in any order give the same id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from metering.client.requests import Quantity, quantity_text

_VERSION = "v1"  # changes only with the canonical form, which would change every id


def _canonical_quantity(value: Quantity | None) -> str:
    text = quantity_text(value)
    if not text:
        return ""
    normalized = Decimal(text).normalize()
    return format(normalized, "f")


def transaction_id_for(
    customer_id: str,
    meter_slug: str,
    quantity: Quantity | None,
    event_time: datetime,
    properties: Mapping[str, str] | None = None,
    *,
    operation: str = "",
) -> str:
    """A deterministic transaction id (64 hex digits) for one usage event.

    `event_time` is when the operation happened (timezone-aware, to the
    microsecond, as the ledger stores it); `operation` is anything else that
    tells two operations apart that could share every other field (a request
    id, a job id). Two distinct operations must differ in at least one field.
    """
    if event_time.tzinfo is None or event_time.utcoffset() is None:
        raise ValueError("event_time must be timezone-aware")
    canonical = json.dumps(
        [
            _VERSION,
            customer_id,
            meter_slug,
            _canonical_quantity(quantity),
            event_time.astimezone(UTC).isoformat(timespec="microseconds"),
            sorted((properties or {}).items()),
            operation,
        ],
        ensure_ascii=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
