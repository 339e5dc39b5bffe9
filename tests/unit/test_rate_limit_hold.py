"""A RATE_LIMITED refusal held until its retry slot, within the call's deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from metering.api.auth import Authenticator
from metering.domain.errors import RateLimited


def refusal(retry_after: float) -> RateLimited:
    return RateLimited("flooder", "rate", retry_after, requests_per_second=10, burst=5, max_in_flight=None)


def held(authenticator: Authenticator, exc: RateLimited, time_remaining: float | None) -> tuple[RateLimited, float]:
    started = time.monotonic()
    answer = asyncio.run(authenticator.hold(exc, time_remaining))
    return answer, time.monotonic() - started


def test_a_refusal_is_answered_at_its_slot_with_what_is_left_to_wait() -> None:
    answer, took = held(Authenticator(None, max_hold=1.0), refusal(0.2), None)
    assert took >= 0.2
    assert answer.retry_after == pytest.approx(0.001) and answer.caller == "flooder" and answer.kind == "rate"


def test_the_hold_is_capped_and_the_rest_is_told() -> None:
    answer, took = held(Authenticator(None, max_hold=0.1), refusal(0.5), None)
    assert 0.1 <= took < 0.45  # not the 0.5 s the slot is at
    assert answer.retry_after == pytest.approx(0.4)


def test_the_refusal_leaves_before_the_calls_deadline() -> None:
    answer, took = held(Authenticator(None, max_hold=1.0), refusal(0.5), time_remaining=0.15)
    assert 0.1 <= took < 0.45  # the deadline's margin (50 ms) is kept
    assert answer.retry_after == pytest.approx(0.4)
    answer, took = held(Authenticator(None, max_hold=1.0), refusal(0.5), time_remaining=0.01)
    assert took < 0.3 and answer.retry_after == 0.5  # no time to hold: at once


def test_no_hold_when_switched_off() -> None:
    answer, took = held(Authenticator(None, max_hold=0.0), refusal(0.5), None)
    assert took < 0.3 and answer.retry_after == 0.5
