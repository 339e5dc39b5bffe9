"""The read replica's routing rule and lag measurement (metering.ledger.replica): pure, no database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.config.settings import ConfigError, Settings
from metering.ledger.pool import is_unavailable
from metering.ledger.replica import LagTracker, Route, choose


def test_the_replica_serves_only_when_up_and_within_the_bound() -> None:
    assert choose(True, 0.0, 5.0) is Route.REPLICA
    assert choose(True, 5.0, 5.0) is Route.REPLICA
    assert choose(True, 5.01, 5.0) is Route.PRIMARY_LAG
    assert choose(True, None, 5.0) is Route.PRIMARY_LAG  # not measured yet
    assert choose(False, 0.0, 5.0) is Route.PRIMARY_REPLICA_DOWN
    assert [r.pool for r in Route] == ["replica", "primary", "primary"]


def test_lag_is_unknown_until_the_replica_has_replayed_a_noted_position() -> None:
    tracker = LagTracker()
    assert tracker.lag(10.0) is None
    tracker.primary_at(10.0, 1000)
    tracker.replica_replayed(999)
    assert tracker.lag(11.0) is None
    tracker.replica_replayed(1000)
    assert tracker.lag(11.0) == pytest.approx(1.0)


def test_a_replica_that_stops_replaying_falls_behind_with_the_clock() -> None:
    tracker = LagTracker()
    tracker.primary_at(0.0, 100)
    tracker.replica_replayed(100)
    for second in range(1, 8):  # the primary keeps writing; the replica stays at 100
        tracker.primary_at(float(second), 100 + second * 10)
        tracker.replica_replayed(100)
    assert tracker.lag(7.5) == pytest.approx(7.5)
    tracker.replica_replayed(140)  # caught up to what the primary had at t=4
    assert tracker.lag(7.5) == pytest.approx(3.5)


def test_an_idle_primary_keeps_an_up_to_date_replica_at_zero_lag() -> None:
    tracker = LagTracker()
    for second in range(100):
        tracker.primary_at(float(second), 500)  # no WAL written
        tracker.replica_replayed(500)
    assert tracker.lag(99.0) == 0.0
    assert len(tracker.pending) == 0


def test_an_idle_primary_does_not_grow_the_pending_positions() -> None:
    tracker = LagTracker()
    tracker.primary_at(0.0, 500)
    for second in range(1, 100):
        tracker.primary_at(float(second), 500)  # replica unreachable meanwhile
    assert list(tracker.pending) == [(99.0, 500)]
    tracker.replica_replayed(500)
    assert tracker.lag(99.0) == 0.0


@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 1000)), min_size=1, max_size=60),
    st.floats(0, 10),
)
def test_the_lag_never_understates_what_the_replica_misses(steps: list[tuple[int, int]], extra: float) -> None:
    """Whatever the interleaving: the primary's position only grows, the
    replica's replay only grows and never passes the primary's. The lag
    reported at `now` is at least now minus the last instant whose primary
    position the replica had replayed when it was asked."""
    tracker = LagTracker()
    primary = replayed = 0
    history: list[tuple[float, int]] = []
    now = 0.0
    for written, replay in steps:
        now += 1.0
        primary += written
        tracker.primary_at(now, primary)
        history.append((now, primary))
        replayed = min(primary, max(replayed, replay))
        tracker.replica_replayed(replayed)
    at = now + extra
    lag = tracker.lag(at)
    truly_held = [t for t, position in history if position <= replayed]
    if not truly_held:
        assert lag is None
    else:
        assert lag is not None and lag >= at - max(truly_held) - 1e-9


def test_read_replica_settings() -> None:
    settings = Settings.from_env(
        {"METERING_DATABASE_URL": "postgresql://a/db", "METERING_READ_DATABASE_URL": "postgresql://b/db"}
    )
    assert settings.read_database_url == "postgresql://b/db"
    assert settings.read_max_lag == timedelta(seconds=5)
    assert Settings.from_env({}).read_database_url is None
    with pytest.raises(ConfigError, match="METERING_READ_DATABASE_URL"):
        Settings.from_env({"METERING_READ_DATABASE_URL": "postgresql://b/db"})
    with pytest.raises(ConfigError, match="METERING_READ_MAX_LAG"):
        Settings.from_env({"METERING_READ_MAX_LAG": "0s"})


def test_a_multi_host_database_url_must_ask_for_the_primary() -> None:
    hosts = "postgresql://metering@db1:5432,db2:5432/metering"
    assert Settings.from_env({"METERING_DATABASE_URL": f"{hosts}?target_session_attrs=read-write"}).database_url
    assert Settings.from_env({"METERING_DATABASE_URL": f"{hosts}?target_session_attrs=primary"}).database_url
    assert Settings.from_env({"METERING_DATABASE_URL": "postgresql://metering@db1/metering"}).database_url
    for query in ("", "?target_session_attrs=any", "?sslmode=require"):
        with pytest.raises(ConfigError, match="target_session_attrs=read-write"):
            Settings.from_env({"METERING_DATABASE_URL": hosts + query})


def test_a_server_that_refuses_writes_is_unavailable() -> None:
    """A write that reached a standby (a host demoted by a failover) is
    UNAVAILABLE and its connection dropped, never INTERNAL."""
    import asyncpg

    assert is_unavailable(asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"))
    assert is_unavailable(asyncpg.exceptions.TargetServerAttributeNotMatched("no primary"))
    assert not is_unavailable(asyncpg.exceptions.UniqueViolationError("a bug"))
