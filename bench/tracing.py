"""What tracing costs: RecordUsage on two services of the same code and
database, one with tracing off, one exporting every span to an OTLP/gRPC
receiver in this process, in alternating rounds.

    .venv/bin/python bench/tracing.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

It creates a database of its own on that server and drops it afterwards.
Figures per round: calls/s, p50 and p99 latency, and the server's CPU per call
(user + system, from /proc), which a shared machine disturbs less than
throughput. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.*` and `bench.loadgen`

from bench.loadgen import Scenario, cpu_seconds, customer_id, run
from metering.v1 import customer_pb2, metering_service_pb2_grpc
from tests.otlp_receiver import otlp_receiver
from tests.support import ServiceProcess

RECORD = "/metering.v1.MeteringService/RecordUsage"
CUSTOMERS = 100


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server to create a database on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    name = f"bench_tracing_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(args.database_url, f'CREATE DATABASE "{name}"'))
    url = urlunsplit(urlsplit(args.database_url)._replace(path=f"/{name}"))
    try:
        with otlp_receiver() as receiver:
            services = {
                "off": ServiceProcess(url, catalog=None),
                "on": ServiceProcess(url, catalog=None, extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}),
            }
            for service in services.values():
                service.start()
            try:
                tag = uuid.uuid4().hex[:6]
                with grpc.insecure_channel(services["off"].target) as channel:
                    stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
                    for index in range(CUSTOMERS):
                        stub.UpsertCustomer(
                            customer_pb2.UpsertCustomerRequest(customer_id=customer_id(tag, index), plan_slug="pro"),
                            timeout=10,
                        )
                scenario = Scenario("RecordUsage", RECORD, customers=CUSTOMERS, customer_tag=tag)
                cpu_per_call: dict[str, list[float]] = {mode: [] for mode in services}
                print(f"RecordUsage, {args.concurrency} in flight, {args.rounds} rounds of {args.seconds:g} s")
                header = f"{'round':>5}  {'tracing':<7}  {'calls/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}"
                print(f"{header}  {'CPU us/call':>11}")
                for round_number in range(1, args.rounds + 1):
                    for mode, service in services.items():
                        assert service.process is not None
                        before = cpu_seconds(service.process.pid)
                        result = run(
                            service.target,
                            scenario,
                            concurrency=args.concurrency,
                            seconds=args.seconds,
                            processes=2,
                            run_tag=f"{mode}{round_number}-{uuid.uuid4().hex[:6]}",
                        )
                        cpu = (cpu_seconds(service.process.pid) - before) / max(result.calls, 1) * 1e6
                        cpu_per_call[mode].append(cpu)
                        errors = f"  errors {result.errors}" if result.errors else ""
                        print(
                            f"{round_number:>5}  {mode:<7}  {result.calls_per_second:>8.0f}  {result.p50_ms:>7.2f}  "
                            f"{result.p99_ms:>7.2f}  {cpu:>11.0f}{errors}"
                        )
                off, on = statistics.median(cpu_per_call["off"]), statistics.median(cpu_per_call["on"])
                print(f"median server CPU per call: off {off:.0f} us, on {on:.0f} us ({on / off:.2f}x)")
                print(f"spans received: {len(receiver.spans())}")
            finally:
                for service in services.values():
                    service.stop()
    finally:
        asyncio.run(_admin(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
