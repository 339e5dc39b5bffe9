"""The token bucket and the in-flight cap, with time injected (no sleeping)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.domain.rate_limits import (
    CONCURRENCY_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    CallerGate,
    CallerLimits,
    Gates,
    LimitKind,
    RateLimit,
    TokenBucket,
)

rates = st.floats(min_value=0.1, max_value=10_000, allow_nan=False)
bursts = st.integers(min_value=1, max_value=1_000)
# Gaps between successive calls, in seconds (a burst of calls at one instant included).
gaps = st.lists(st.floats(min_value=0, max_value=2, allow_nan=False), min_size=1, max_size=300)


def test_a_full_bucket_admits_its_burst_at_once_then_says_when() -> None:
    bucket = TokenBucket.full(RateLimit(per_second=10, burst=3), now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.1)  # one token every 100 ms
    assert bucket.take(100.05) == pytest.approx(0.05)
    assert bucket.take(100.1) == 0.0


def test_an_idle_bucket_fills_up_to_its_burst_only() -> None:
    bucket = TokenBucket.full(RateLimit(per_second=1, burst=2), now=0.0)
    assert bucket.take(0.0) == bucket.take(0.0) == 0.0
    assert bucket.take(3600.0) == bucket.take(3600.0) == 0.0  # an hour idle: still only 2
    assert bucket.take(3600.0) > 0


def test_a_clock_that_steps_back_adds_nothing() -> None:
    bucket = TokenBucket.full(RateLimit(per_second=1, burst=1), now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(10.5) == pytest.approx(0.5)


@given(rate=rates, burst=bursts, gaps=gaps)
def test_never_more_than_the_burst_plus_the_rate_over_any_interval(rate: float, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket.full(RateLimit(rate, burst), now=0.0)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            # Calls admitted in [start, admitted[j]]: j - i + 1.
            assert j - i + 1 <= burst + rate * (admitted[j] - start) + 1e-6


@given(rate=rates, burst=bursts, gaps=gaps)
def test_waiting_the_retry_delay_is_enough_and_a_refusal_spends_nothing(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket.full(RateLimit(rate, burst), now=0.0)
    now = 0.0
    for gap in gaps:
        refilled = min(burst, bucket.tokens + (now + gap - bucket.updated) * rate)
        now += gap
        wait = bucket.take(now)
        if wait > 0.0:
            assert bucket.tokens == pytest.approx(refilled) and bucket.tokens < 1.0  # nothing spent
            assert wait <= 1.0 / rate + 1e-9  # never longer than one token's refill
            now += wait
            assert bucket.take(now) == 0.0  # waiting exactly the delay is enough


@given(rate=rates, burst=bursts, duration=st.floats(min_value=1, max_value=100))
def test_a_caller_within_its_rate_is_never_refused(rate: float, burst: int, duration: float) -> None:
    bucket = TokenBucket.full(RateLimit(rate, burst), now=0.0)
    interval = 1.0 / rate
    calls = min(int(duration * rate), 2_000)
    assert all(bucket.take(k * interval) == 0.0 for k in range(calls))


def test_the_in_flight_cap_refuses_without_spending_a_token() -> None:
    gate = CallerGate.open(CallerLimits(rate=RateLimit(100, 5), max_in_flight=2), now=0.0)
    assert gate.enter(0.0) is None and gate.enter(0.0) is None
    refusal = gate.enter(0.0)
    assert refusal is not None and refusal.kind is LimitKind.CONCURRENCY
    assert refusal.retry_after == CONCURRENCY_RETRY_SECONDS
    assert gate.bucket is not None and gate.bucket.tokens == 3  # two spent, none by the refusal
    gate.leave()
    assert gate.enter(0.0) is None and gate.in_flight == 2


def test_a_rate_refusal_takes_no_slot_and_a_watch_takes_none() -> None:
    gate = CallerGate.open(CallerLimits(rate=RateLimit(1, 1), max_in_flight=1), now=0.0)
    assert gate.enter(0.0, hold=False) is None and gate.in_flight == 0
    refusal = gate.enter(0.0)
    assert refusal is not None and refusal.kind is LimitKind.RATE and refusal.retry_after == pytest.approx(1.0)
    assert gate.in_flight == 0


def test_gates_keep_the_state_of_callers_that_stay_on_reload() -> None:
    gates = Gates()
    gates.configure({"a": CallerLimits(rate=RateLimit(1, 2), max_in_flight=5), "open": CallerLimits()}, now=0.0)
    assert gates.get("open") is None  # no limits: no gate, nothing to do per call
    gate = gates.get("a")
    assert gate is not None and gate.enter(0.0) is None and gate.enter(0.0) is None
    gates.configure({"a": CallerLimits(rate=RateLimit(1, 10), max_in_flight=2), "b": CallerLimits(max_in_flight=1)}, 0)
    assert gates.get("a") is gate and gate.in_flight == 2  # the calls in flight stay counted
    assert gate.bucket is not None and gate.bucket.tokens == 0  # what was spent stays spent
    refusal = gate.enter(0.0)
    assert refusal is not None and refusal.kind is LimitKind.CONCURRENCY  # the new cap applies at once
    assert sorted(gates.names()) == ["a", "b"]
    gates.configure({}, now=0.0)
    assert gates.get("a") is None
    gate.leave()  # a call admitted before the reload leaves its own gate


def test_limits_are_checked() -> None:
    for rate, burst in ((0, 1), (1, 0), (math.inf * 0, 1)):
        with pytest.raises(ValueError, match="rate limit"):
            RateLimit(rate, burst)
    with pytest.raises(ValueError, match="max_in_flight"):
        CallerLimits(max_in_flight=0)


@given(rate=rates, burst=bursts, callers=st.integers(1, 200))
def test_refusals_at_one_instant_are_spread_so_that_each_retry_finds_its_token(
    rate: float, burst: int, callers: int
) -> None:
    gate = CallerGate.open(CallerLimits(rate=RateLimit(rate, burst)), now=0.0)
    for _ in range(burst):
        assert gate.enter(0.0) is None
    refusals = [gate.enter(0.0) for _ in range(callers)]
    waits = [r.retry_after for r in refusals if r is not None]
    assert len(waits) == callers
    assert waits == sorted(waits) and waits[0] == pytest.approx(1.0 / rate)  # the first: the next token
    spaced = [w for w in waits if w < MAX_RETRY_SECONDS]
    assert all(b - a == pytest.approx(1.0 / rate) for a, b in itertools.pairwise(spaced))
    assert max(waits) <= max(MAX_RETRY_SECONDS, 1.0 / rate) + 1e-9
    # Every caller that comes back when told, in order, finds a token (those
    # told the longest wait may find a bucket others already emptied: capped).
    for wait in spaced:
        assert gate.enter(wait) is None


def test_concurrency_refusals_are_spread_over_the_slots() -> None:
    gate = CallerGate.open(CallerLimits(max_in_flight=4), now=0.0)
    for _ in range(4):
        assert gate.enter(0.0) is None
    waits = [refusal.retry_after for refusal in (gate.enter(0.0) for _ in range(8)) if refusal is not None]
    step = CONCURRENCY_RETRY_SECONDS / 4
    assert waits == pytest.approx([CONCURRENCY_RETRY_SECONDS + k * step for k in range(8)])
