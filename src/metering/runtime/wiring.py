"""The composition root: every part of a serving process, built once.

The order is the dependencies' order: the settings and the operator files
(checked before anything touches the database), then the primary pool's users
(the stores and the writer), the services, the outbound delivery, the reads
(through the replica router when there is one) and the gRPC server with its
servicer. Building opens no connection (the lifecycle opens the pools and
hands them in) and starts nothing but what a constructor starts by itself
(the batch writer's workers); metering.runtime.serve runs the lifecycle: it
starts the parts, serves, and stops them in reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from connectrpc.compat import google_protobuf_binary_codec
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from metering.api.admission import Admission
from metering.api.auth import Authenticator
from metering.api.bench import noop_handler
from metering.api.drain import Drain
from metering.api.health import DatabaseHealth
from metering.api.http.app import HttpApplication
from metering.api.http.codec import CompactJsonCodec
from metering.api.http.edge import ConnectEdge
from metering.api.http.v1.metering_service_connect import MeteringServiceASGIApplication
from metering.api.interceptor import ObservedServiceInterceptor
from metering.api.page_tokens import PageTokens
from metering.api.servicer import MeteringServicer
from metering.config.files import Config
from metering.config.settings import ConfigError, Settings
from metering.delivery.retention import Retention
from metering.delivery.stream import OutboxStream
from metering.delivery.stripe import StripeExporter, StripeMeterEvents
from metering.delivery.wakeup import OutboxWakeup
from metering.delivery.webhooks import WebhookDelivery
from metering.ledger.customers import CustomerStore
from metering.ledger.entitlements import EntitlementStore
from metering.ledger.invoicing import InvoiceStore
from metering.ledger.listen import OutboxListener
from metering.ledger.outbox import OutboxStore
from metering.ledger.pool import Pool
from metering.ledger.replica import ReadCustomerStore, ReadInvoiceStore, ReadRouter, ReplicaState, lag_for_gauge
from metering.ledger.reporting import UsageReports
from metering.ledger.stripe import StripeExportStore
from metering.ledger.wallets import WalletStore
from metering.ledger.writer import BatchWriter
from metering.runtime.http import HttpServer
from metering.runtime.reload import ConfigReloader
from metering.services.catalog import Catalogs
from metering.services.credit_notes import CreditNotes
from metering.services.entitlements import Entitlements
from metering.services.invoicing import Closer, Invoicing
from metering.services.reporting import Reporting
from metering.services.usage import MeteringEngine
from metering.services.wallets import Wallets
from metering.telemetry.metrics import Metrics
from metering.telemetry.tracing import Tracing
from metering.v1 import metering_service_pb2, metering_service_pb2_grpc

log = logging.getLogger(__name__)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS with METERING_TLS_CLIENT_CA) from PEM files, or None for plaintext.
    Not part of Config: it is a gRPC object, and a supervisor creates none."""
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


@dataclass(frozen=True)
class Pools:
    """The database the lifecycle opened (and closes)."""

    url: str  # the primary's: the outbox's LISTEN connection is its own, outside the pool
    primary: Pool
    replica: Pool | None  # METERING_READ_DATABASE_URL's, opening no connection up front


@dataclass(frozen=True)
class Stores:
    """The primary pool's users: the ledger's stores and the batch writer."""

    ledger: CustomerStore
    reports: UsageReports
    holds: EntitlementStore
    invoices: InvoiceStore
    writer: BatchWriter  # its workers run from construction; BatchWriter.close stops them
    wallets: WalletStore


@dataclass(frozen=True)
class Reads:
    """What the servicer reads usage, bills and invoices through: the replica
    router's stores when METERING_READ_DATABASE_URL is set, else the primary's."""

    reporting: Reporting
    invoicing: Invoicing
    router: ReadRouter | None  # probes the replica (ReadRouter.run)


@dataclass(frozen=True)
class Delivery:
    """The outbound edges: the outbox's wake-up, stream, webhooks and retention, the Stripe export."""

    wakeup: OutboxWakeup
    stream: OutboxStream
    webhooks: WebhookDelivery
    retention: Retention
    exporter: StripeExporter | None


@dataclass(frozen=True)
class Service:
    """Everything one serving process runs, built and not yet started."""

    config: Config
    metrics: Metrics
    stores: Stores
    reporting: Reporting  # the primary's: the closer finalizes from the primary's data only
    reads: Reads
    delivery: Delivery
    closer: Closer
    health: DatabaseHealth
    authenticator: Authenticator
    reloader: ConfigReloader
    server: grpc.aio.Server
    http: HttpServer | None  # the HTTP edge (Connect, gRPC-Web); None with METERING_HTTP_PORT=off
    drain: Drain  # both edges' gate: closed when shutdown drains, new calls are then refused UNAVAILABLE


def build(
    config: Config, pools: Pools, page_tokens: PageTokens, *, worker: int | None, tracing: Tracing | None
) -> Service:
    """Build every part (a worker of a supervisor shares its port and has its
    metrics summed by the supervisor)."""
    settings = config.settings
    metrics = _metrics(pools.primary, worker)
    stores = _stores(settings, pools.primary, metrics, tracing)
    # The one catalog in force, swapped by a reload.
    catalogs = Catalogs(config.catalog, stores.ledger, anchor_skew_tolerance=settings.anchor_skew_tolerance)
    reporting = Reporting(catalogs, stores.ledger, stores.reports, wallets=stores.wallets)
    primary_reads = Reads(reporting, Invoicing(stores.ledger, stores.invoices, reporting), None)
    reads = _reads(config, pools, metrics, stores, catalogs, primary_reads)
    delivery = _delivery(config, pools, metrics, page_tokens)
    health = DatabaseHealth(stores.ledger, metrics, interval=settings.health_interval, timeout=settings.db_timeout)
    authenticator = Authenticator(
        config.policy,
        on_rate_limited=lambda caller, kind: metrics.rate_limited.labels(caller, kind).inc(),
        max_hold=settings.rate_limit_hold.total_seconds(),
    )
    servicer = MeteringServicer(
        MeteringEngine(catalogs, stores.ledger, stores.writer),
        reads.reporting,
        Entitlements(catalogs, stores.ledger, stores.holds),
        reads.invoicing,
        metrics,
        delivery.stream,
        page_tokens,
        catalogs=catalogs,
        credit_notes=CreditNotes(stores.ledger, stores.invoices, on_notifications=metrics.count_notifications),
        backfill_window=settings.backfill_window,
        wallets=Wallets(catalogs, stores.ledger, stores.wallets),
    )
    drain = Drain()
    admission = Admission(metrics, authenticator, drain)  # one for both edges
    return Service(
        config=config,
        metrics=metrics,
        stores=stores,
        reporting=reporting,
        reads=reads,
        delivery=delivery,
        closer=_closer(settings, stores, reporting, metrics),
        health=health,
        authenticator=authenticator,
        reloader=ConfigReloader(config, catalogs, authenticator, delivery.webhooks, delivery.retention, metrics),
        server=_server(settings, servicer, health, ObservedServiceInterceptor(admission), tracing, worker),
        http=_http(settings, ConnectEdge(servicer, admission, tracing), health, worker),
        drain=drain,
    )


def _metrics(pool: Pool, worker: int | None) -> Metrics:
    metrics = Metrics(multiprocess=worker is not None)
    metrics.watch_pool(
        in_use=lambda: pool.get_size() - pool.get_idle_size(),
        size=pool.get_size,
        maximum=pool.get_max_size,
    )
    return metrics


def _stores(settings: Settings, pool: Pool, metrics: Metrics, tracing: Tracing | None) -> Stores:
    acquire_timeout = settings.db_timeout.total_seconds()
    return Stores(
        ledger=CustomerStore(
            pool,
            acquire_timeout=acquire_timeout,
            read_linger=settings.read_linger.total_seconds(),
            on_read_batch=metrics.read_batch_size.observe,
        ),
        reports=UsageReports(pool, acquire_timeout=acquire_timeout),
        holds=EntitlementStore(pool, acquire_timeout=acquire_timeout, on_notifications=metrics.count_notifications),
        invoices=InvoiceStore(pool, acquire_timeout=acquire_timeout),
        writer=BatchWriter(
            pool,
            acquire_timeout=acquire_timeout,
            workers=settings.writer_workers,
            bulk_workers=settings.writer_bulk_workers,
            linger=settings.writer_linger.total_seconds(),
            on_batch=metrics.write_batch_size.observe,
            on_notifications=metrics.count_notifications,
            tracing=tracing,
        ),
        wallets=WalletStore(pool, acquire_timeout=acquire_timeout),
    )


def _delivery(config: Config, pools: Pools, metrics: Metrics, page_tokens: PageTokens) -> Delivery:
    settings = config.settings
    acquire_timeout = settings.db_timeout.total_seconds()
    outbox = OutboxStore(pools.primary, acquire_timeout=acquire_timeout)
    wakeup = OutboxWakeup(OutboxListener(pools.url, connect_timeout=settings.db_connect_timeout.total_seconds()))
    webhooks = WebhookDelivery(
        outbox,
        config.endpoints,
        wakeup,
        metrics,
        page_tokens.cursor,  # webhook bodies carry the same signed cursors as the watch stream
        timeout=settings.webhook_timeout,
        schedule=settings.webhook_retry_schedule,
        lease=settings.webhook_lease,
        poll=settings.notification_poll,
    )
    retention = Retention(
        outbox,
        retention=settings.notification_retention,
        endpoints=[endpoint.name for endpoint in config.endpoints],
    )
    return Delivery(
        wakeup=wakeup,
        stream=OutboxStream(outbox, wakeup, poll=settings.notification_poll),
        webhooks=webhooks,
        retention=retention,
        exporter=_exporter(config, pools.primary, metrics),
    )


def _exporter(config: Config, pool: Pool, metrics: Metrics) -> StripeExporter | None:
    settings = config.settings
    if config.stripe_mapping is None:
        return None
    assert settings.stripe_api_key is not None  # Settings refuses a mapping without a key
    sender = StripeMeterEvents(settings.stripe_api_key, settings.stripe_api_base, settings.stripe_timeout)
    store = StripeExportStore(pool, acquire_timeout=settings.db_timeout.total_seconds())
    return StripeExporter(store, config.stripe_mapping, settings, metrics, sender)


def _closer(settings: Settings, stores: Stores, reporting: Reporting, metrics: Metrics) -> Closer:
    return Closer(
        stores.invoices,
        reporting,
        metrics,
        grace=settings.invoice_grace,
        interval=settings.close_interval,
        pause=settings.test_only_close_pause,
    )


def _reads(config: Config, pools: Pools, metrics: Metrics, stores: Stores, catalogs: Catalogs, primary: Reads) -> Reads:
    """The servicer's usage, bill and invoice reads through the replica router,
    or the primary's (`primary`) without a replica."""
    settings = config.settings
    if pools.replica is None:
        return primary
    router = _read_router(settings, pools.primary, pools.replica, metrics)
    acquire_timeout = settings.db_timeout.total_seconds()
    ledger = ReadCustomerStore(router, stores.ledger, acquire_timeout=acquire_timeout)
    # Wallet credit is read on the primary: a bill's credit must match its burns.
    reporting = Reporting(
        catalogs, ledger, UsageReports(router, acquire_timeout=acquire_timeout), wallets=stores.wallets
    )
    invoices = ReadInvoiceStore(router, stores.invoices, acquire_timeout=acquire_timeout)
    return Reads(reporting, Invoicing(ledger, invoices, reporting), router)


def _read_router(settings: Settings, primary: Pool, replica: Pool, metrics: Metrics) -> ReadRouter:
    """The router of reads to the replica: a replica that is down (at start-up
    too) leaves the reads on the primary, and does not stop the service."""

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


def _http(settings: Settings, edge: ConnectEdge, health: DatabaseHealth, worker: int | None) -> HttpServer | None:
    """The HTTP edge on its own port: the same RPC bodies as the gRPC server's, over Connect and gRPC-Web."""
    if settings.http_port is None:
        return None
    connect = MeteringServiceASGIApplication(
        edge.service(),
        read_max_bytes=settings.max_message_bytes,
        codecs=[google_protobuf_binary_codec(), CompactJsonCodec()],
    )
    app = HttpApplication(connect, health, settings.http_cors_origins, edge.drain)
    # The workers of one supervisor share the port it reserved, as they share the gRPC one.
    return HttpServer(app, settings.http_host, settings.http_port, reuse_port=worker is not None)


class _GenericHandlersOnly:
    """The server as the generated `add_*_to_server` functions see it: their
    methods are served through their generic handler only, not also as
    "registered methods". grpc.aio (1.85) keeps a pending request for every
    registered method and, for every call it accepts, waits on all of them
    with asyncio.wait: with the ~27 methods of this server, each call paid
    27 done-callbacks added and removed and 27 coroutine checks (about 150
    Python and C calls, half of what a no-op call costs above grpc.aio's
    bare floor; bench/call_cost.py). With one generic request pending, a
    call costs what it costs a bare server. The methods are found the same
    way (a dict lookup in the generic handler)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Not registered: the same handlers came through add_generic_rpc_handlers."""


def _server(
    settings: Settings,
    servicer: MeteringServicer,
    health: DatabaseHealth,
    observed: ObservedServiceInterceptor,
    tracing: Tracing | None,
    worker: int | None,
) -> grpc.aio.Server:
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
            ("grpc.so_reuseport", 0 if worker is None else 1),
        ],
    )
    generic = _GenericHandlersOnly(server)
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, generic)  # type: ignore[arg-type]
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, generic)
    service_names = (
        metering_service_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name,
        "grpc.health.v1.Health",
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, generic)  # type: ignore[arg-type]
    if settings.bench_noop:
        server.add_generic_rpc_handlers((noop_handler(),))
    return server
