"""Settings from environment variables: the one place that reads them.

Every variable is listed in the configuration table (docs/configuration.md); `Settings.from_env`
refuses a malformed value with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

_DURATION_RE = re.compile(r"^(?P<value>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h|d)\Z")  # \Z: no trailing newline
MAX_WORKERS = 256
# METERING_EVENT_LOOP: the event loop of every serving process (uvloop: the `metering[uvloop]` extra).
EVENT_LOOPS = ("asyncio", "uvloop")
_ORIGIN_RE = re.compile(r"^https?://[^/\s:]+(:[0-9]{1,5})?\Z")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None  # None: start an embedded PostgreSQL; may name several hosts (failover)
    grpc_host: str  # unset: every interface with an auth file, else loopback only (default_host)
    grpc_port: int  # 0: any free port (printed at start-up)
    metrics_host: str
    metrics_port: int  # 0: any free port (printed at start-up)
    catalog_path: str | None  # None: the packaged sample catalog
    db_pool_min: int
    db_pool_max: int
    db_timeout: timedelta  # connect, acquire and statement timeout
    health_interval: timedelta
    backfill_window: timedelta
    # How long before a customer's billing anchor a new event may be stamped and
    # still count in its first period (clock skew between services, work begun
    # just before sign-up); earlier is BEFORE_FIRST_PERIOD.
    anchor_skew_tolerance: timedelta
    shutdown_grace: timedelta
    embedded_data_dir: str
    log_level: str
    log_format: str  # "text" or "json" (metering.telemetry.logs): one line per record either way
    # OpenTelemetry traces (metering.telemetry.tracing), on when an OTLP endpoint is set;
    # the SDK reads the other OTEL_* variables itself.
    tracing: bool
    bench_noop: bool  # serve the benchmark-only no-op method
    writer_workers: int  # concurrent write transactions of the batching writer
    writer_bulk_workers: int  # more of them, taking the queue only while half a batch or more waits
    writer_linger: timedelta  # under concurrent load, how long a writer waits for more calls to join a batch
    read_linger: timedelta  # under concurrent load, how long a counter read waits for more to share its statement
    auth_file: str | None  # callers, roles and token digests (metering.domain.access); None: no authentication
    allow_unauthenticated: bool  # run open against an external database (embedded runs open anyway)
    tls_cert: str | None  # PEM server certificate chain; with tls_key: serve TLS
    tls_key: str | None
    tls_client_ca: str | None  # PEM CA bundle: require client certificates signed by it (mTLS)
    max_message_bytes: int  # largest request or response message
    invoice_grace: timedelta  # how long an ended billing period stays a draft before its invoice is finalized
    close_interval: timedelta  # how often the closer looks for periods to finalize
    test_only_close_pause: timedelta  # tests only: a sleep inside each closing transaction (a window to kill in)
    # The billing sync to Stripe (metering.delivery.stripe): off while stripe_file is None.
    stripe_file: str | None  # meters and customers mapped to Stripe (metering.config.stripe)
    # Secret: never in a repr, a log line or a metric.
    stripe_api_key: str | None = field(repr=False)
    stripe_api_base: str  # the library's api base: Stripe itself, or a stand-in in the tests
    stripe_settle_delay: timedelta  # an hour is exported once it ended this long ago
    stripe_interval: timedelta  # how often the exporter looks for closed hours
    stripe_timeout: timedelta  # one Stripe request
    notification_retention: timedelta  # delivered notifications are deleted this long after they were written
    notification_poll: timedelta  # outbox readers look again this often without a LISTEN wake-up
    webhooks_file: str | None  # webhook endpoints (metering.config.endpoints); None: no webhooks
    webhook_timeout: timedelta  # an attempt that has no 2xx answer by then failed
    webhook_retry_schedule: tuple[timedelta, ...]  # the wait before each attempt, the first one's included
    webhook_lease: timedelta  # how long a replica's claim on an endpoint lasts without renewal
    pid_file: str | None  # serve writes its pid there (for `metering reload`); None: no pid file
    rate_limit_hold: timedelta  # how long a RATE_LIMITED refusal may be held until its retry slot; 0: at once
    workers: int  # serving processes sharing the gRPC port (metering.runtime.supervisor); 1: this process serves
    shutdown_delay: timedelta  # on SIGTERM: NOT_SERVING, still serving, this long before the drain
    event_loop: str  # "asyncio" or "uvloop": the event loop of every serving process
    # A streaming replica for usage, bill and invoice reads (metering.ledger.replica); None: the primary.
    read_database_url: str | None = None
    read_max_lag: timedelta = timedelta(seconds=5)  # reads go to the primary past this replica lag
    # The HTTP edge (metering.api.http): Connect, gRPC-Web and GET /healthz on their own port.
    http_host: str = "127.0.0.1"  # METERING_HTTP_HOST, else the gRPC host (and its default)
    http_port: int | None = 8080  # 0: any free port (printed at start-up); None (`off`): no HTTP edge
    http_cors_origins: tuple[str, ...] = ()  # origins browsers may call from ("*": any); none by default
    # How long one host of METERING_DATABASE_URL may take to connect before the
    # next is tried (a silent host costs this, not the whole METERING_DB_TIMEOUT).
    db_connect_timeout: timedelta = timedelta(seconds=1)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reader = _Reader(env)
        auth_file = reader.text("METERING_AUTH_FILE") or None
        grpc_host = reader.text("METERING_GRPC_HOST") or default_host(auth_file)
        settings = cls(
            database_url=reader.text("METERING_DATABASE_URL") or None,
            grpc_host=grpc_host,
            grpc_port=reader.port("METERING_GRPC_PORT", 50051),
            metrics_host=reader.text("METERING_METRICS_HOST") or default_host(auth_file),
            metrics_port=reader.port("METERING_METRICS_PORT", 9464),
            catalog_path=reader.text("METERING_CATALOG") or None,
            db_pool_min=reader.integer("METERING_DB_POOL_MIN", 2, minimum=0),
            db_pool_max=reader.integer("METERING_DB_POOL_MAX", 10, minimum=1),
            db_timeout=reader.duration("METERING_DB_TIMEOUT", "2s"),
            health_interval=reader.duration("METERING_HEALTH_INTERVAL", "1s"),
            backfill_window=reader.duration("METERING_BACKFILL_WINDOW", "35d"),
            # As far as an event may be ahead of the server's clock (5 minutes, the
            # validation's future tolerance): the same clock skew, the other way.
            anchor_skew_tolerance=reader.duration("METERING_ANCHOR_SKEW_TOLERANCE", "5m"),
            shutdown_grace=reader.duration("METERING_SHUTDOWN_GRACE", "10s"),
            embedded_data_dir=reader.text("METERING_EMBEDDED_DATA_DIR", ".metering/pgdata"),
            log_level=reader.text("METERING_LOG_LEVEL", "INFO").upper(),
            log_format=reader.choice("METERING_LOG_FORMAT", "text", ("text", "json")),
            tracing=_tracing(reader),
            bench_noop=reader.text("METERING_BENCH_NOOP") == "1",
            writer_workers=reader.integer("METERING_WRITER_WORKERS", 1, minimum=1, maximum=32),
            writer_bulk_workers=reader.integer("METERING_WRITER_BULK_WORKERS", 1, minimum=0, maximum=8),
            writer_linger=reader.duration("METERING_WRITER_LINGER", "2ms"),
            read_linger=reader.duration("METERING_READ_LINGER", "1ms"),
            auth_file=auth_file,
            allow_unauthenticated=reader.flag("METERING_ALLOW_UNAUTHENTICATED"),
            tls_cert=reader.text("METERING_TLS_CERT") or None,
            tls_key=reader.text("METERING_TLS_KEY") or None,
            tls_client_ca=reader.text("METERING_TLS_CLIENT_CA") or None,
            max_message_bytes=reader.integer(
                "METERING_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024
            ),
            invoice_grace=reader.duration("METERING_INVOICE_GRACE", "1h"),
            close_interval=reader.duration("METERING_CLOSE_INTERVAL", "10s"),
            test_only_close_pause=reader.duration("METERING_TEST_ONLY_CLOSE_PAUSE", "0s"),
            stripe_file=reader.text("METERING_STRIPE_FILE") or None,
            # Stripe's own variable name too, so an existing deployment secret can be reused.
            stripe_api_key=reader.text("METERING_STRIPE_API_KEY") or reader.text("STRIPE_API_KEY") or None,
            stripe_api_base=reader.text("METERING_STRIPE_API_BASE", "https://api.stripe.com").rstrip("/"),
            stripe_settle_delay=reader.duration("METERING_STRIPE_SETTLE_DELAY", "5m"),
            stripe_interval=reader.duration("METERING_STRIPE_INTERVAL", "10s"),
            stripe_timeout=reader.duration("METERING_STRIPE_TIMEOUT", "10s"),
            notification_retention=reader.duration("METERING_NOTIFICATION_RETENTION", "30d"),
            notification_poll=reader.duration("METERING_NOTIFICATION_POLL", "1s"),
            webhooks_file=reader.text("METERING_WEBHOOKS_FILE") or None,
            webhook_timeout=reader.duration("METERING_WEBHOOK_TIMEOUT", "10s"),
            # Svix's schedule: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h.
            webhook_retry_schedule=reader.durations("METERING_WEBHOOK_RETRY_SCHEDULE", "0s,5s,5m,30m,2h,5h,10h,10h"),
            webhook_lease=reader.duration("METERING_WEBHOOK_LEASE", "10s"),
            pid_file=reader.text("METERING_PID_FILE") or None,
            rate_limit_hold=reader.duration("METERING_RATE_LIMIT_HOLD", "1s"),
            read_database_url=reader.text("METERING_READ_DATABASE_URL") or None,
            read_max_lag=reader.duration("METERING_READ_MAX_LAG", "5s"),
            workers=reader.workers("METERING_WORKERS"),
            shutdown_delay=reader.duration("METERING_SHUTDOWN_DELAY", "0s"),
            event_loop=reader.choice("METERING_EVENT_LOOP", "asyncio", EVENT_LOOPS),
            # The gRPC host unless said otherwise: one variable keeps both edges on loopback.
            http_host=reader.text("METERING_HTTP_HOST") or grpc_host,
            http_port=reader.optional_port("METERING_HTTP_PORT", 8080),
            http_cors_origins=reader.origins("METERING_HTTP_CORS_ORIGINS"),
            db_connect_timeout=_connect_timeout(reader),
        )
        if not timedelta(0) <= settings.anchor_skew_tolerance <= timedelta(days=1):
            raise ConfigError("METERING_ANCHOR_SKEW_TOLERANCE must be between 0s and 1d (a clock skew, not a backfill)")
        if settings.close_interval <= timedelta(0):
            raise ConfigError("METERING_CLOSE_INTERVAL must be more than 0")
        if settings.db_pool_min > settings.db_pool_max:
            raise ConfigError("METERING_DB_POOL_MIN must not exceed METERING_DB_POOL_MAX")
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise ConfigError("METERING_TLS_CERT and METERING_TLS_KEY go together: set both or neither")
        if settings.tls_client_ca is not None and settings.tls_cert is None:
            raise ConfigError("METERING_TLS_CLIENT_CA needs METERING_TLS_CERT and METERING_TLS_KEY (mTLS is TLS)")
        if settings.notification_poll <= timedelta(0) or settings.webhook_timeout <= timedelta(0):
            raise ConfigError("METERING_NOTIFICATION_POLL and METERING_WEBHOOK_TIMEOUT must be greater than 0")
        if settings.webhook_lease < timedelta(seconds=1):
            raise ConfigError("METERING_WEBHOOK_LEASE must be at least 1s")
        if settings.auth_file is not None and settings.allow_unauthenticated:
            raise ConfigError("METERING_AUTH_FILE and METERING_ALLOW_UNAUTHENTICATED=1 contradict each other")
        if settings.stripe_file is not None and settings.stripe_api_key is None:
            raise ConfigError("METERING_STRIPE_FILE needs the API key in METERING_STRIPE_API_KEY (or STRIPE_API_KEY)")
        if not re.match(r"^https?://[^/\s]+(/\S*)?\Z", settings.stripe_api_base):
            raise ConfigError(f"METERING_STRIPE_API_BASE={settings.stripe_api_base!r}: expected an http(s) URL")
        if settings.stripe_interval <= timedelta(0):
            raise ConfigError("METERING_STRIPE_INTERVAL must be more than 0")
        if settings.database_url is not None:
            _check_hosts(settings.database_url)
        if settings.read_database_url is not None and settings.database_url is None:
            raise ConfigError("METERING_READ_DATABASE_URL is a replica of METERING_DATABASE_URL: set both")
        if not timedelta(0) < settings.db_connect_timeout < settings.db_timeout:
            raise ConfigError(
                "METERING_DB_CONNECT_TIMEOUT must be more than 0 and less than METERING_DB_TIMEOUT "
                "(each host of the URL gets it, within the call's METERING_DB_TIMEOUT)"
            )
        if settings.read_max_lag <= timedelta(0):
            raise ConfigError("METERING_READ_MAX_LAG must be more than 0")
        return settings


def default_host(auth_file: str | None) -> str:
    """Where the service listens when METERING_GRPC_HOST (or METERING_METRICS_HOST) is unset:
    on every interface only when callers must authenticate (an auth file); while anyone may
    call, on this machine only."""
    return "0.0.0.0" if auth_file else "127.0.0.1"  # noqa: S104 - a network service, once callers authenticate


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the port on this machine (127.0.0.0/8, ::1, localhost).
    Any other name is taken as reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Reader:
    env: Mapping[str, str]

    def text(self, name: str, default: str = "") -> str:
        return self.env.get(name, default).strip()

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(f"{name}={raw!r}: must be at least {minimum}{upper}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self.text(name, default).lower()
        if raw not in choices:
            raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
        return raw

    def workers(self, name: str) -> int:
        """A process count, or `auto`: the CPUs this process may run on."""
        if self.text(name).lower() == "auto":
            return len(os.sched_getaffinity(0))
        return self.integer(name, 1, minimum=1, maximum=MAX_WORKERS)

    def flag(self, name: str) -> bool:
        raw = self.text(name).lower()
        if raw in ("", "0", "false", "no"):
            return False
        if raw in ("1", "true", "yes"):
            return True
        raise ConfigError(f"{name}={raw!r}: expected 1 or 0 (true or false)")

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, minimum=0, maximum=65535)

    def optional_port(self, name: str, default: int) -> int | None:
        """A port, or `off`: None."""
        if self.text(name).lower() == "off":
            return None
        return self.port(name, default)

    def origins(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of web origins (scheme://host[:port]), or `*`."""
        origins = tuple(part.strip().rstrip("/") for part in self.text(name).split(",") if part.strip())
        for origin in origins:
            if origin != "*" and not _ORIGIN_RE.match(origin):
                raise ConfigError(f"{name}: {origin!r} is not an origin such as https://app.example.com or *")
        return origins

    def duration(self, name: str, default: str) -> timedelta:
        raw = self.text(name) or default
        return _duration(name, raw)

    def durations(self, name: str, default: str) -> tuple[timedelta, ...]:
        """A comma-separated, non-empty list of durations."""
        raw = self.text(name) or default
        return tuple(_duration(name, part.strip()) for part in raw.split(","))


def _tracing(reader: _Reader) -> bool:
    """Whether to export traces: the standard OTLP endpoint variables switch
    them on, OTEL_SDK_DISABLED=true off. Only OTLP over gRPC is shipped."""
    endpoint = reader.text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or reader.text("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or reader.text("OTEL_SDK_DISABLED").lower() == "true":
        return False
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = reader.text(name)
        if protocol:
            if protocol != "grpc":
                raise ConfigError(f"{name}={protocol!r}: this service exports traces over OTLP/gRPC only (grpc)")
            break
    return True


# METERING_DB_CONNECT_TIMEOUT's default: 1 s, or half of METERING_DB_TIMEOUT if that is less,
# so that a silent first host leaves the second the other half.
DEFAULT_CONNECT_TIMEOUT = timedelta(seconds=1)


def _connect_timeout(reader: _Reader) -> timedelta:
    if reader.text("METERING_DB_CONNECT_TIMEOUT"):
        return reader.duration("METERING_DB_CONNECT_TIMEOUT", "1s")
    return min(DEFAULT_CONNECT_TIMEOUT, reader.duration("METERING_DB_TIMEOUT", "2s") / 2)


def _check_hosts(url: str) -> None:
    """A METERING_DATABASE_URL with several hosts must say which one to use:
    without target_session_attrs=read-write (or primary), libpq's default
    (any) would keep a connection to the first host that answers, a standby
    included, and every write would fail there."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or "," not in parts.netloc:
        return
    attrs = parse_qs(parts.query).get("target_session_attrs", [])
    if not attrs or attrs[-1] not in ("read-write", "primary"):
        raise ConfigError(
            "METERING_DATABASE_URL names several hosts: add ?target_session_attrs=read-write so that the "
            "service connects to whichever of them is the primary"
        )


def _duration(name: str, raw: str) -> timedelta:
    match = _DURATION_RE.match(raw)
    if match is None:
        raise ConfigError(f"{name}={raw!r}: expected a duration such as 500ms, 2s, 5m, 12h or 35d")
    return timedelta(seconds=float(match.group("value")) * _UNITS[match.group("unit")])
