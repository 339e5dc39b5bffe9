"""The CPU of one webhook POST on the sending side, by HTTP client.

    .venv/bin/python bench/webhook_post.py [--posts 5000] [--concurrency 16] [--rounds 3]
                                           [--clients httpx,aiohttp,aiohttp-trust-env,sender]

A keep-alive HTTP/1.1 receiver runs in a child process (its CPU is not counted);
this process POSTs a Standard Webhooks-sized body N times, `--concurrency` at a
time, and reports this process's CPU (user + system) per POST. Clients alternate
within each round. `aiohttp-trust-env` is aiohttp looking up proxies and
~/.netrc in the environment on each request. `sender` is metering.delivery.webhooks.WebhookSender as it
is on the PYTHONPATH (the payload, signing and the POST of one notification),
so that `PYTHONPATH=<tree>/src` compares two trees' whole send.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing.connection import Connection
from typing import Any

BODY = (
    b'{"id":"6a4f1f63-44f6-4f0d-9b0a-3f3c4d6f1e2a","type":"usage.threshold_crossed",'
    b'"time":"2026-12-06T16:30:00Z","customerId":"cus_000123","cursor":"' + b"x" * 120 + b'",'
    b'"thresholdCrossed":{"meterSlug":"api_calls","planSlug":"pro","unit":"call","thresholdPercent":"80",'
    b'"used":"160","limit":"200","granted":"0","allowance":"200","percentUsed":"80.0"}}'
)


def _serve(port_out: Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_out.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Post = Callable[[], Awaitable[None]]


async def _run(post: Post, posts: int, concurrency: int) -> tuple[float, float]:
    limit = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with limit:
            await post()

    for _ in range(50):  # warm the connections
        await post()
    cpu, wall = _cpu(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(posts)))
    return (_cpu() - cpu) / posts * 1e6, (time.perf_counter() - wall) / posts * 1e6


def _headers() -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "metering-webhooks/1",
        "webhook-id": str(uuid.uuid4()),
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    }


async def _httpx(url: str, posts: int, concurrency: int) -> tuple[float, float]:
    import httpx

    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:

        async def post() -> None:
            response = await client.post(url, content=BODY, headers=_headers())
            assert response.status_code == 200

        return await _run(post, posts, concurrency)


async def _aiohttp(url: str, posts: int, concurrency: int, *, trust_env: bool = False) -> tuple[float, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",), trust_env=trust_env
    ) as session:
        from yarl import URL

        target = URL(url)

        async def post() -> None:
            async with session.post(target, data=BODY, headers=_headers(), allow_redirects=False) as response:
                assert response.status == 200

        return await _run(post, posts, concurrency)


async def _sender(url: str, posts: int, concurrency: int) -> tuple[float, float]:
    from metering.config.endpoints import Endpoint
    from metering.delivery import webhooks
    from metering.domain.notifications import (
        NotificationType,
        Position,
        StoredNotification,
        ThresholdCrossed,
    )
    from metering.domain.periods import Period

    endpoint = Endpoint(
        name="bench", url=url, secrets=("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",), types=frozenset(NotificationType)
    )
    now = datetime.now(UTC)
    stored = StoredNotification(
        notification_id=uuid.uuid4(),
        customer_id="cus_000123",
        created_at=now,
        position=Position(1, 1),
        payload=ThresholdCrossed(
            meter_slug="api_calls",
            plan_slug="pro",
            unit="call",
            period=Period(now - timedelta(days=3), now + timedelta(days=27)),
            threshold_percent=Decimal(80),
            used=Decimal(160),
            limit=Decimal(200),
            granted=Decimal(0),
            allowance=Decimal(200),
            percent_used=Decimal("80.0"),
        ),
    )
    client: Any
    if hasattr(webhooks, "make_session"):  # aiohttp
        client = webhooks.make_session(timedelta(seconds=5))
        close = client.close
    else:  # before: httpx
        import httpx

        client = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        close = client.aclose
    sender = webhooks.WebhookSender(endpoint, client, lambda position: "x" * 120)

    async def post() -> None:
        attempt = await sender.send(stored)
        assert attempt.outcome == webhooks.DELIVERED, attempt

    try:
        return await _run(post, posts, concurrency)
    finally:
        await close()


async def _aiohttp_trust_env(url: str, posts: int, concurrency: int) -> tuple[float, float]:
    return await _aiohttp(url, posts, concurrency, trust_env=True)


CLIENTS = {"httpx": _httpx, "aiohttp": _aiohttp, "aiohttp-trust-env": _aiohttp_trust_env, "sender": _sender}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="httpx,aiohttp")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    args = parser.parse_args()
    clients = args.clients.split(",")
    if "sender" in clients:
        import metering

        print("metering from", list(metering.__path__), file=sys.stderr)
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(child,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{parent.recv()}/hooks"
    results: dict[str, list[tuple[float, float]]] = {c: [] for c in clients}
    try:
        for round_ in range(args.rounds):
            order = clients if round_ % 2 == 0 else clients[::-1]
            for name in order:
                run = CLIENTS[name](url, args.posts, args.concurrency)
                if args.loop == "uvloop":
                    import uvloop

                    result = uvloop.run(run)
                else:
                    result = asyncio.run(run)
                results[name].append(result)
                print(f"round {round_ + 1} {name:8} {result[0]:7.1f} us CPU/POST {result[1]:7.1f} us wall/POST")
    finally:
        server.kill()
    print(f"\n{args.posts} POSTs x {args.rounds} rounds, concurrency {args.concurrency}, {args.loop}")
    print("| client | CPU us/POST median [range] | wall us/POST median |")
    print("|---|---|---|")
    for name in clients:
        cpus = [r[0] for r in results[name]]
        walls = [r[1] for r in results[name]]
        spread = f"{statistics.median(cpus):.0f} [{min(cpus):.0f}-{max(cpus):.0f}]"
        print(f"| {name} | {spread} | {statistics.median(walls):.0f} |")


if __name__ == "__main__":
    main()
