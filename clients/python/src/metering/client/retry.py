"""When to send a call again, and how long to wait first: pure decisions.

Every RPC of metering.v1 is safe to repeat: usage carries a transaction id,
grants and reservations an idempotency key, voids and releases are idempotent,
and the rest are reads. So a call that got no answer (UNAVAILABLE, CANCELLED by
the server, DEADLINE_EXCEEDED) is sent again, byte for byte the same request,
which the ledger answers as a duplicate if the first attempt was recorded. A
refusal (any other code) is an answer and is never retried, and neither is a
call that found no service to send it to (unless the client waits for the
service: `wait_for_ready=True`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

DEFAULT_TIMEOUT = 10.0  # seconds per attempt
STREAM_CHUNK = 500  # events per RecordUsageStream message

# Codes after which the request may or may not have been carried out.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and in total time.

    The wait before retry n (n = 1 for the second attempt) is uniform in
    [0, min(max_backoff, initial_backoff * multiplier ** (n - 1))], but at least
    the RetryInfo delay the service asked for. No attempt starts once
    `total_timeout` seconds have passed since the first, and each attempt's
    deadline is cut to what is left of it.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    total_timeout: float = 30.0

    def __post_init__(self) -> None:
        """Refuse a policy that cannot work (no attempt, inverted backoff, no time)."""
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff or self.multiplier < 1:
            raise ValueError("backoff needs 0 <= initial_backoff <= max_backoff and multiplier >= 1")
        if self.total_timeout <= 0:
            raise ValueError("total_timeout must be positive")

    def backoff_ceiling(self, retry: int) -> float:
        """The upper bound of the wait before retry `retry` (1-based)."""
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))


NO_RETRIES = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """What a client's `on_retry` hears before each resend."""

    method: str
    attempt: int  # the attempt that failed, 1-based
    code: grpc.StatusCode
    delay: float  # seconds until the next attempt


# The one refusal that is retried: the caller's own rate limit (RESOURCE_EXHAUSTED
# RATE_LIMITED) wrote nothing and says when to come back (RetryInfo). Every other
# RESOURCE_EXHAUSTED (LIMIT_EXCEEDED: the customer's allowance) is final.
RETRYABLE_REASONS = frozenset({"RATE_LIMITED"})


def should_retry(code: grpc.StatusCode, *, closed_locally: bool, reason: str = "", reached: bool = True) -> bool:
    """Whether a call that ended with `code` (and ErrorInfo `reason`) is sent again
    (attempts and time aside).

    CANCELLED is retried only when the server cancelled the call: a call this
    client cancelled (its channel closed) is not wanted any more. A call that
    never reached the service (`reached=False`: no connection could be made, and
    the caller did not ask to wait for the service) is not retried either: the
    caller hears at once that the service cannot be reached.
    """
    if not reached:
        return False
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return reason in RETRYABLE_REASONS
    if code not in RETRYABLE_CODES:
        return False
    return not (code == grpc.StatusCode.CANCELLED and closed_locally)


def backoff_delay(
    policy: RetryPolicy, retry: int, *, server_delay: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry `retry` (1-based): full jitter, floored at the server's RetryInfo."""
    jittered = (rng or random).uniform(0.0, policy.backoff_ceiling(retry))
    if server_delay is not None:
        return max(jittered, min(server_delay, policy.max_backoff))
    return jittered


def next_attempt(policy: RetryPolicy, attempts_made: int, elapsed: float, delay: float) -> bool:
    """Whether another attempt fits: attempts left, and time left after the wait."""
    return attempts_made < policy.max_attempts and elapsed + delay < policy.total_timeout


def attempt_timeout(policy: RetryPolicy, call_timeout: float | None, elapsed: float) -> float:
    """The deadline of the next attempt: the per-call timeout, cut to the total budget left."""
    left = max(policy.total_timeout - elapsed, 0.001)
    return left if call_timeout is None else min(call_timeout, left)
