"""The service process: database, migrations, gRPC server, metrics, health.

Start-up order matters: the catalog is checked first (a bad catalog must not
touch the database), then the database is reached (waiting for it to come
up), migrations are applied under their advisory lock, and only then does the
server accept calls. SIGTERM or SIGINT drains in-flight calls within the
grace period before the pool closes. SIGHUP re-reads the auth and webhooks
files (metering.runtime.reload).
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

import grpc
from grpc_reflection.v1alpha import reflection

from metering.api.auth import Authenticator
from metering.api.bench import noop_handler
from metering.api.health import METERING_SERVICE, DatabaseHealth
from metering.api.interceptor import ObservedServiceInterceptor
from metering.api.page_tokens import PageTokens
from metering.api.servicer import MeteringServicer
from metering.config.access import load_access
from metering.config.catalog import load_catalog
from metering.config.endpoints import Endpoint, load_endpoints
from metering.config.settings import ConfigError, Settings
from metering.config.stripe import StripeMapping, load_mapping
from metering.delivery.retention import Retention
from metering.delivery.stream import OutboxStream
from metering.delivery.stripe import StripeExporter, StripeMeterEvents
from metering.delivery.wakeup import OutboxWakeup
from metering.delivery.webhooks import WebhookDelivery
from metering.domain.access import AccessPolicy
from metering.domain.catalog import Catalog
from metering.ledger.audit import AuditReport, audit_ledger
from metering.ledger.customers import Ledger
from metering.ledger.entitlements import Holds
from metering.ledger.invoicing import InvoiceStore
from metering.ledger.listen import OutboxListener
from metering.ledger.migrate import migrate
from metering.ledger.outbox import OutboxStore
from metering.ledger.page_token_key import page_token_key
from metering.ledger.pool import Pool, create_pool, is_unavailable
from metering.ledger.replica import ReadInvoiceStore, ReadLedger, ReadRouter, ReplicaState, lag_for_gauge
from metering.ledger.reporting import UsageReports
from metering.ledger.rollups import sync_layouts
from metering.ledger.stripe import StripeExportStore
from metering.ledger.writer import BatchWriter
from metering.runtime.embedded import EmbeddedPostgres, start_embedded
from metering.runtime.reload import ConfigReloader
from metering.services.entitlements import Entitlements
from metering.services.invoicing import Closer, Invoicing
from metering.services.reporting import Reporting
from metering.services.usage import MeteringEngine
from metering.telemetry import logs
from metering.telemetry.metrics import Metrics
from metering.telemetry.tracing import Tracing
from metering.telemetry.tracing import start as start_tracing
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
    """The database the service runs on, and the embedded server behind it if it started one."""

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


async def connect(settings: Settings, url: str) -> Pool:
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
        store = OutboxStore(pool, acquire_timeout=settings.db_timeout.total_seconds())
        return await store.replay_dead_letters(endpoint, since)
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
    authenticator: Authenticator,
    stream: OutboxStream,
    page_tokens: PageTokens,
    tracing: Tracing | None = None,
    *,
    share_port: bool = False,
) -> grpc.aio.Server:
    observed = ObservedServiceInterceptor(metrics, authenticator)
    server = grpc.aio.server(
        # The tracing interceptor first (outermost): the call's span is current
        # in everything below, the observing interceptor's log lines included.
        interceptors=[observed] if tracing is None else [tracing.server_interceptor(), observed],
        options=[
            # A larger request is refused by gRPC itself with RESOURCE_EXHAUSTED
            # before it is read into memory.
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Two replicas must not silently share a port; the workers of one
            # supervisor do, on the port it reserved (metering.runtime.supervisor).
            ("grpc.so_reuseport", 1 if share_port else 0),
        ],
    )
    engine = MeteringEngine(catalog, ledger, writer)
    entitlements = Entitlements(catalog, ledger, holds)
    servicer = MeteringServicer(
        engine,
        reporting,
        entitlements,
        invoicing,
        metrics,
        stream,
        page_tokens,
        backfill_window=settings.backfill_window,
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
    supervisor (metering.runtime.supervisor), which has applied the migrations,
    reserved the port and serves the metrics of every worker."""
    catalog = load_catalog(settings.catalog_path)
    # Checked before the database is touched, like the catalog.
    stripe_mapping = load_mapping(settings.stripe_file, catalog.meters) if settings.stripe_file else None
    policy = access_policy(settings, catalog)
    credentials = server_credentials(settings)
    # A bad endpoints file refuses start-up, before the database is touched.
    endpoints = load_endpoints(settings.webhooks_file) if settings.webhooks_file else ()
    tracing = start_tracing() if settings.tracing else None
    if tracing is not None:
        logs.add_trace_ids(tracing.current_ids)
    # Handlers go in first: a SIGTERM at any later instant drains instead of killing.
    stop = asyncio.Event()
    # SIGHUP's default would end the process: from here on it asks for a
    # reload, served once the server runs (metering.runtime.reload).
    reload_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    # `metering reload` signals the process it finds there: a supervisor's
    # workers leave it to their supervisor, which forwards SIGHUP to each.
    pid_file = settings.pid_file if worker is None else None
    write_pid_file(pid_file)
    database = await asyncio.to_thread(open_database, settings)
    try:
        await _serve(
            settings,
            catalog,
            stripe_mapping,
            policy,
            credentials,
            endpoints,
            database,
            stop,
            reload_requested,
            tracing,
            worker,
        )
    finally:
        await asyncio.to_thread(database.close)
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)
        remove_pid_file(pid_file)


def write_pid_file(path: str | None) -> None:
    """METERING_PID_FILE: where `metering reload` finds this process."""
    if path is None:
        return
    try:
        with open(path, "w", encoding="ascii") as file:
            file.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise ConfigError(f"METERING_PID_FILE={path!r}: cannot write it: {exc.strerror}") from None


def remove_pid_file(path: str | None) -> None:
    if path is None:
        return
    try:
        with open(path, encoding="ascii") as file:
            mine = file.read().strip() == str(os.getpid())
        if mine:  # a newer process may have written its own since
            os.unlink(path)
    except OSError:
        pass


async def _serve(
    settings: Settings,
    catalog: Catalog,
    stripe_mapping: StripeMapping | None,
    policy: AccessPolicy | None,
    credentials: grpc.ServerCredentials | None,
    endpoints: tuple[Endpoint, ...],
    database: Database,
    stop: asyncio.Event,
    reload_requested: asyncio.Event,
    tracing: Tracing | None,
    worker: int | None,
) -> None:
    pool = await connect(settings, database.url)
    try:
        if worker is None:  # a supervisor has done it once for all its workers
            await prepare_database(pool, catalog)
        async with pool.acquire() as conn:
            # Created by whichever process came first; every replica and worker signs with it.
            page_tokens = PageTokens(await page_token_key(conn))
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
            bulk_workers=settings.writer_bulk_workers,
            linger=settings.writer_linger.total_seconds(),
            on_batch=metrics.write_batch_size.observe,
            on_notifications=metrics.count_notifications,
            tracing=tracing,
        )
        wakeup = OutboxWakeup(OutboxListener(database.url))
        outbox_store = OutboxStore(pool, acquire_timeout=acquire_timeout)
        stream = OutboxStream(outbox_store, wakeup, poll=settings.notification_poll)
        webhooks = WebhookDelivery(
            outbox_store,
            endpoints,
            wakeup,
            metrics,
            timeout=settings.webhook_timeout,
            schedule=settings.webhook_retry_schedule,
            lease=settings.webhook_lease,
            poll=settings.notification_poll,
        )
        retention = Retention(
            outbox_store,
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
        read_router = None if settings.read_database_url is None else await open_read_replica(settings, pool, metrics)
        read_reporting, read_invoicing = reporting, invoicing
        if read_router is not None:
            # The servicer's usage, bill and invoice reads; the closer keeps the
            # primary's (an invoice is finalized from the primary's data only).
            read_ledger = ReadLedger(read_router, ledger, acquire_timeout=acquire_timeout)
            read_reports = UsageReports(read_router, acquire_timeout=acquire_timeout)
            read_reporting = Reporting(catalog, read_ledger, read_reports)
            read_invoice_store = ReadInvoiceStore(read_router, invoice_store, acquire_timeout=acquire_timeout)
            read_invoicing = Invoicing(read_ledger, read_invoice_store, read_reporting)
        authenticator = Authenticator(
            policy,
            on_rate_limited=lambda caller, kind: metrics.rate_limited.labels(caller, kind).inc(),
            max_hold=settings.rate_limit_hold.total_seconds(),
        )
        server = build_server(
            settings,
            catalog,
            ledger,
            read_reporting,
            holds,
            writer,
            read_invoicing,
            metrics,
            health,
            authenticator,
            stream,
            page_tokens,
            tracing,
            share_port=worker is not None,
        )
        reloader = ConfigReloader(settings, catalog.meters, authenticator, webhooks, retention, metrics)
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
            # The supervisor waits for this line (metering.runtime.supervisor.WORKER_READY).
            print(f"{WORKER_READY} {worker} pid {os.getpid()} on {settings.grpc_host}:{grpc_port}", flush=True)
        else:
            # Announce on stdout: people read it, and so do the tests (port 0 picks a free port).
            line = announcement(
                settings,
                catalog,
                policy,
                stripe_mapping,
                database,
                grpc_port,
                metrics_port,
                tracing=tracing is not None,
            )
            print(line, flush=True)
        health_task = asyncio.create_task(health.run())
        pool_task = asyncio.create_task(_sample_pool(metrics, settings)) if worker is not None else None
        replica_task = None
        if read_router is not None:
            await read_router.probe()  # reads start on the replica only once its lag is known
            replica_task = asyncio.create_task(read_router.run(settings.health_interval.total_seconds()))
        # Every replica runs the closer: they share the due customers without
        # closing any period twice (metering.ledger.invoicing).
        closer_task = asyncio.create_task(closer.run())
        export_task = None
        if stripe_mapping is not None:
            assert settings.stripe_api_key is not None  # Settings refuses a mapping without a key
            sender = StripeMeterEvents(settings.stripe_api_key, settings.stripe_api_base, settings.stripe_timeout)
            export_store = StripeExportStore(pool, acquire_timeout=acquire_timeout)
            exporter = StripeExporter(export_store, stripe_mapping, settings, metrics, sender)
            export_task = asyncio.create_task(exporter.run())
        wakeup.start()
        webhooks.start()
        retention_task = asyncio.create_task(retention.run())
        reload_task = asyncio.create_task(reloader.run(reload_requested))
        await stop.wait()
        reload_task.cancel()  # a reload in progress is dropped; the files in force stay
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
        if replica_task is not None:
            replica_task.cancel()
        await webhooks.close()
        await wakeup.close()
        await writer.close()  # after the drain: in-flight calls have their answers
        if read_router is not None:
            await read_router.close()
    finally:
        await pool.close()
    log.info("stopped")


async def open_read_replica(settings: Settings, primary: Pool, metrics: Metrics) -> ReadRouter:
    """The router of usage, bill and invoice reads to METERING_READ_DATABASE_URL.
    Its pool opens no connection up front: a replica that is down at start-up
    leaves the reads on the primary, and does not stop the service."""
    assert settings.read_database_url is not None
    replica = await create_pool(
        settings.read_database_url,
        min_size=0,
        max_size=settings.db_pool_max,
        db_timeout=settings.db_timeout,
        application_name="metering-read",
    )

    def probed(state: ReplicaState) -> None:
        metrics.read_replica_up.set(1 if state.up else 0)
        metrics.read_replica_lag.set(lag_for_gauge(state))

    return ReadRouter(
        primary,
        replica,
        max_lag=settings.read_max_lag.total_seconds(),
        timeout=settings.db_timeout.total_seconds(),
        on_route=lambda route: metrics.read_routes.labels(route.pool, route.value).inc(),
        on_probe=probed,
    )


async def prepare_database(pool: Pool, catalog: Catalog) -> None:
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
    *,
    tracing: bool = False,
) -> str:
    """The line that says the service serves (tests read the ports from it)."""
    return (
        f"metering: serving {METERING_SERVICE} on {settings.grpc_host}:{grpc_port}; "
        f"metrics on http://{settings.metrics_host}:{metrics_port}/metrics; "
        f"{'' if workers == 1 else f'{workers} worker processes; '}"
        f"catalog {catalog.source}; database {'embedded' if database.embedded else 'external'}; "
        f"{_security_summary(settings, policy)}"
        f"{'' if stripe_mapping is None else f'; Stripe sync on ({len(stripe_mapping.meters)} meters)'}"
        f"{'' if not tracing else '; tracing on (OTLP/gRPC)'}"
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


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("asyncpg.pool").addFilter(_OneLineConnectionErrors())
    logging.getLogger("grpc._cython.cygrpc").addFilter(_ClientGoneIsNotAnError())
    # The stripe library logs every request at INFO; the exporter logs what matters.
    logging.getLogger("stripe").setLevel(logging.WARNING)
