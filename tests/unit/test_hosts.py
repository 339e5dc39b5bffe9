"""The hosts of a multi-host URL and the order to try them in (metering.ledger.hosts): pure, no database."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from metering.config.settings import ConfigError, Settings
from metering.ledger.hosts import FORGET_AFTER, Attempt, Host, HostOrder, hosts_of, without_hosts
from metering.ledger.pool import is_unavailable


def test_the_hosts_of_a_url_in_its_authority_or_its_parameters() -> None:
    assert hosts_of("postgresql://app:pw@db1:5433,db2,[::1]:6000/m?target_session_attrs=read-write") == [
        Host("db1", 5433),
        Host("db2", None),
        Host("::1", 6000),
    ]
    assert hosts_of("postgresql://db/m") == [Host("db", None)]
    assert hosts_of("postgresql:///m?host=a,b&port=5433") == [Host("a", 5433), Host("b", 5433)]
    assert hosts_of("postgresql:///m?host=a,b&port=5433,5434") == [Host("a", 5433), Host("b", 5434)]
    assert hosts_of("postgresql:///m?host=%2Frun%2Fpg") == [Host("/run/pg", None)]
    assert hosts_of("postgresql:///m") == []
    assert hosts_of("postgresql://a,b:6000/m?port=5433") == [Host("a", 5433), Host("b", 6000)]


def test_a_url_without_its_hosts_keeps_the_rest() -> None:
    stripped = without_hosts("postgresql://app:pw@db1:5433,db2/m?target_session_attrs=read-write&sslmode=require")
    assert stripped == "postgresql://app:pw@/m?target_session_attrs=read-write&sslmode=require"
    assert without_hosts("postgresql:///m?host=a&port=1&application_name=x") == "postgresql:///m?application_name=x"


def test_without_failures_the_urls_order_stands() -> None:
    assert HostOrder(3).order(now=100.0) == [0, 1, 2]


def test_a_host_that_failed_recently_is_tried_last_until_the_failure_is_forgotten() -> None:
    order = HostOrder(3)
    order.note(0, Attempt.UNREACHABLE, now=10.0)
    assert order.order(now=10.5) == [1, 2, 0]
    assert order.order(now=10.0 + FORGET_AFTER - 0.1) == [1, 2, 0]
    assert order.order(now=10.0 + FORGET_AFTER) == [0, 1, 2]


def test_a_connection_forgets_the_hosts_failure_at_once() -> None:
    order = HostOrder(2)
    order.note(0, Attempt.UNREACHABLE, now=1.0)
    order.note(0, Attempt.CONNECTED, now=2.0)
    assert order.order(now=2.0) == [0, 1]


def test_a_standby_that_answered_goes_before_a_host_that_did_not() -> None:
    """The primary went silent, its standby answered read-only (not promoted
    yet): the standby is tried first from then on, the silent host last."""
    order = HostOrder(2)
    order.note(0, Attempt.UNREACHABLE, now=1.0)
    order.note(1, Attempt.WRONG_ROLE, now=1.01)
    assert order.order(now=2.0) == [1, 0]


def test_among_failed_hosts_the_oldest_failure_goes_first() -> None:
    order = HostOrder(3)
    order.note(2, Attempt.UNREACHABLE, now=1.0)
    order.note(0, Attempt.UNREACHABLE, now=2.0)
    assert order.order(now=3.0) == [1, 2, 0]


def test_the_connect_timeout_defaults_to_a_second_or_half_the_db_timeout() -> None:
    assert Settings.from_env({}).db_connect_timeout == timedelta(seconds=1)
    assert Settings.from_env({"METERING_DB_TIMEOUT": "500ms"}).db_connect_timeout == timedelta(milliseconds=250)
    assert Settings.from_env({"METERING_DB_CONNECT_TIMEOUT": "300ms"}).db_connect_timeout == timedelta(milliseconds=300)


@pytest.mark.parametrize("value", ["2s", "3s", "0s"])
def test_a_connect_timeout_not_under_the_db_timeout_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="METERING_DB_CONNECT_TIMEOUT"):
        Settings.from_env({"METERING_DB_TIMEOUT": "2s", "METERING_DB_CONNECT_TIMEOUT": value})


def test_rolled_back_transactions_that_may_run_again_are_unavailable() -> None:
    assert is_unavailable(asyncpg.SerializationError("conflict with recovery"))  # 40001
    assert is_unavailable(asyncpg.DeadlockDetectedError("deadlock"))  # 40P01
    assert not is_unavailable(asyncpg.TransactionIntegrityConstraintViolationError("at commit"))  # 40002
    assert not is_unavailable(asyncpg.UniqueViolationError("a bug"))  # 23505
