"""The supervisor's restart back-off (metering.runtime.supervisor): pure rules, no process."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metering.runtime.supervisor import (
    RESTART_BASE_SECONDS,
    RESTART_MAX_SECONDS,
    STABLE_SECONDS,
    consecutive_failures,
    restart_delay,
)


def test_the_delay_doubles_from_the_base_up_to_the_cap() -> None:
    assert [restart_delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert restart_delay(1) == RESTART_BASE_SECONDS
    assert restart_delay(10_000) == RESTART_MAX_SECONDS


@given(st.integers(min_value=1, max_value=10_000))
def test_the_delay_never_shrinks_while_a_worker_keeps_dying_young(failures: int) -> None:
    assert RESTART_BASE_SECONDS <= restart_delay(failures) <= restart_delay(failures + 1) <= RESTART_MAX_SECONDS


def test_a_worker_that_served_a_while_starts_the_count_again() -> None:
    assert consecutive_failures(0, 0.1) == 1
    assert consecutive_failures(5, 0.1) == 6
    assert consecutive_failures(5, STABLE_SECONDS) == 1
