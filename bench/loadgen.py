"""Load generator: several processes, each a grpc.aio client with N calls in flight.

Every RecordUsage event carries a transaction id of its own. Responses are not
decoded (only status codes count), so the client spends its CPU on sending.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import grpc

from metering.domain.records import new_event_id
from metering.v1 import ingest_pb2, usage_pb2

RECORD = "/metering.v1.MeteringService/RecordUsage"
BATCH = "/metering.v1.MeteringService/RecordUsageBatch"
STREAM = "/metering.v1.MeteringService/RecordUsageStream"
BALANCE = "/metering.v1.MeteringService/CheckBalance"
NOOP = "/metering.bench.v1.Bench/Noop"


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    customers: int = 1  # events spread over this many customers
    events_per_call: int = 1  # >1: batch (or stream messages of this size)
    stream_messages: int = 0  # >0: a client stream of this many messages per call
    meter: str = "ai_tokens"
    customer_tag: str = ""  # names the customers (created beforehand); transaction ids use the run tag


@dataclass
class WorkerResult:
    calls: int = 0
    events: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


def customer_id(tag: str, index: int) -> str:
    return f"bench-{tag}-{index}"


def _event(scenario: Scenario, run_tag: str, worker: int, seq: int) -> usage_pb2.RecordUsageRequest:
    return usage_pb2.RecordUsageRequest(
        customer_id=customer_id(scenario.customer_tag, (worker * 7919 + seq) % scenario.customers),
        meter_slug=scenario.meter,
        quantity="1",
        transaction_id=f"{run_tag}-{worker}-{seq}",
    )


def _request(scenario: Scenario, run_tag: str, worker: int, seq: int) -> bytes:
    if scenario.method == NOOP:
        return b""
    if scenario.method == BALANCE:
        customer = customer_id(scenario.customer_tag, (worker + seq) % scenario.customers)
        return usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug=scenario.meter).SerializeToString()
    if scenario.method == BATCH:
        first = seq * scenario.events_per_call
        events = [_event(scenario, run_tag, worker, first + i) for i in range(scenario.events_per_call)]
        return ingest_pb2.RecordUsageBatchRequest(events=events).SerializeToString()
    return _event(scenario, run_tag, worker, seq).SerializeToString()


async def _worker(
    target: str,
    token: str,
    scenario: Scenario,
    run_tag: str,
    worker_base: int,
    tasks: int,
    seconds: float,
    start: Any,
) -> WorkerResult:
    result = WorkerResult()
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    identity: Callable[[bytes], bytes] = lambda raw: raw  # noqa: E731 - responses stay undecoded
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=60)
        # Every process starts its clock together, once all are connected: a
        # slow spawn (a busy machine) must not eat into the measured window.
        start.wait(timeout=120)
        deadline = time.monotonic() + seconds
        if scenario.stream_messages:
            stream_call = channel.stream_unary(
                scenario.method, request_serializer=identity, response_deserializer=identity
            )
        else:
            unary_call = channel.unary_unary(
                scenario.method, request_serializer=identity, response_deserializer=identity
            )

        async def loop(task: int) -> None:
            worker = worker_base + task
            seq = 0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    if scenario.stream_messages:
                        await stream_call(_messages(scenario, run_tag, worker, seq), timeout=60, metadata=metadata)
                        seq += scenario.stream_messages
                        events = scenario.stream_messages * scenario.events_per_call
                    else:
                        await unary_call(_request(scenario, run_tag, worker, seq), timeout=60, metadata=metadata)
                        seq += 1
                        events = scenario.events_per_call
                    result.events += events
                except grpc.aio.AioRpcError as error:
                    result.errors[error.code().name] = result.errors.get(error.code().name, 0) + 1
                    seq += 1
                result.calls += 1
                result.latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(loop(task) for task in range(tasks)))
    return result


async def _messages(scenario: Scenario, run_tag: str, worker: int, seq: int) -> AsyncIterator[bytes]:
    for message in range(scenario.stream_messages):
        first = (seq + message) * scenario.events_per_call
        events = [_event(scenario, run_tag, worker, first + i) for i in range(scenario.events_per_call)]
        yield ingest_pb2.RecordUsageStreamRequest(events=events).SerializeToString()


def _process(job: tuple[str, str, Scenario, str, int, int, float], start: Any, results: Any) -> None:
    results.put(asyncio.run(_worker(*job, start)))


@dataclass(frozen=True)
class LoadResult:
    scenario: str
    concurrency: int
    seconds: float
    calls: int
    events: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds


def run(
    target: str,
    scenario: Scenario,
    *,
    concurrency: int,
    seconds: float,
    processes: int,
    run_tag: str,
    token: str = "",
) -> LoadResult:
    """Drive `concurrency` calls in flight for `seconds`, from up to `processes`
    processes, authenticated with `token` when given (as production callers are)."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    jobs = [(target, token, scenario, run_tag, i * 10_000, share, seconds) for i, share in enumerate(shares)]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    workers = [context.Process(target=_process, args=(job, start, results)) for job in jobs]
    for worker in workers:
        worker.start()
    try:
        parts: list[WorkerResult] = [results.get(timeout=seconds + 180) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    latencies = sorted(value for part in parts for value in part.latencies)
    errors: dict[str, int] = {}
    for part in parts:
        for code, count in part.errors.items():
            errors[code] = errors.get(code, 0) + count
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return LoadResult(
        scenario=scenario.name,
        concurrency=concurrency,
        seconds=seconds,
        calls=sum(p.calls for p in parts),
        events=sum(p.events for p in parts),
        errors=errors,
        p50_ms=quantiles[49] * 1000,
        p99_ms=quantiles[98] * 1000,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# The usage_events columns that benchmarks fill with COPY, and one row of them.
COPY_COLUMNS = [
    "customer_id",
    "event_id",
    "transaction_id",
    "meter_slug",
    "price_slug",
    "requested_price_slug",
    "quantity",
    "event_time",
    "period_start",
    "recorded_at",
    "properties",
]


def copy_row(customer: str, transaction_id: str, event_time: datetime, properties: str = "{}") -> tuple[object, ...]:
    """An ai_tokens event of quantity 1, shaped as RecordUsage would store it."""
    return (
        customer,
        new_event_id(),
        transaction_id,
        "ai_tokens",
        "ai_tokens_graduated",
        None,
        Decimal(1),
        event_time,
        event_time,
        event_time,
        properties,
    )
