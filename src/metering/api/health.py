"""Standard gRPC health (grpc.health.v1), driven by a database probe.

NOT_SERVING while the ledger database does not answer, SERVING again as soon
as it does: the service itself never needs a restart. Hence a third name,
LIVENESS_SERVICE, for orchestrators' liveness probes: SERVING from the first
probe until shutdown, whatever the database, since restarting a process
cannot bring a database back (and a restart loop would delay the recovery).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from grpc_health.v1 import health, health_pb2

from metering.ledger.customers import CustomerStore
from metering.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

METERING_SERVICE = "metering.v1.MeteringService"
# Readiness ("" and METERING_SERVICE): the database answers. Liveness: the process serves gRPC.
LIVENESS_SERVICE = "liveness"


class _EndingHealthServicer(health.aio.HealthServicer):  # type: ignore[name-defined,misc]  # no stub for aio
    """The standard servicer, whose Watch streams end when asked. They never
    end on their own: a load balancer watching health would hold every
    shutdown for the whole drain grace, its stream counted as a call in flight."""

    def __init__(self) -> None:
        super().__init__()
        self._ended = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:  # noqa: N802 - gRPC's name
        watch = asyncio.ensure_future(super().Watch(request, context))
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({watch, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            ended.cancel()
        await asyncio.gather(watch, ended, return_exceptions=True)

    def end_watches(self) -> None:
        self._ended.set()


class DatabaseHealth:
    """Drives grpc.health.v1 from a periodic database probe: NOT_SERVING while the ledger does not
    answer within the timeout, SERVING again as soon as it does, so orchestrators route around an
    outage without the service restarting."""

    def __init__(self, ledger: CustomerStore, metrics: Metrics, *, interval: timedelta, timeout: timedelta) -> None:
        self.servicer = _EndingHealthServicer()
        self._ledger = ledger
        self._metrics = metrics
        self._interval = interval.total_seconds()
        self._timeout = timeout.total_seconds()
        self._serving: bool | None = None
        self._shutting_down = False

    @property
    def serving(self) -> bool:
        """What the gRPC health says of the service (both its names answer alike):
        SERVING once the last probe reached the database, until shutdown begins.
        The HTTP edge's GET /healthz answers the same."""
        return self._serving is True and not self._shutting_down

    async def probe(self) -> bool:
        """Ping the database once and publish the result."""
        # Not asyncio.wait_for: on a timeout it waits until the cancelled ping
        # has wound down, and on a database that hangs (rather than refuses)
        # asyncpg's cancel request and connection release each wait up to the
        # timeout again, so NOT_SERVING came only after twice the timeout. The
        # cancelled ping finishes on its own, bounded by those same timeouts.
        ping = asyncio.ensure_future(self._ledger.ping())
        ping.add_done_callback(_retrieve)
        try:
            await asyncio.wait({ping}, timeout=self._timeout)
        finally:
            if not ping.done():
                ping.cancel()
        error = ping.exception() if ping.done() else TimeoutError(f"no answer within {self._timeout:g} s")
        up = error is None
        if not up and self._serving is not False:  # any failure to answer means not serving
            log.warning("database unreachable, health NOT_SERVING: %s", error)
        if up and self._serving is False:
            log.info("database reachable again, health SERVING")
        if self._serving is None:  # the first probe, before the server starts: alive from here on
            await self.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._serving = up
        self._metrics.db_up.set(1 if up else 0)
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", METERING_SERVICE):
            await self.servicer.set(service, status)
        return up

    async def run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self._interval)

    async def shutting_down(self) -> None:
        """NOT_SERVING for good: the probe no longer changes it."""
        self._shutting_down = True
        await self.servicer.enter_graceful_shutdown()

    def end_watches(self) -> None:
        """End the Watch streams (they have had NOT_SERVING), before the drain."""
        self.servicer.end_watches()


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a ping's failure as seen (a timed-out ping ends after probe returned)."""
    if not task.cancelled():
        task.exception()
