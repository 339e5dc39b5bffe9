"""Prometheus metrics, on their own registry and HTTP port.

No customer id is ever a label value: label sets stay bounded by the catalog
(meters, plans) and the API (methods, status codes).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from metering.domain.notifications import NotificationType

# No `*_created` samples: Prometheus reads them (OpenMetrics) as a series of
# their own for every counter and histogram, doubling the series stored, and
# nothing here needs them (rate() handles restarts through the counter reset).
disable_created_metrics()  # type: ignore[no-untyped-call]

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)

# Outcomes of one RecordUsage event.
RECORDED = "recorded"
DUPLICATE = "duplicate"
PAYLOAD_CONFLICT = "payload_conflict"
REJECTED = "rejected"

# How a call came (the `protocol` label of the request metrics): gRPC on the gRPC
# port; the Connect protocol (JSON or binary) or gRPC-Web on the HTTP port.
GRPC = "grpc"
CONNECT = "connect"
GRPC_WEB = "grpc-web"
PROTOCOLS = (GRPC, CONNECT, GRPC_WEB)

# Why a late event was refused (metering_late_events_refused_total's `reason`).
LATE_PERIOD_CLOSED = "period_closed"
LATE_BEFORE_FIRST_PERIOD = "before_first_period"
LATE_TOO_OLD = "too_old"
# Outcomes of one Stripe meter event request (metering.delivery.stripe).
STRIPE_SENT = "sent"
STRIPE_FAILED = "failed"

# RPC latency buckets: from a cached read (~0.5 ms) to a stalled database.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, multiprocess: bool = False) -> None:
        """multiprocess: a worker of metering.runtime.supervisor (PROMETHEUS_MULTIPROC_DIR
        is set); its values go to files the supervisor's endpoint sums."""
        self.multiprocess = multiprocess
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        r = self.registry
        self.events = Counter(
            "metering_events", "RecordUsage events by meter and outcome.", ["meter", "outcome"], registry=r
        )
        self.quantity = Counter(
            "metering_quantity_recorded", "Sum of recorded event quantities by meter.", ["meter"], registry=r
        )
        self.limit_rejections = Counter(
            "metering_limit_rejections",
            "Events refused by a hard limit, by meter and plan.",
            ["meter", "plan"],
            registry=r,
        )
        self.overage = Counter(
            "metering_overage_quantity",
            "Quantity recorded past a limit (soft limits, allowed overage), by meter and plan.",
            ["meter", "plan"],
            registry=r,
        )
        # Both edges count here (the name is the gRPC one it always had): `protocol` says
        # which edge and encoding carried the call (PROTOCOLS), `code` is the gRPC status
        # code name whatever the protocol (a Connect refusal's HTTP status follows from it).
        self.requests = Counter(
            "metering_grpc_requests",
            "RPCs by method, status code, caller (a configured caller name, 'anonymous' when the service runs "
            "open or the method needs no credentials, 'unauthenticated' when none was recognised) and protocol "
            "(grpc on the gRPC port; connect, grpc-web on the HTTP port).",
            ["method", "code", "caller", "protocol"],
            registry=r,
        )
        self.latency = Histogram(
            "metering_grpc_request_duration_seconds",
            "RPC latency by method and protocol.",
            ["method", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_batch_size = Histogram(
            "metering_write_batch_events",
            "Events per ledger write transaction of the batching writer.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
            registry=r,
        )
        self.read_batch_size = Histogram(
            "metering_balance_read_batch_reads",
            "Balance reads (CheckBalance, grant listings) answered per database statement.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.invoices_finalized = Counter(
            "metering_invoices_finalized", "Invoices this replica finalized (billing periods closed).", registry=r
        )
        self.late_events_refused = Counter(
            "metering_late_events_refused",
            "New events refused for their time: in a finalized period (period_closed), before the customer's "
            "first period (before_first_period), older than the backfill window (too_old).",
            ["reason"],
            registry=r,
        )
        self.invoice_pricing_failures = Counter(
            "metering_invoice_pricing_failures",
            "Billing periods that could not be priced (a price or plan missing from the catalog, a currency "
            "mismatch), counted once per period and replica; their invoices wait.",
            registry=r,
        )
        self.oldest_unclosed_age = Gauge(
            "metering_invoice_oldest_unclosed_period_age_seconds",
            "Seconds since the oldest billing period not finalized yet ended (0 while none has), as the closer "
            "last measured it; about METERING_INVOICE_GRACE at most while closing keeps up.",
            multiprocess_mode="livemostrecent",  # every worker's closer measures the same backlog
            registry=r,
        )
        self.invoice_grace = Gauge(
            "metering_invoice_grace_seconds",
            "METERING_INVOICE_GRACE: how long an ended period stays a draft.",
            multiprocess_mode="livemax",  # the same setting in every worker
            registry=r,
        )
        # The billing sync to Stripe; only the replica holding the export lock has samples.
        self.stripe_export_lag = Gauge(
            "metering_stripe_export_lag_seconds",
            "Stripe billing sync: how long the oldest closed hour not yet acknowledged by Stripe has been closed, "
            "by meter (0 when every closed hour is exported).",
            ["meter"],
            multiprocess_mode="livemax",  # the lock holder's figure; the other workers report 0
            registry=r,
        )
        self.stripe_meter_events = Counter(
            "metering_stripe_meter_events",
            "Stripe meter event requests by meter and outcome (sent: acknowledged, a repeated identifier included; "
            "failed: refused or unanswered, retried).",
            ["meter", "outcome"],
            registry=r,
        )
        # Not "..._hours_...": a unit word in a name reads as the sample's unit (promtool check metrics).
        self.stripe_events_skipped = Counter(
            "metering_stripe_meter_events_skipped",
            "Meter events not sent to Stripe (one per customer, meter and hour with usage) because their hour was "
            "older than Stripe's 35-day limit, by meter.",
            ["meter"],
            registry=r,
        )
        self.notifications_written = Counter(
            "metering_notifications_written",
            "Notifications written to the outbox (committed), by type.",
            ["type"],
            registry=r,
        )
        for kind in NotificationType:
            self.notifications_written.labels(str(kind))  # every type shows, at 0 until written
        self.webhook_attempts = Counter(
            "metering_webhook_attempts",
            "Webhook delivery attempts by endpoint and outcome (delivered, refused: not 2xx, timeout, unreachable).",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.delivery_lag = Gauge(
            "metering_webhook_delivery_lag_seconds",
            "Age of the oldest notification an endpoint wants and has not received (dead letters aside); "
            "reported by the replica delivering to it, 0 on the others.",
            ["endpoint"],
            multiprocess_mode="livemax",  # the delivering worker's figure; the others report 0
            registry=r,
        )
        self.webhook_dead_letters = Counter(
            "metering_webhook_dead_letters",
            "Notifications given up on after the last attempt, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.webhook_delivery_seconds = Histogram(
            "metering_webhook_delivery_seconds",
            "From a notification's commit to its endpoint's 2xx answer, by endpoint.",
            ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
            registry=r,
        )
        # With METERING_WORKERS > 1 each gauge says how the workers' values
        # add up (prometheus_client's multiprocess mode; "live": a dead
        # worker's value goes with it). A single process ignores the modes.
        self.watch_streams = Gauge(
            "metering_watch_streams_open",
            "WatchNotifications streams being served.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.rate_limited = Counter(
            "metering_rate_limited",
            "Calls refused RATE_LIMITED by the caller's own limits in the auth file, by caller and reason "
            "(rate: its token bucket was empty; concurrency: max_in_flight calls were running). Per process.",
            ["caller", "reason"],
            registry=r,
        )
        self.config_reloads = Counter(
            "metering_config_reloads",
            "Re-reads of a configuration file on SIGHUP, by file (catalog, auth, webhooks) and outcome (applied; "
            "refused: the file has problems or, for the catalog, would strand recorded usage, logged, and the "
            "previous one stays in force).",
            ["file", "outcome"],
            registry=r,
        )
        self.db_up = Gauge(
            "metering_database_up",
            "1 when the last database health probe succeeded (of every worker: 0 if one worker's probe failed).",
            multiprocess_mode="livemin",
            registry=r,
        )
        # Summed over workers: the connections the whole process holds, the
        # figure to compare with PostgreSQL's max_connections.
        self.pool_in_use = Gauge(
            "metering_db_pool_in_use", "Database connections checked out.", multiprocess_mode="livesum", registry=r
        )
        self.pool_size = Gauge(
            "metering_db_pool_size", "Database connections open.", multiprocess_mode="livesum", registry=r
        )
        self.pool_max = Gauge(
            "metering_db_pool_max",
            "Largest number of database connections allowed.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self._pool_readings: tuple[Callable[[], float], Callable[[], float], Callable[[], float]] | None = None
        # The read replica (METERING_READ_DATABASE_URL); no samples without one.
        self.read_replica_lag = Gauge(
            "metering_read_replica_lag_seconds",
            "How far the read replica's data may be behind the primary: seconds since the newest primary WAL "
            "position it is known to have replayed, at its last probe (NaN until known).",
            multiprocess_mode="livemax",  # every worker probes the same replica: the worst figure
            registry=r,
        )
        self.read_replica_up = Gauge(
            "metering_read_replica_up",
            "1 when the last probe reached the read replica and it was a standby.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.read_routes = Counter(
            "metering_read_routes",
            "Connections taken for usage, bill and invoice reads, by the pool that served them (replica, primary) "
            "and why (replica; lag: the replica past METERING_READ_MAX_LAG or not measured yet; replica_down).",
            ["pool", "reason"],
            registry=r,
        )

    def child(self, metric: _Metric, *values: str) -> _Metric:
        """`metric.labels(*values)`, looked up once per label set: labels()
        validates its arguments and takes a lock on every call, which on the
        hot paths (every RPC, every RecordUsage outcome) is a cost per call for
        a child that never changes. Label sets are bounded (see above), so
        this is too."""
        key = (id(metric), values)  # the metrics live as long as this object
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return cast(_Metric, found)

    def init_endpoint(self, endpoint: str, outcomes: Sequence[str]) -> None:
        """Make a configured endpoint's series exist before its first attempt."""
        for outcome in outcomes:
            self.webhook_attempts.labels(endpoint, outcome)
        self.delivery_lag.labels(endpoint).set(0)
        self.webhook_dead_letters.labels(endpoint)
        self.webhook_delivery_seconds.labels(endpoint)

    def count_notifications(self, types: Sequence[NotificationType]) -> None:
        for kind in types:
            self.notifications_written.labels(str(kind)).inc()

    def watch_pool(self, in_use: Callable[[], float], size: Callable[[], float], maximum: Callable[[], float]) -> None:
        """Read the pool's figures at each scrape rather than on every request.
        A worker's scrape happens in the supervisor, which cannot call into
        the worker: there sample_pool() copies them into the gauges."""
        if self.multiprocess:
            self._pool_readings = (in_use, size, maximum)
            self.sample_pool()
            return
        self.pool_in_use.set_function(in_use)
        self.pool_size.set_function(size)
        self.pool_max.set_function(maximum)

    def sample_pool(self) -> None:
        if self._pool_readings is not None:
            in_use, size, maximum = self._pool_readings
            self.pool_in_use.set(in_use())
            self.pool_size.set(size())
            self.pool_max.set(maximum())

    def serve(self, host: str, port: int, state: Callable[[], WorkersState]) -> int:
        """Start the HTTP endpoint of a single process: /metrics, and /health from `state`
        (as a supervisor's: health_answer). Returns the bound port."""
        return _serve_http(host, port, make_wsgi_app(self.registry), state)


@dataclass(frozen=True, slots=True)
class WorkersState:
    """The serving processes of a service: a supervisor's workers (metering.runtime.supervisor),
    or the one process of METERING_WORKERS=1 (configured 1)."""

    configured: int
    serving: int
    restarts: int
    stopping: bool

    @property
    def healthy(self) -> bool:
        return self.serving == self.configured and not self.stopping


class _WorkersCollector(Collector):
    def __init__(self, state: Callable[[], WorkersState]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        yield GaugeMetricFamily("metering_workers", "Worker processes configured (METERING_WORKERS).", state.configured)
        yield GaugeMetricFamily("metering_workers_serving", "Worker processes serving now.", state.serving)
        yield CounterMetricFamily(
            "metering_worker_restarts", "Worker processes started again after they died.", state.restarts
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


def health_answer(state: WorkersState) -> tuple[str, str]:
    """GET /health, the same with one process or many: 200 while every serving process
    serves gRPC, 503 while one is starting or missing, or the service is stopping. It says
    whether the processes serve, not whether the database answers (grpc.health.v1 and
    metering_database_up do): a probe that restarted the service during a database outage
    would not help. Returns the HTTP status line and the body."""
    word = "SERVING" if state.healthy else "NOT_SERVING"
    text = f"{word}: {state.serving} of {state.configured} workers serving{'; stopping' if state.stopping else ''}\n"
    return ("200 OK" if state.healthy else "503 Service Unavailable"), text


def serve_workers(host: str, port: int, directory: str, state: Callable[[], WorkersState]) -> int:
    """A supervisor's HTTP endpoint: /metrics sums what every worker wrote to
    `directory` (counters and histograms added up, gauges by their
    multiprocess_mode), with the supervisor's own worker figures; /health as
    health_answer says. Returns the bound port."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(_WorkersCollector(state))
    return _serve_http(host, port, make_wsgi_app(registry), state)


def _serve_http(host: str, port: int, metrics_app: Any, state: Callable[[], WorkersState]) -> int:
    """The metrics port: /health (health_answer), everything else the metrics page."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes] | list[bytes]:
        if environ.get("PATH_INFO") != "/health":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        status, text = health_answer(state())
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [text.encode()]

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    server = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return int(server.server_port)
