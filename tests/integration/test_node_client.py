"""The Node.js example (examples/node) against a real server with tokens: the
TypeScript stubs buf generates from proto/ work with @grpc/grpc-js, and a
non-Python caller can read the google.rpc details of a refusal, and with the
repository's service config (deploy/grpc/service_config.json) its calls ride
out a restart of the service. Its Connect client (@connectrpc/connect-node,
src/connect.ts) does the same over the HTTP port, reading the 402 and 429
answers as resource_exhausted ConnectErrors with their details. Also: the
Python stubs buf.gen.yaml makes are the committed ones.

`make node-example` installs the npm packages (npm ci, only when the lock file
changed), generates the stubs with buf.gen.yaml and compiles the client with tsc,
exactly as a developer would. Without node or npm the test skips locally and
fails in CI, where the example must not go unchecked.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from google.protobuf import descriptor_pb2

from metering.domain.access import caller_entry, new_token, token_digest
from tests.faults import Replica
from tests.support import (
    ROOT,
    TEST_CATALOG,
    ServiceProcess,
    eventually,
    hold_counter,
    run_sql,
    service_waits_on_lock,
    wait_for,
)

# Slow tier: builds the Node client and runs it against services of its own.
pytestmark = pytest.mark.slow

CLIENT = ROOT / "examples" / "node" / "dist" / "src" / "client.js"
CONNECT_CLIENT = ROOT / "examples" / "node" / "dist" / "src" / "connect.js"
COMMITTED_PYTHON = ROOT / "clients" / "python" / "src" / "metering" / "v1"
BUF_PYTHON = ROOT / "gen" / "python" / "metering" / "v1"
ROLES = ("admin", "recorder", "reader")


@dataclass
class NodeClient:
    node: str
    service: ServiceProcess
    tokens: dict[str, str]  # role -> token of a caller that has only that role

    def run(self, **overrides: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "METERING_TARGET": self.service.target,
            "METERING_ADMIN_TOKEN": self.tokens["admin"],
            "METERING_RECORDER_TOKEN": self.tokens["recorder"],
            "METERING_READER_TOKEN": self.tokens["reader"],
            # The test catalog's plan `limited`: tokens limited to 100 (hard), 10 included, at 0.002 USD.
            "METERING_PLAN": "limited",
            "METERING_METER": "tokens",
            "METERING_QUANTITY": "40",
            **overrides,
        }
        env.pop("METERING_TOKEN", None)
        env.pop("METERING_TLS_CA", None)
        return subprocess.run([self.node, str(CLIENT)], env=env, capture_output=True, text=True, timeout=120)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"`{tool}` is not on PATH: the Node.js client example (examples/node) needs Node.js 20+ and npm"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message + " (CI must run this test: install Node.js on the CI machine)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, once `make node-example` has built the client (and `make stubs` run)."""
    node = _require("node")
    _require("npm")
    build = subprocess.run(
        ["make", "--no-print-directory", "node-example"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, f"make node-example failed:\n{build.stdout}\n{build.stderr}"
    assert CLIENT.is_file()
    return node


@pytest.fixture(scope="module")
def node_client(node: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeClient]:
    tokens = {role: new_token() for role in ROLES}
    auth_file = tmp_path_factory.mktemp("node-auth") / "callers.toml"
    auth_file.write_text(
        "".join(caller_entry(f"node-{role}", [role], token_digests=[token_digest(tokens[role])]) for role in ROLES)
    )
    service = ServiceProcess(database_url, extra_env={"METERING_AUTH_FILE": str(auth_file)}).start()
    try:
        yield NodeClient(node, service, tokens)
    finally:
        service.stop()


def _line(output: str, prefix: str) -> str:
    found = [line for line in output.splitlines() if line.lstrip().startswith(prefix)]
    assert found, f"no line starting with {prefix!r} in:\n{output}"
    return found[0]


@pytest.mark.timeout(600)  # its fixture builds the Node.js example (npm ci, buf): ~1 min
def test_node_client_walks_through_the_api(node_client: NodeClient) -> None:
    result = node_client.run()
    output = result.stdout
    print(output)  # shown with -rP: what a Node.js caller sees
    assert result.returncode == 0, f"exit {result.returncode}\n{output}\n{result.stderr}"
    assert "FAIL" not in output
    assert re.search(r"^OK: all \d+ expectations held$", output, re.MULTILINE), output

    assert "created=true" in _line(output, "1. UpsertCustomer (admin token)")
    recorded = _line(output, "2. RecordUsage (recorder token): 40 tokens")
    assert "duplicate=false" in recorded
    assert "price tokens_premium" in recorded

    # The refusal, read from the grpc-status-details-bin trailer by the Node client.
    assert "-> RESOURCE_EXHAUSTED: " in _line(output, "3. RecordUsage of 61 (60 available)")
    assert _line(output, "ErrorInfo reason=") == "   ErrorInfo reason=LIMIT_EXCEEDED domain=metering.v1"
    metadata = _line(output, "ErrorInfo metadata:")
    for pair in ("available=60", "limit=100", "meter=tokens", "plan=limited", "requested=61"):
        assert pair in metadata.split(), metadata
    assert "QuotaFailure subject=meter:tokens" in output

    assert "duplicate=true" in _line(output, "4. RecordUsage replay")
    assert "used=40 limit=100 available=60 percent_used=40" in _line(output, "5. CheckBalance (reader token)")

    # 40 used, 10 included: 30 billable at 0.002 USD.
    bill_line = _line(output, "line tokens (price tokens_premium, PER_UNIT)")
    assert "quantity 40, included 10, billable 30, unit 0.002" in bill_line
    assert bill_line.endswith("-> 0.06 USD")
    assert _line(output, "subtotal").endswith("total 0.06 USD")

    assert "UNAUTHENTICATED (reason CREDENTIALS_MISSING)" in _line(output, "7. CheckBalance without a token")


@pytest.fixture(scope="module")
def connect_service(node: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeClient]:
    """A service with the roles' callers and a reader limited to one call every two seconds."""
    tokens = {role: new_token() for role in (*ROLES, "throttled")}
    auth_file = tmp_path_factory.mktemp("connect-auth") / "callers.toml"
    auth_file.write_text(
        "".join(caller_entry(f"node-{role}", [role], token_digests=[token_digest(tokens[role])]) for role in ROLES)
        + caller_entry("node-throttled", ["reader"], token_digests=[token_digest(tokens["throttled"])])
        + "requests_per_second = 0.5\nburst = 1\n"
    )
    env = {"METERING_AUTH_FILE": str(auth_file), "METERING_RATE_LIMIT_HOLD": "0s"}
    service = ServiceProcess(database_url, extra_env=env).start()
    try:
        yield NodeClient(node, service, tokens)
    finally:
        service.stop()


@pytest.mark.parametrize(("http_version", "encoding"), [("1.1", "json"), ("2", "binary")])
def test_the_connect_client_records_hits_the_limit_and_is_rate_limited(
    connect_service: NodeClient, http_version: str, encoding: str
) -> None:
    tokens = connect_service.tokens
    env = {
        **os.environ,
        "METERING_HTTP_URL": connect_service.service.http_url,
        "METERING_HTTP_VERSION": http_version,
        "METERING_FORMAT": encoding,
        "METERING_ADMIN_TOKEN": tokens["admin"],
        "METERING_RECORDER_TOKEN": tokens["recorder"],
        "METERING_READER_TOKEN": tokens["reader"],
        "METERING_THROTTLED_TOKEN": tokens["throttled"],
        "METERING_PLAN": "limited",
        "METERING_METER": "tokens",
        "METERING_QUANTITY": "40",
    }
    env.pop("METERING_TOKEN", None)
    result = subprocess.run(
        [connect_service.node, str(CONNECT_CLIENT)], env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout
    print(output)  # shown with -rP: what a Connect caller in Node.js sees
    assert result.returncode == 0, f"exit {result.returncode}\n{output}\n{result.stderr}"
    assert "connect client: all checks passed" in output
    assert "duplicate=true" in _line(output, "3. replay")
    # The 402 answer, read by connect-node as a resource_exhausted ConnectError with its details.
    assert "-> ResourceExhausted: " in _line(output, "4. RecordUsage of 61 (60 available)")
    assert _line(output, "ErrorInfo reason=") == "   ErrorInfo reason=LIMIT_EXCEEDED available=60 requested=61"
    assert "QuotaFailure subject=meter:tokens" in output
    rate_limited = _line(output, "6. CheckBalance until refused")
    assert "-> ResourceExhausted: reason=RATE_LIMITED" in rate_limited
    assert re.search(r"Retry-After [12]$", rate_limited), rate_limited
    if http_version == "2":
        assert "recorded 3, failed 0" in _line(output, "5. RecordUsageStream of 3 events")


def test_node_client_fails_when_an_expectation_does_not_hold(node_client: NodeClient) -> None:
    # A reader's token where an admin's is needed: the service refuses, and the
    # client must say so and exit non-zero rather than report success.
    result = node_client.run(METERING_ADMIN_TOKEN=node_client.tokens["reader"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PERMISSION_DENIED" in result.stdout
    assert "reason ROLE_REQUIRED" in result.stdout
    assert re.search(r"^FAILED: 1 of \d+ expectations$", result.stdout, re.MULTILINE), result.stdout


def _embedded_descriptor(module: Path) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto a *_pb2.py registers, without json_name (which
    buf fills in and grpcio-tools' protoc leaves out; the wire format ignores it)."""
    calls = [
        node
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile"
    ]
    assert len(calls) == 1 and isinstance(calls[0].args[0], ast.Constant), module
    serialized = calls[0].args[0].value
    assert isinstance(serialized, bytes), module
    descriptor = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    pending = list(descriptor.message_type)
    while pending:
        message = pending.pop()
        pending.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    return descriptor


def test_buf_generates_the_committed_python_stubs(node: str) -> None:
    # `make stubs` (run by the node fixture) wrote gen/python with buf.gen.yaml;
    # clients/python/src/metering/v1 comes from scripts/gen_proto.py. Same code, so either is fine.
    committed = sorted(p.name for p in COMMITTED_PYTHON.iterdir() if p.name.endswith((".py", ".pyi")))
    generated = sorted(p.name for p in BUF_PYTHON.iterdir())
    assert generated == [name for name in committed if name != "__init__.py"]
    for name in generated:
        if name.endswith("_pb2.py"):
            assert _embedded_descriptor(BUF_PYTHON / name) == _embedded_descriptor(COMMITTED_PYTHON / name), name
        else:
            assert (BUF_PYTHON / name).read_text() == (COMMITTED_PYTHON / name).read_text(), name


def test_node_client_survives_a_service_restart_with_the_service_config(
    node: str, make_database: Callable[[], str]
) -> None:
    # The record loop of the example awaits one RecordUsage at a time and retries nothing itself:
    # deploy/grpc/service_config.json (retryPolicy, waitForReady) must carry every call across a
    # SIGKILL of the service, one of them held inside the server at the kill, and a restart.
    database_url = make_database()
    replica = Replica("node", database_url, TEST_CATALOG)
    replica.start()
    customer = f"node-restart-{uuid.uuid4().hex[:8]}"
    events = 60
    env = {
        **os.environ,
        "METERING_MODE": "record-loop",
        "METERING_TARGET": replica.target,
        "METERING_CUSTOMER": customer,
        "METERING_EVENTS": str(events),
        "METERING_INTERVAL_MS": "50",
        "METERING_CALL_TIMEOUT_MS": "30000",
    }
    for name in ("METERING_TOKEN", "METERING_TLS_CA", "METERING_SERVICE_CONFIG"):
        env.pop(name, None)
    loop = subprocess.Popen([node, str(CLIENT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(loop.stdout or []), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: any(line.startswith("event 20 ok") for line in lines), 60), "".join(lines)
        asyncio.run(_kill_with_a_call_inside(replica, database_url, customer))
        replica.start()
        loop.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
        reader.join(timeout=10)
        if loop.stdout is not None:
            loop.stdout.close()  # filterwarnings=error: an open pipe is a ResourceWarning
        replica.generations[-1].stop()
    output = "".join(lines)
    print(output)  # shown with -rP: the run that rides out the restart
    assert loop.returncode == 0, output
    assert f"record loop: {events} of {events} events recorded, 0 failed" in output
    rows = run_sql(
        database_url,
        "SELECT count(*), count(DISTINCT transaction_id) FROM usage_events WHERE customer_id = $1",
        customer,
    )
    assert tuple(rows[0]) == (events, events)


async def _kill_with_a_call_inside(replica: Replica, database_url: str, customer: str) -> None:
    """SIGKILL the service while a RecordUsage of `customer` waits inside it (its counter row locked)."""
    conn = await asyncpg.connect(database_url)
    try:
        lock = await hold_counter(conn, customer)
        assert await eventually(lambda: service_waits_on_lock(conn), 30)
        replica.kill()
        await lock.rollback()
    finally:
        await conn.close()
