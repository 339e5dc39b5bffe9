"""Webhook delivery: the outbox to HTTP endpoints, in the Standard Webhooks format.

Per endpoint, one replica at a time holds a lease (a row renewed every third
of METERING_WEBHOOK_LEASE; a killed replica's lease lapses and another takes
over, resuming its deliveries with the same `webhook-id`). The holder:

1. scans the outbox past the endpoint's cursor, making a pending delivery of
   each notification the endpoint wants (OutboxStore.scan, metering.ledger.outbox);
2. attempts, per customer, only the oldest pending delivery: a failing
   notification holds back that customer's later ones for this endpoint, not
   other customers'; customers are delivered concurrently;
3. a 2xx answer within METERING_WEBHOOK_TIMEOUT is delivered (the row goes);
   anything else is retried after the next wait of the schedule (with
   jitter), and after the last attempt it is a dead letter for this
   endpoint, counted, until `metering webhooks replay` queues it again.

Every write of the holder is fenced by its lease, so a replica that lost it
(paused, partitioned) cannot overwrite the new holder's progress. Delivery is
at least once: a replica killed between the receiver's 2xx and its own
bookkeeping sends that notification again, with the same id.

The POSTs go through one aiohttp session (HTTP/1.1 keep-alive), its TLS trust
as httpx's was (SSL_CERT_FILE, SSL_CERT_DIR, else certifi's bundle) and proxies
from the environment, looked up once per endpoint: about 60 us of CPU per POST against httpx's 500-1,000
(bench/webhook_post.py, docs/benchmarks.md), on the ingest process's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import certifi
import yarl
from standardwebhooks.webhooks import Webhook

from metering.config.endpoints import Endpoint
from metering.delivery.wakeup import OutboxWakeup, Waiter
from metering.domain.notifications import Position, StoredNotification
from metering.ledger.outbox import LeaseLost, OutboxStore, PendingDelivery
from metering.telemetry.metrics import Metrics
from metering.wire.notifications import notification_json

log = logging.getLogger(__name__)

# Outcomes of one attempt (the `outcome` label of metering_webhook_attempts_total).
DELIVERED = "delivered"
REFUSED = "refused"  # an answer other than 2xx
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"  # connection refused, DNS, TLS, reset...
OUTCOMES = (DELIVERED, REFUSED, TIMEOUT, UNREACHABLE)

# Notifications a scan passes over per transaction, and customers attempted per round.
_SCAN_BATCH = 500
_HEADS = 200
# Attempts in flight per endpoint (each to a different customer).
_CONCURRENCY = 16
# Jitter: each wait is the schedule's, times a factor in [1 - J, 1 + J].
_JITTER = 0.2
_LAG_EVERY_SECONDS = 1.0


def retry_delay(schedule: Sequence[timedelta], attempts_made: int, jitter: float) -> timedelta | None:
    """The wait before the next attempt after `attempts_made` attempts, or None
    when the schedule is exhausted (a dead letter). schedule[i] is the wait
    before attempt i + 1; `jitter` in [0, 1) spreads it by up to +-20% so that
    failures of many notifications do not come back in step."""
    if attempts_made >= len(schedule):
        return None
    factor = 1 - _JITTER + 2 * _JITTER * jitter
    return schedule[attempts_made] * factor


def signature_header(secrets: Sequence[str], msg_id: str, at: datetime, body: str) -> str:
    """`webhook-signature`: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` per
    secret, space-separated (several while a secret rotates)."""
    return _signature(tuple(Webhook(secret) for secret in secrets), msg_id, at, body)


def _signature(signers: Sequence[Webhook], msg_id: str, at: datetime, body: str) -> str:
    return " ".join(signer.sign(msg_id, at, body) for signer in signers)


def tls_context() -> ssl.SSLContext:
    """The CAs an https endpoint is checked against, as httpx chose them:
    SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle."""
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


def proxy_for(url: yarl.URL) -> str | None:
    """The proxy of an endpoint's URL from the environment (HTTP_PROXY,
    HTTPS_PROXY, ALL_PROXY, NO_PROXY), as httpx honoured them. Looked up once
    per endpoint: aiohttp's trust_env looks on every request (about 170 us of
    CPU per POST, most of it reading ~/.netrc)."""
    if url.host is None or urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all")


def make_session(timeout: timedelta) -> aiohttp.ClientSession:
    """The HTTP client of every endpoint: keep-alive connections (up to 100, as
    httpx's default), no redirect followed (a 3xx is not a 2xx), the whole
    attempt (connect, send, answer) within `timeout`. Made on the running loop."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, ssl=tls_context()),
        timeout=aiohttp.ClientTimeout(total=timeout.total_seconds()),
        skip_auto_headers=("User-Agent",),
    )


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt (one of OUTCOMES), and why it failed."""

    outcome: str  # one of OUTCOMES
    error: str  # why it failed; "" when delivered


# The signed cursor of a position (metering.api.page_tokens, passed in by the wiring).
CursorOf = Callable[[Position], str]


class WebhookSender:
    """HTTP for one endpoint: signs and posts a notification."""

    def __init__(self, endpoint: Endpoint, session: aiohttp.ClientSession, cursor_of: CursorOf) -> None:
        self.endpoint = endpoint
        self._session = session
        self._cursor_of = cursor_of
        self._url = yarl.URL(endpoint.url)  # parsed once, not per POST
        self._proxy = proxy_for(self._url)
        self._signers = tuple(Webhook(secret) for secret in endpoint.secrets)  # each decodes its secret once

    async def send(self, notification: StoredNotification) -> Attempt:
        body = notification_json(notification, self._cursor_of(notification.position))
        msg_id = str(notification.notification_id)
        at = datetime.now(UTC).replace(microsecond=0)
        headers = {
            "content-type": "application/json",
            "user-agent": "metering-webhooks/1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": _signature(self._signers, msg_id, at, body),
        }
        try:
            async with self._session.post(
                self._url, data=body.encode(), headers=headers, allow_redirects=False, proxy=self._proxy
            ) as response:
                # Read to the end, so that the connection is kept for the next POST.
                await response.read()
                status = response.status
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors
            return Attempt(TIMEOUT, "no answer within the timeout")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Attempt(UNREACHABLE, f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return Attempt(DELIVERED, "")
        return Attempt(REFUSED, f"HTTP {status}")


class WebhookDelivery:
    """Delivers the outbox to every configured endpoint, while this replica holds its lease."""

    def __init__(
        self,
        store: OutboxStore,
        endpoints: Sequence[Endpoint],
        wakeup: OutboxWakeup,
        metrics: Metrics,
        cursor_of: CursorOf,
        *,
        timeout: timedelta,
        schedule: Sequence[timedelta],
        lease: timedelta,
        poll: timedelta,
    ) -> None:
        self._store = store
        self._endpoints = tuple(endpoints)
        self._wakeup = wakeup
        self._metrics = metrics
        self._cursor_of = cursor_of
        self._schedule = tuple(schedule)
        self._lease = lease
        self._poll = poll.total_seconds()
        # Unique per process: who holds a lease, in webhook_cursors.owner.
        self._owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None  # made by start(), on the running loop
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by endpoint name
        for endpoint in self._endpoints:
            metrics.init_endpoint(endpoint.name, OUTCOMES)

    def start(self) -> None:
        self._session = make_session(self._timeout)
        self._tasks = {e.name: asyncio.create_task(self._run(e)) for e in self._endpoints}

    async def reload(self, endpoints: Sequence[Endpoint]) -> None:
        """Deliver to a new set of endpoints (SIGHUP). An endpoint that stays as it
        was keeps delivering untouched; a removed or changed one stops (an attempt
        in flight is abandoned: not marked delivered, so it is sent again, and
        receivers dedupe on the notification id) and a changed one starts again."""
        new = {e.name: e for e in endpoints}
        stopping = [e for e in self._endpoints if new.get(e.name) != e]
        for endpoint in stopping:
            self._tasks[endpoint.name].cancel()
        # Forgotten only once ended: a reload cancelled here (the service
        # stopping) leaves them to close(), which awaits them.
        await asyncio.gather(*(self._tasks[e.name] for e in stopping), return_exceptions=True)
        for endpoint in stopping:
            del self._tasks[endpoint.name]
        await self._release_leases([e for e in stopping if e.name not in new])
        kept = set(self._tasks)
        self._endpoints = tuple(endpoints)
        for endpoint in self._endpoints:
            if endpoint.name not in kept:
                self._metrics.init_endpoint(endpoint.name, OUTCOMES)
                self._tasks[endpoint.name] = asyncio.create_task(self._run(endpoint))

    async def _release_leases(self, endpoints: Sequence[Endpoint]) -> None:
        # Hand the endpoints over at once rather than after the lease lapses.
        if not endpoints:
            return
        with contextlib.suppress(Exception):
            await self._store.release_leases([endpoint.name for endpoint in endpoints], self._owner)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._release_leases(self._endpoints)
        if self._session is not None:
            await self._session.close()

    async def _run(self, endpoint: Endpoint) -> None:
        assert self._session is not None  # start() made it
        sender = WebhookSender(endpoint, self._session, self._cursor_of)
        waiter = self._wakeup.waiter()
        lease = self._lease.total_seconds()
        while True:
            try:
                held = await self._store.acquire_lease(endpoint.name, self._owner, self._lease)
                if held:
                    await self._while_held(endpoint, sender, waiter)
                    continue
                self._metrics.delivery_lag.labels(endpoint.name).set(0)  # the holder reports it
            except LeaseLost:
                log.info("webhook endpoint %s: another replica took over", endpoint.name)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook endpoint %s: %s: %s", endpoint.name, type(exc).__name__, exc)
                await asyncio.sleep(self._poll)
                continue
            await asyncio.sleep(lease / 3)

    async def _while_held(self, endpoint: Endpoint, sender: WebhookSender, waiter: Waiter) -> None:
        """Deliver until the lease is lost (LeaseLost) or the database fails."""
        renewer = asyncio.create_task(self._renew(endpoint))
        worker = asyncio.create_task(self._deliver(endpoint, sender, waiter))
        try:
            done, _pending = await asyncio.wait({renewer, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this call is cancelled (the service stops, or a reload
            # drops the endpoint): asyncio.wait leaves its tasks running, and a
            # delivery that outlived the pool failed with nobody to hear it.
            for task in (renewer, worker):
                task.cancel()
            await asyncio.gather(renewer, worker, return_exceptions=True)
        for task in done:
            task.result()

    async def _renew(self, endpoint: Endpoint) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            if not await self._store.acquire_lease(endpoint.name, self._owner, self._lease):
                raise LeaseLost(endpoint.name)

    async def _deliver(self, endpoint: Endpoint, sender: WebhookSender, waiter: Waiter) -> None:
        limit = asyncio.Semaphore(_CONCURRENCY)
        lag_at = 0.0
        while True:
            waiter.arm()
            scanned = _SCAN_BATCH
            found = False
            while scanned == _SCAN_BATCH:
                scanned = await self._store.scan(endpoint.name, self._owner, endpoint.types, _SCAN_BATCH)
                found = found or scanned > 0
            now, heads = await self._store.pending_heads(endpoint.name, _HEADS)
            if time.monotonic() >= lag_at:
                await self._report_lag(endpoint)
                lag_at = time.monotonic() + _LAG_EVERY_SECONDS
            due = [head for head in heads if head.next_attempt_at <= now]
            if due:

                async def attempt(head: PendingDelivery) -> bool:
                    async with limit:
                        return await self._attempt(endpoint, sender, head)

                answered = await asyncio.gather(*(attempt(head) for head in due))
                delivered = [head.notification for head, ok in zip(due, answered, strict=True) if ok]
                # One statement for the round's 2xx answers (a failed attempt
                # is recorded on its own). Not reached (a lease lost, the
                # service stopping), they are sent again with the same id, as
                # after any crash between a 2xx and its bookkeeping: delivery
                # is at least once.
                await self._store.mark_delivered(endpoint.name, self._owner, delivered)
                if len(delivered) < len(due) or len(heads) >= _HEADS or any(head.more for head in due):
                    continue  # the next notification of each customer is due at once
                # Nothing of these customers waits behind what was delivered:
                # what comes next is new notifications, whose commit wakes this
                # loop (or the poll finds them), not another look right away.
            waiting = [h for h in heads if h.next_attempt_at > now]
            wait = self._poll
            if waiting:
                wait = min(wait, min((h.next_attempt_at - now).total_seconds() for h in waiting))
            await waiter.pause(found, wait)

    async def _attempt(self, endpoint: Endpoint, sender: WebhookSender, head: PendingDelivery) -> bool:
        """One attempt; True when answered 2xx (its caller marks it delivered), else recorded as failed."""
        notification = head.notification
        result = await sender.send(notification)
        attempts = head.attempts + 1
        self._metrics.webhook_attempts.labels(endpoint.name, result.outcome).inc()
        if result.outcome == DELIVERED:
            age = (datetime.now(UTC) - notification.created_at).total_seconds()
            self._metrics.webhook_delivery_seconds.labels(endpoint.name).observe(max(age, 0.0))
            return True
        retry_in = retry_delay(self._schedule, attempts, random.random())
        await self._store.mark_failed(
            endpoint.name, self._owner, notification, attempts=attempts, retry_in=retry_in, error=result.error
        )
        if retry_in is None:
            self._metrics.webhook_dead_letters.labels(endpoint.name).inc()
            log.warning(
                "webhook endpoint %s: notification %s dead-lettered after %d attempts (last: %s)",
                endpoint.name,
                notification.notification_id,
                attempts,
                result.error,
            )
        return False

    async def _report_lag(self, endpoint: Endpoint) -> None:
        now, oldest = await self._store.oldest_undelivered(endpoint.name, endpoint.types)
        lag = 0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0)
        self._metrics.delivery_lag.labels(endpoint.name).set(lag)
