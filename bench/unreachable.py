"""How long the client takes to say that nothing listens (the target: <= 1 s; it took 30 s).

    .venv/bin/python bench/unreachable.py [--runs 20]

Against a port of 127.0.0.1 that this script holds bound but not listening (a
connection is refused), each run creates a client, makes one call and times it
until the client raises Unreachable: the blocking MeteringClient, the asyncio
AsyncMeteringClient, and, as the ceiling of the same run, a bare grpcio channel
making the same fail-fast call (what the client cannot beat). Default settings
(RetryPolicy(): 5 attempts within 30 s, 10 s per attempt). Prints the median and
the worst run of each and the ratio of the client's median to the bare call's;
asserts nothing. Starts no service and sends nothing beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from collections.abc import Callable

import grpc

from metering.client import AsyncMeteringClient, Connection, MeteringClient, Unreachable
from metering.v1 import metering_service_pb2_grpc, usage_pb2


def blocking_client(target: str) -> float:
    started = time.perf_counter()
    try:
        with MeteringClient(Connection(target=target)) as client:
            client.check_balance("acme")
    except Unreachable:
        return time.perf_counter() - started
    raise SystemExit(f"a call to {target} did not fail as Unreachable")


def asyncio_client(target: str) -> float:
    async def once() -> float:
        started = time.perf_counter()
        try:
            async with AsyncMeteringClient(Connection(target=target)) as client:
                await client.check_balance("acme")
        except Unreachable:
            return time.perf_counter() - started
        raise SystemExit(f"a call to {target} did not fail as Unreachable")

    return asyncio.run(once())


def bare_grpc(target: str) -> float:
    started = time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        try:
            stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id="acme"), timeout=10, wait_for_ready=False)
        except grpc.RpcError:
            return time.perf_counter() - started
    raise SystemExit(f"a call to {target} succeeded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{held.getsockname()[1]}"
        ways: dict[str, Callable[[str], float]] = {
            "MeteringClient": blocking_client,
            "AsyncMeteringClient": asyncio_client,
            "bare grpcio (ceiling)": bare_grpc,
        }
        timings = {name: [way(target) for _ in range(args.runs)] for name, way in ways.items()}
    print(f"time to report that nothing listens at {target}, {args.runs} runs each (target <= 1 s):")
    ceiling = statistics.median(timings["bare grpcio (ceiling)"])
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        print(
            f"  {name:<22} median {median * 1000:8.2f} ms  worst {max(seconds) * 1000:8.2f} ms  "
            f"x{median / ceiling:.2f} of the bare call"
        )


if __name__ == "__main__":
    main()
