"""Fair sharing between callers: a token bucket and a cap on calls in flight (pure).

Each caller with limits in the auth file gets one `CallerGate` per process:
a call is admitted if the caller has fewer than `max_in_flight` calls running
and its bucket holds a token; otherwise it is refused with how long to wait.
Time is injected (seconds of a monotonic clock), so every rule here is tested
without sleeping. The limits are per process: with N worker processes or
replicas a caller may get up to N times its configured rate (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

# A refusal for concurrency has no refill to wait for: a call in flight ends
# when it ends. Suggest a short wait (about one typical call).
CONCURRENCY_RETRY_SECONDS = 0.05
# The longest wait a refusal suggests (see CallerGate: refusals are spread).
MAX_RETRY_SECONDS = 2.0
# Float rounding: a caller that waited exactly the delay it was told finds its token.
_EPSILON = 1e-9


class LimitKind(StrEnum):
    RATE = "rate"  # the token bucket was empty
    CONCURRENCY = "concurrency"  # max_in_flight calls were already running


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: `per_second` tokens added per second, at most `burst` held."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not self.per_second > 0 or not self.burst >= 1:
            raise ValueError("a rate limit needs per_second > 0 and burst >= 1")


@dataclass(frozen=True, slots=True)
class CallerLimits:
    """What the auth file allows one caller; None: no such limit."""

    rate: RateLimit | None = None
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")


@dataclass(slots=True)
class TokenBucket:
    """Starts full. `take(now)` spends one token, or says how long until one is there."""

    limit: RateLimit
    tokens: float
    updated: float  # the `now` of the last refill

    @classmethod
    def full(cls, limit: RateLimit, now: float) -> TokenBucket:
        return cls(limit, limit.burst, now)

    def _refill(self, now: float) -> None:
        if now > self.updated:  # a clock that stepped back adds nothing
            self.tokens = min(self.limit.burst, self.tokens + (now - self.updated) * self.limit.per_second)
            self.updated = now

    def take(self, now: float) -> float:
        """0.0 when a token was spent; else the seconds until one will be there (nothing spent)."""
        self._refill(now)
        if self.tokens >= 1.0 - _EPSILON:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.limit.per_second

    def reconfigure(self, limit: RateLimit, now: float) -> None:
        """New limits from a reloaded file: what was spent stays spent, capped at the new burst."""
        self._refill(now)
        self.limit = limit
        self.tokens = min(self.tokens, limit.burst)


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: LimitKind
    retry_after: float  # seconds
    limits: CallerLimits


@dataclass(slots=True)
class CallerGate:
    """One caller's admission state in this process.

    Refusals are spread: a refusal costs the service an RPC, about as much as
    an admitted call, so a caller refused by many calls at once must not be
    told to come back at one instant (they would all be refused again). Each
    refusal gets the next free retry slot, one token's refill (or, without a
    rate, a concurrency wait shared by max_in_flight) after the previous one,
    so that a caller that waits as told comes back at about its own rate.
    The wait is at least what the limit itself needs and at most
    MAX_RETRY_SECONDS."""

    limits: CallerLimits
    bucket: TokenBucket | None
    in_flight: int = 0
    retry_slot: float = 0.0  # the `now` of the next retry slot free to hand out

    @classmethod
    def open(cls, limits: CallerLimits, now: float) -> CallerGate:
        bucket = None if limits.rate is None else TokenBucket.full(limits.rate, now)
        return cls(limits, bucket)

    def enter(self, now: float, *, hold: bool = True) -> Refusal | None:
        """Admit one call (then `leave()` when it ends), or refuse it without
        changing anything. `hold=False`: only the rate applies, no slot is taken."""
        cap = self.limits.max_in_flight
        if hold and cap is not None and self.in_flight >= cap:
            return self._refuse(LimitKind.CONCURRENCY, CONCURRENCY_RETRY_SECONDS, now)
        if self.bucket is not None:
            wait = self.bucket.take(now)
            if wait > 0.0:
                return self._refuse(LimitKind.RATE, wait, now)
        if hold:
            self.in_flight += 1
        return None

    def _refuse(self, kind: LimitKind, needed: float, now: float) -> Refusal:
        rate, cap = self.limits.rate, self.limits.max_in_flight
        spacing = 1.0 / rate.per_second if rate is not None else CONCURRENCY_RETRY_SECONDS / (cap or 1)
        slot = min(max(now + needed, self.retry_slot), now + max(MAX_RETRY_SECONDS, needed))
        self.retry_slot = slot + spacing
        return Refusal(kind, slot - now, self.limits)

    def leave(self) -> None:
        self.in_flight -= 1

    def reconfigure(self, limits: CallerLimits, now: float) -> None:
        """Calls in flight stay counted; a bucket keeps what it holds (capped)."""
        if limits.rate is None:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket.full(limits.rate, now)
        else:
            self.bucket.reconfigure(limits.rate, now)
        self.limits = limits


class Gates:
    """The gates of every limited caller, by caller name; rebuilt on reload
    without losing the state of callers that stay."""

    def __init__(self) -> None:
        self._by_caller: dict[str, CallerGate] = {}

    def get(self, caller: str) -> CallerGate | None:
        return self._by_caller.get(caller)

    def configure(self, limits: Mapping[str, CallerLimits], now: float) -> None:
        gates: dict[str, CallerGate] = {}
        for name, caller_limits in limits.items():
            if caller_limits.rate is None and caller_limits.max_in_flight is None:
                continue
            gate = self._by_caller.get(name)
            if gate is None:
                gate = CallerGate.open(caller_limits, now)
            else:
                gate.reconfigure(caller_limits, now)
            gates[name] = gate
        # One assignment: a call reads either the old table or the new one. A
        # call admitted by a gate that was dropped leaves that same gate.
        self._by_caller = gates

    def names(self) -> Iterable[str]:
        return self._by_caller.keys()
