"""The service process: database, migrations, gRPC server, metrics, health.

Start-up order matters: the catalog is checked first (a bad catalog must not
touch the database), then the database is reached (waiting for it to come
up), migrations are applied under their advisory lock, and only then does the
server accept calls. SIGTERM or SIGINT drains in-flight calls within the
grace period before the pool closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import grpc
from grpc_reflection.v1alpha import reflection

from metering.access import AccessPolicy, load_access
from metering.api.auth import Authenticator
from metering.api.bench import noop_handler
from metering.api.health import METERING_SERVICE, DatabaseHealth
from metering.api.interceptor import ObservedServiceInterceptor
from metering.api.servicer import MeteringServicer
from metering.catalog import Catalog, load_catalog
from metering.config import ConfigError, Settings
from metering.delivery.endpoints import Endpoint, load_endpoints
from metering.delivery.retention import Retention
from metering.delivery.stream import OutboxStream
from metering.delivery.wakeup import OutboxWakeup
from metering.delivery.webhooks import WebhookDelivery
from metering.embedded import EmbeddedPostgres, start_embedded
from metering.engine import MeteringEngine
from metering.entitlements import Entitlements
from metering.invoicing import Closer, Invoicing
from metering.ledger import outbox
from metering.ledger.audit import AuditReport, audit_ledger
from metering.ledger.holds import Holds
from metering.ledger.invoices import InvoiceStore
from metering.ledger.migrate import migrate
from metering.ledger.pool import create_pool, is_unavailable
from metering.ledger.reports import UsageReports
from metering.ledger.rollups import sync_layouts
from metering.ledger.store import Ledger
from metering.ledger.writer import BatchWriter
from metering.metrics import Metrics
from metering.reporting import Reporting
from metering.stripe_sync.exporter import StripeExporter, StripeMeterEvents
from metering.stripe_sync.mapping import StripeMapping, load_mapping
from metering.v1 import metering_service_pb2, metering_service_pb2_grpc

log = logging.getLogger(__name__)

# How long start-up waits for the database before giving up.
STARTUP_DATABASE_WAIT_SECONDS = 30.0
# Net allocations of container objects between two young garbage collections
# (Python's default: 700). See _serve.
GC_THRESHOLD = 20_000
# A worker's first line on stdout once it serves; its supervisor waits for it.
WORKER_READY = "metering worker"


@dataclass
class Database:
    url: str
    embedded: EmbeddedPostgres | None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def open_database(settings: Settings) -> Database:
    if settings.database_url:
        return Database(settings.database_url, None)
    embedded = start_embedded(settings.embedded_data_dir)
    return Database(embedded.uri(), embedded)


async def connect(settings: Settings, url: str) -> asyncpg.Pool:
    """Create the pool, waiting up to STARTUP_DATABASE_WAIT_SECONDS for the database."""
    deadline = time.monotonic() + STARTUP_DATABASE_WAIT_SECONDS
    while True:
        try:
            return await create_pool(
                url, min_size=settings.db_pool_min, max_size=settings.db_pool_max, db_timeout=settings.db_timeout
            )
        except Exception as exc:
            if not is_unavailable(exc) or time.monotonic() > deadline:
                raise
            log.warning("waiting for the database: %s", exc)
            await asyncio.sleep(0.5)


async def run_migrations(settings: Settings, url: str) -> list[str]:
    pool = await connect(settings, url)
    try:
        async with pool.acquire() as conn:
            return await migrate(conn)
    finally:
        await pool.close()


async def audit(
    settings: Settings, url: str, catalog: Catalog, customer_ids: Sequence[str] | None = None
) -> AuditReport:
    pool = await connect(settings, url)
    try:
        async with pool.acquire() as conn:
            return await audit_ledger(conn, catalog, customer_ids)
    finally:
        await pool.close()


async def replay_dead_letters(settings: Settings, url: str, endpoint: str, since: datetime | None) -> int:
    pool = await connect(settings, url)
    try:
        async with pool.acquire() as conn:
            return await outbox.replay_dead_letters(conn, endpoint, since)
    finally:
        await pool.close()


def build_server(
    settings: Settings,
    catalog: Catalog,
    ledger: Ledger,
    reporting: Reporting,
    holds: Holds,
    writer: BatchWriter,
    invoicing: Invoicing,
    metrics: Metrics,
    health: DatabaseHealth,
    policy: AccessPolicy | None,
    stream: OutboxStream,
    *,
    share_port: bool = False,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=[ObservedServiceInterceptor(metrics, Authenticator(policy))],
        options=[
            # A larger request is refused by gRPC itself with RESOURCE_EXHAUSTED
            # before it is read into memory.
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Two replicas must not silently share a port; the workers of one
            # supervisor do, on the port it reserved (metering.supervisor).
            ("grpc.so_reuseport", 1 if share_port else 0),
        ],
    )
    engine = MeteringEngine(catalog, ledger, writer)
    entitlements = Entitlements(catalog, ledger, holds)
    servicer = MeteringServicer(
        engine, reporting, entitlements, invoicing, metrics, stream, backfill_window=settings.backfill_window
    )
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server)
    from grpc_health.v1 import health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    service_names = (
        metering_service_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name,
        "grpc.health.v1.Health",
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
    if settings.bench_noop:
        server.add_generic_rpc_handlers((noop_handler(),))
    return server


def access_policy(settings: Settings, catalog: Catalog) -> AccessPolicy | None:
    """The callers allowed in, or None to run open: only for the embedded
    database (local use) or when explicitly asked for, and then loudly."""
    if settings.auth_file is not None:
        return load_access(settings.auth_file, catalog.meters)
    if settings.database_url is not None and not settings.allow_unauthenticated:
        raise ConfigError(
            "no callers configured: set METERING_AUTH_FILE (see `metering token new`), or "
            "METERING_ALLOW_UNAUTHENTICATED=1 to let anyone who reaches the port record and read usage"
        )
    log.warning(
        "AUTHENTICATION IS OFF: any client that reaches %s:%s may record, void and read usage. "
        "Set METERING_AUTH_FILE before exposing this service.",
        settings.grpc_host,
        settings.grpc_port,
    )
    return None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS with METERING_TLS_CLIENT_CA) from PEM files, or None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None

    def read(variable: str, path: str) -> bytes:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise ConfigError(f"{variable}={path!r}: cannot read it: {exc.strerror}") from None

    client_ca = read("METERING_TLS_CLIENT_CA", settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read("METERING_TLS_KEY", settings.tls_key), read("METERING_TLS_CERT", settings.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def serve(settings: Settings, worker: int | None = None) -> None:
    """Serve in this process: on its own, or as worker number `worker` of a
    supervisor (metering.supervisor), which has applied the migrations,
    reserved the port and serves the metrics of every worker."""
    catalog = load_catalog(settings.catalog_path)
    # Checked before the database is touched, like the catalog.
    stripe_mapping = load_mapping(settings.stripe_file, catalog.meters) if settings.stripe_file else None
    policy = access_policy(settings, catalog)
    credentials = server_credentials(settings)
    # A bad endpoints file refuses start-up, before the database is touched.
    endpoints = load_endpoints(settings.webhooks_file) if settings.webhooks_file else ()
    # Handlers go in first: a SIGTERM at any later instant drains instead of killing.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    database = await asyncio.to_thread(open_database, settings)
    try:
        await _serve(settings, catalog, stripe_mapping, policy, credentials, endpoints, database, stop, worker)
    finally:
        await asyncio.to_thread(database.close)


async def _serve(
    settings: Settings,
    catalog: Catalog,
    stripe_mapping: StripeMapping | None,
    policy: AccessPolicy | None,
    credentials: grpc.ServerCredentials | None,
    endpoints: tuple[Endpoint, ...],
    database: Database,
    stop: asyncio.Event,
    worker: int | None,
) -> None:
    pool = await connect(settings, database.url)
    try:
        if worker is None:  # a supervisor has done it once for all its workers
            await prepare_database(pool, catalog)
        metrics = Metrics(multiprocess=worker is not None)
        metrics.watch_pool(
            in_use=lambda: pool.get_size() - pool.get_idle_size(),
            size=pool.get_size,
            maximum=pool.get_max_size,
        )
        acquire_timeout = settings.db_timeout.total_seconds()
        ledger = Ledger(
            pool,
            acquire_timeout=acquire_timeout,
            read_linger=settings.read_linger.total_seconds(),
            on_read_batch=metrics.read_batch_size.observe,
        )
        reports = UsageReports(pool, acquire_timeout=acquire_timeout)
        holds = Holds(pool, acquire_timeout=acquire_timeout, on_notifications=metrics.count_notifications)
        writer = BatchWriter(
            pool,
            acquire_timeout=acquire_timeout,
            workers=settings.writer_workers,
            linger=settings.writer_linger.total_seconds(),
            on_batch=metrics.write_batch_size.observe,
            on_notifications=metrics.count_notifications,
        )
        wakeup = OutboxWakeup(database.url)
        stream = OutboxStream(pool, wakeup, acquire_timeout=acquire_timeout, poll=settings.notification_poll)
        webhooks = WebhookDelivery(
            pool,
            endpoints,
            wakeup,
            metrics,
            acquire_timeout=acquire_timeout,
            timeout=settings.webhook_timeout,
            schedule=settings.webhook_retry_schedule,
            lease=settings.webhook_lease,
            poll=settings.notification_poll,
        )
        retention = Retention(
            pool,
            acquire_timeout=acquire_timeout,
            retention=settings.notification_retention,
            endpoints=[endpoint.name for endpoint in endpoints],
        )
        invoice_store = InvoiceStore(pool, acquire_timeout=acquire_timeout)
        reporting = Reporting(catalog, ledger, reports)
        invoicing = Invoicing(ledger, invoice_store, reporting)
        closer = Closer(
            invoice_store,
            reporting,
            metrics,
            grace=settings.invoice_grace,
            interval=settings.close_interval,
            pause=settings.test_only_close_pause,
        )
        health = DatabaseHealth(ledger, metrics, interval=settings.health_interval, timeout=settings.db_timeout)
        await health.probe()
        server = build_server(
            settings,
            catalog,
            ledger,
            reporting,
            holds,
            writer,
            invoicing,
            metrics,
            health,
            policy,
            stream,
            share_port=worker is not None,
        )
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        if credentials is None:
            grpc_port = server.add_insecure_port(address)
        else:
            grpc_port = server.add_secure_port(address, credentials)
        # A worker's metrics are served by its supervisor, summed with the others'.
        metrics_port = metrics.serve(settings.metrics_host, settings.metrics_port) if worker is None else None
        # A batch of 1000 events holds tens of thousands of small objects until
        # it is answered. At the default threshold (700) they set off young
        # collections that promote them, and full collections that walk the
        # whole heap, several times per batch: about a fifth of the CPU of a
        # RecordUsageBatch. Collecting every 20,000 allocations lets most of
        # them die young (measured: garbage collection from ~20% to ~4%).
        gc.set_threshold(GC_THRESHOLD)
        await server.start()
        if worker is not None:
            # The supervisor waits for this line (metering.supervisor.WORKER_READY).
            print(f"{WORKER_READY} {worker} pid {os.getpid()} on {settings.grpc_host}:{grpc_port}", flush=True)
        else:
            # Announce on stdout: people read it, and so do the tests (port 0 picks a free port).
            print(
                announcement(settings, catalog, policy, stripe_mapping, database, grpc_port, metrics_port), flush=True
            )
        health_task = asyncio.create_task(health.run())
        pool_task = asyncio.create_task(_sample_pool(metrics, settings)) if worker is not None else None
        # Every replica runs the closer: they share the due customers without
        # closing any period twice (metering.ledger.invoices).
        closer_task = asyncio.create_task(closer.run())
        export_task = None
        if stripe_mapping is not None:
            assert settings.stripe_api_key is not None  # Settings refuses a mapping without a key
            sender = StripeMeterEvents(settings.stripe_api_key, settings.stripe_api_base, settings.stripe_timeout)
            exporter = StripeExporter(pool, stripe_mapping, settings, metrics, sender)
            export_task = asyncio.create_task(exporter.run())
        wakeup.start()
        webhooks.start()
        retention_task = asyncio.create_task(retention.run())
        await stop.wait()
        await health.shutting_down()  # NOT_SERVING first: load balancers stop sending new calls
        if settings.shutdown_delay:
            # Until the balancers have seen NOT_SERVING, calls keep coming: serve them.
            log.info("stopping: health NOT_SERVING, serving on for %ss", settings.shutdown_delay.total_seconds())
            await asyncio.sleep(settings.shutdown_delay.total_seconds())
        closer_task.cancel()  # a close in flight rolls back; the next start (or replica) redoes it
        # An event in flight is sent again by whichever replica exports next.
        background = [closer_task] if export_task is None else [closer_task, export_task]
        if export_task is not None:
            export_task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        log.info("stopping: draining in-flight calls for up to %ss", settings.shutdown_grace.total_seconds())
        stream.close()
        health.end_watches()
        await server.stop(settings.shutdown_grace.total_seconds())
        health_task.cancel()
        if pool_task is not None:
            pool_task.cancel()
        retention_task.cancel()
        await webhooks.close()
        await wakeup.close()
        await writer.close()  # after the drain: in-flight calls have their answers
    finally:
        await pool.close()
    log.info("stopped")


async def prepare_database(pool: asyncpg.Pool, catalog: Catalog) -> None:
    """What start-up does to the database once: migrations (under their
    advisory lock) and the rollups' layout for the catalog's dimensions."""
    async with pool.acquire() as conn:
        applied = await migrate(conn)
        rebuilt = await sync_layouts(conn, catalog)
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))
    if rebuilt:
        log.info("rollups rebuilt for the catalog's dimensions: %s", ", ".join(rebuilt))


async def _sample_pool(metrics: Metrics, settings: Settings) -> None:
    """A worker's pool gauges, refreshed as often as health is probed."""
    while True:
        metrics.sample_pool()
        await asyncio.sleep(settings.health_interval.total_seconds())


def announcement(
    settings: Settings,
    catalog: Catalog,
    policy: AccessPolicy | None,
    stripe_mapping: StripeMapping | None,
    database: Database,
    grpc_port: int,
    metrics_port: int | None,
    workers: int = 1,
) -> str:
    """The line that says the service serves (tests read the ports from it)."""
    return (
        f"metering: serving {METERING_SERVICE} on {settings.grpc_host}:{grpc_port}; "
        f"metrics on http://{settings.metrics_host}:{metrics_port}/metrics; "
        f"{'' if workers == 1 else f'{workers} worker processes; '}"
        f"catalog {catalog.source}; database {'embedded' if database.embedded else 'external'}; "
        f"{_security_summary(settings, policy)}"
        f"{'' if stripe_mapping is None else f'; Stripe sync on ({len(stripe_mapping.meters)} meters)'}"
    )


def _security_summary(settings: Settings, policy: AccessPolicy | None) -> str:
    transport = "plaintext" if settings.tls_cert is None else ("mTLS" if settings.tls_client_ca else "TLS")
    callers = "auth OFF (open to anyone)" if policy is None else f"auth on ({len(policy.callers)} callers)"
    return f"{transport}, {callers}"


class _OneLineConnectionErrors(logging.Filter):
    """asyncpg's pool logs a full traceback at every reconnect attempt while the
    database is down; one line with the cause says the same without the flood."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_unavailable(record.exc_info[1]):
            record.msg = f"{record.getMessage()}: {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


class _ClientGoneIsNotAnError(logging.Filter):
    """gRPC logs ExecuteBatchError at ERROR, with a traceback, when an answer
    cannot be sent because the client has gone (its deadline passed as the
    answer left). The call itself completed; clients retry with the same ids.
    One WARNING line says so without paging anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("ExecuteBatchError raised in core by servicer method"):
            record.msg = f"{record.getMessage()}: the answer was not delivered, the client had gone"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncpg.pool").addFilter(_OneLineConnectionErrors())
    logging.getLogger("grpc._cython.cygrpc").addFilter(_ClientGoneIsNotAnError())
    # The stripe library logs every request at INFO; the exporter logs what matters.
    logging.getLogger("stripe").setLevel(logging.WARNING)
