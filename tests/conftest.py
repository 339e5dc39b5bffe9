"""Shared fixtures: one real PostgreSQL database and one real service per session.

The database is METERING_TEST_DATABASE_URL's server when set (a fresh
database is created on it and dropped afterwards), else an embedded
PostgreSQL started for the session. Tests isolate their data by using
customers of their own (every table is keyed by customer).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta

# Tests fork processes (pg_ctl runs as another user, so subprocess forks rather
# than vforks) while gRPC is busy in this process; gRPC core's fork handlers
# then break the child before it execs, now and then: pg_ctl "died with
# SIGSEGV", 8 of 2,000 such forks in a reproduction died, and the parent logged
# "Bad file descriptor". The children exec at once and need no gRPC: off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from metering.runtime.embedded import EmbeddedPostgres, start_embedded
from metering.v1 import customer_pb2, metering_service_pb2_grpc
from tests.support import ServiceProcess

# Further back than the test service's backfill window (3650 days).
LONG_AGO = timedelta(days=3651)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of a PostgreSQL server on which the tests may create databases."""
    configured = os.environ.get("METERING_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    embedded = start_embedded(tmp_path_factory.mktemp("pg") / "data", delete_on_stop=True)
    try:
        yield embedded.uri("postgres")
    finally:
        embedded.stop()


@pytest.fixture
def own_database(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL of the test's own, for tests that stop or kill the server."""
    embedded = start_embedded(tmp_path / "pg", delete_on_stop=True)
    yield embedded
    embedded.server.ensure_postgres_running()  # the cleanup expects a running server
    embedded.stop()


@pytest.fixture(scope="session")
def make_database(postgres_server_url: str) -> Iterator[Callable[[], str]]:
    """Creates fresh, empty databases; drops them at the end of the session."""
    created: list[str] = []

    def make() -> str:
        name = f"metering_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return _with_database(postgres_server_url, name)

    yield make
    for name in created:
        asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture(scope="session")
def service(database_url: str) -> Iterator[ServiceProcess]:
    process = ServiceProcess(database_url).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def channel(service: ServiceProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.target) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> metering_service_pb2_grpc.MeteringServiceStub:
    return metering_service_pb2_grpc.MeteringServiceStub(channel)


@pytest.fixture(scope="session")
def new_customer(stub: metering_service_pb2_grpc.MeteringServiceStub) -> Callable[..., str]:
    """Creates a customer of this test's own on a plan; returns its id. Its
    billing anchor is `anchor`, by default further back than the test service's
    backfill window: an event before a customer's anchor is refused
    (BEFORE_FIRST_PERIOD), and tests record events at fixed past dates."""

    def create(plan: str = "limited", anchor: str | None = None) -> str:
        customer_id = f"cust-{uuid.uuid4().hex[:16]}"
        request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug=plan)
        if anchor is not None:
            request.billing_anchor_time.FromJsonString(anchor)
        else:
            request.billing_anchor_time.FromDatetime(datetime.now(UTC) - LONG_AGO)
        stub.UpsertCustomer(request, timeout=10)
        return customer_id

    return create


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
