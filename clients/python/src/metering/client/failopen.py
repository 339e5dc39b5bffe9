"""Fail-open balance checks: "allowed" while the service cannot answer, if the caller asks.

A balance check guards expensive work. When the metering service is down, a
caller may prefer to let the work go ahead (and record it later, with its
transaction id) rather than stop its own product: that is fail-open, off by
default (`fail_open=True` on a client or on one `check_balance` call).

Only unavailability fails open: UNAVAILABLE (nothing listens, the database is
down), DEADLINE_EXCEEDED or CANCELLED by the server, after the retries. A refusal
is an answer and is raised as always (NOT_FOUND, INVALID_ARGUMENT,
PERMISSION_DENIED, UNAUTHENTICATED, RATE_LIMITED...): a customer over its limit
is never let through by an outage of this rule. Each fail-open answer is
logged at WARNING on the `metering.client` logger, counted on the client
(`fail_open_count`), and handed to the client's `on_fail_open` hook, so that a
team can export it as a metric and alert on it (docs/clients.md shows a
Prometheus counter).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeGuard

from metering.client.errors import MeteringError, Unavailable
from metering.client.models import BalanceReport

logger = logging.getLogger("metering.client")


@dataclass(frozen=True, slots=True)
class FailOpenNotice:
    """What `on_fail_open` hears each time check_balance answered "allowed" during an outage."""

    customer_id: str
    meter_slug: str  # "" when every meter was asked about
    requested: str  # the quantity asked about, "" when none
    error: Unavailable  # the outage: code, message, attempts


def fails_open(error: MeteringError) -> TypeGuard[Unavailable]:
    """Whether a failed balance check may be answered "allowed": only when the service could
    not answer (Unavailable, after the retries), never when it refused."""
    return isinstance(error, Unavailable)


def fail_open_report(customer_id: str, now: datetime) -> BalanceReport:
    """The "allowed" answer of a fail-open check: no balances (none are known), flagged."""
    return BalanceReport(
        customer_id=customer_id, plan_slug="", balances=(), requested_allowed=True, as_of=now, fail_open=True
    )


class FailOpen:
    """One client's fail-open answers: the warning, the count and the hook, in one place."""

    def __init__(self, hook: Callable[[FailOpenNotice], None] | None) -> None:
        """Count every fail-open answer and call `hook` (if any) with its notice."""
        self._hook = hook
        self._lock = threading.Lock()  # the blocking client is shared between threads
        self._count = 0

    @property
    def count(self) -> int:
        """How many balance checks this client answered "allowed" during an outage."""
        return self._count

    def answer(self, customer_id: str, meter_slug: str, requested: str, error: Unavailable) -> BalanceReport:
        """Log, count and announce one fail-open answer; return it."""
        logger.warning(
            "check_balance failed open (answered allowed) for customer %r meter %r: %s after %d attempt(s)",
            customer_id,
            meter_slug or "*",
            error,
            error.attempts,
        )
        with self._lock:
            self._count += 1
        if self._hook is not None:
            self._hook(FailOpenNotice(customer_id, meter_slug, requested, error))
        return fail_open_report(customer_id, datetime.now(UTC))
