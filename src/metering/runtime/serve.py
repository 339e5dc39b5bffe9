"""The service process's lifecycle: start-up, serving, shutdown.

Start-up order matters: the catalog and the other operator files are checked
first (a bad file must not touch the database), then the database is reached
(waiting for it to come up), migrations are applied under their advisory
lock, the parts are built once (metering.runtime.wiring) and started, and
only then does the server accept calls. SIGHUP re-reads the auth and webhooks
files (metering.runtime.reload).

Everything started is stopped in reverse order of start, each step awaited
before the next, by one AsyncExitStack: on SIGTERM or SIGINT, on a background
task's failure (below), or on a failure of start-up itself. Hence, in order:

1. the reload handler (a reload in progress is dropped; the files in force stay);
2. health NOT_SERVING (load balancers stop sending new calls), then serving
   on for METERING_SHUTDOWN_DELAY;
3. the Stripe exporter (an event in flight is sent again by whichever replica
   exports next) and the closer (a close in flight rolls back, and is redone);
4. the drain: new calls are held by the edges' gate (metering.api.drain),
   the health and notification streams end, in-flight calls have
   METERING_SHUTDOWN_GRACE to finish, the gRPC server and the HTTP edge stop
   accepting calls, and the held calls are answered UNAVAILABLE
   (SHUTTING_DOWN), never CANCELLED;
5. retention, the replica probe, the pool sampler, the health probe, webhook
   delivery (an attempt in flight is abandoned: it is sent again, with the
   same webhook-id) and the outbox LISTEN;
6. the batch writer (after the drain: in-flight calls have their answers),
   the replica's pool, the primary's pool, the embedded database, the pid
   file and tracing.

A background task runs until it is cancelled, handling the failures it
expects itself (the database away, an endpoint or Stripe refusing: logged,
retried). One that ends otherwise is a bug; it is logged with its traceback
when it ends, never left for the garbage collector, and:

- the health probe, replica probe, closer, Stripe exporter, retention and the
  reload handler stop the process as SIGTERM does, which then exits 1 so that
  its supervisor or orchestrator starts it again: without them it would
  report a health it no longer checks, route reads on a stale lag, leave
  periods open, the export or the outbox growing, or ignore SIGHUP while the
  operator believes a token revoked (a fresh start reads the files);
- the pool sampler of a worker (metrics only) is logged, and the worker
  serves on with those gauges frozen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from metering.api.health import METERING_SERVICE
from metering.api.page_tokens import PageTokens
from metering.config.files import Config, load_config
from metering.config.settings import ConfigError, Settings
from metering.domain.access import AccessPolicy
from metering.ledger.maintenance import signing_key
from metering.ledger.pool import Pool, is_unavailable
from metering.runtime.database import Database, connect, open_database, open_replica_pool, prepare_database
from metering.runtime.wiring import Pools, Service, build, server_credentials
from metering.telemetry import logs
from metering.telemetry.metrics import Metrics, WorkersState
from metering.telemetry.tracing import Tracing
from metering.telemetry.tracing import start as start_tracing

log = logging.getLogger(__name__)

# Net allocations of container objects between two young garbage collections
# (Python's default: 700). See _start_serving.
GC_THRESHOLD = 20_000
# A worker's first line on stdout once it serves; its supervisor waits for it.
WORKER_READY = "metering worker"


@dataclass
class Serving:
    """Whether this process serves gRPC and whether it is stopping, for GET /health on its
    metrics port (a single process's; a supervisor answers for its workers, the same way).
    Read from the metrics thread: plain attribute reads."""

    started: bool = False
    stopping: bool = False  # from SIGTERM on: NOT_SERVING, though calls are served until the drain

    def state(self) -> WorkersState:
        return WorkersState(configured=1, serving=1 if self.started else 0, restarts=0, stopping=self.stopping)


class BackgroundFailed(RuntimeError):
    """A background task failed and the process stopped for it (exit status 1)."""


@dataclass(frozen=True)
class Signals:
    """What the process was asked to do by its signals (or by a background task that failed)."""

    stop: asyncio.Event  # SIGTERM, SIGINT, or a background task's failure
    reload: asyncio.Event  # SIGHUP


def handle_signals() -> Signals:
    """From here on SIGTERM or SIGINT drains instead of killing, and SIGHUP
    (whose default would end the process) asks for a reload."""
    signals = Signals(asyncio.Event(), asyncio.Event())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.stop.set)
    loop.add_signal_handler(signal.SIGHUP, signals.reload.set)
    return signals


class Background:
    """The lifecycle's background tasks. Each is cancelled and then awaited by
    the exit stack, in its place among everything else started; one that ends
    by itself is logged at once, and stops the process if it is `fatal`."""

    def __init__(self, stack: contextlib.AsyncExitStack, stop: asyncio.Event) -> None:
        self._stack = stack
        self._stop = stop
        self.failed: list[str] = []  # the fatal tasks that ended by themselves

    def start(self, name: str, run: Coroutine[Any, Any, None], *, fatal: bool = True) -> None:
        task = asyncio.create_task(run, name=name)
        task.add_done_callback(functools.partial(self._ended, fatal))
        self._stack.push_async_callback(_cancel_and_wait, task)

    def _ended(self, fatal: bool, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()  # read here: never "Task exception was never retrieved"
        consequence = "the service stops" if fatal else "serving on without it"
        if error is None:
            log.error("background task %r ended by itself; %s", task.get_name(), consequence)
        else:
            log.error("background task %r failed; %s", task.get_name(), consequence, exc_info=error)
        if fatal:
            self.failed.append(task.get_name())
            self._stop.set()


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory of METERING_EVENT_LOOP (None: asyncio's own loop)."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "METERING_EVENT_LOOP=uvloop: uvloop is not installed (install the metering[uvloop] extra)"
        ) from None
    return uvloop.new_event_loop


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    # Not `await task`: its own outcome was read by Background._ended; only
    # this coroutine's cancellation (if any) may propagate from here.
    await asyncio.wait({task})


async def serve(settings: Settings, worker: int | None = None) -> None:
    """Serve in this process: on its own, or as worker number `worker` of a
    supervisor (metering.runtime.supervisor), which has applied the migrations,
    reserved the port and serves the metrics of every worker."""
    config = load_config(settings)
    credentials = server_credentials(settings)  # read before the database is touched, like the files
    async with contextlib.AsyncExitStack() as stack:
        tracing = _start_tracing(stack, settings)
        signals = handle_signals()  # first: a SIGTERM at any later instant drains
        # `metering reload` signals the process it finds there: a supervisor's
        # workers leave it to their supervisor, which forwards SIGHUP to each.
        _own_pid_file(stack, settings.pid_file if worker is None else None)
        database, pools = await _open_database(stack, config, worker)
        service = build(config, pools, await _page_tokens(pools.primary), worker=worker, tracing=tracing)
        stack.push_async_callback(service.stores.writer.close)  # its workers run from construction
        background = Background(stack, signals.stop)
        await _start_beside_the_server(stack, service, background, worker)
        serving = Serving()
        grpc_port, http_port, metrics_port = await _start_serving(stack, service, credentials, worker, serving)
        _start_after_serving(stack, service, background, signals, serving)
        _announce(service, database, grpc_port, http_port, metrics_port, worker, tracing=tracing is not None)
        await signals.stop.wait()
    log.info("stopped")
    if background.failed:
        raise BackgroundFailed(f"background task {', '.join(background.failed)} failed (see the log)")


def _start_tracing(stack: contextlib.AsyncExitStack, settings: Settings) -> Tracing | None:
    if not settings.tracing:
        return None
    tracing = start_tracing()
    logs.add_trace_ids(tracing.current_ids)
    stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
    return tracing


def _own_pid_file(stack: contextlib.AsyncExitStack, path: str | None) -> None:
    write_pid_file(path)
    stack.callback(remove_pid_file, path)


async def _open_database(
    stack: contextlib.AsyncExitStack, config: Config, worker: int | None
) -> tuple[Database, Pools]:
    settings = config.settings
    database = await asyncio.to_thread(open_database, settings)
    stack.push_async_callback(asyncio.to_thread, database.close)
    primary = await connect(settings, database.url)
    stack.push_async_callback(primary.close)
    if worker is None:  # a supervisor has done it once for all its workers
        await prepare_database(primary, config.catalog)
    replica = await open_replica_pool(settings)
    if replica is not None:
        stack.push_async_callback(replica.close)
    return database, Pools(database.url, primary, replica)


async def _page_tokens(pool: Pool) -> PageTokens:
    return PageTokens(await signing_key(pool))


async def _start_beside_the_server(
    stack: contextlib.AsyncExitStack, service: Service, background: Background, worker: int | None
) -> None:
    """What runs beside the server, whatever it serves: started before it
    serves, stopped after its drain."""
    settings = service.config.settings
    delivery = service.delivery
    delivery.wakeup.start()
    stack.push_async_callback(delivery.wakeup.close)
    delivery.webhooks.start()
    stack.push_async_callback(delivery.webhooks.close)
    await service.health.probe()
    background.start("health probe", service.health.run())
    if worker is not None:
        background.start("pool sampler", _sample_pool(service.metrics, settings), fatal=False)
    if service.reads.router is not None:
        await service.reads.router.probe()  # reads start on the replica only once its lag is known
        background.start("replica probe", service.reads.router.run(settings.health_interval.total_seconds()))
    background.start("retention", delivery.retention.run())


async def _start_serving(
    stack: contextlib.AsyncExitStack,
    service: Service,
    credentials: grpc.ServerCredentials | None,
    worker: int | None,
    serving: Serving,
) -> tuple[int, int | None, int | None]:
    """Listen and serve; returns the gRPC port, the HTTP port (None: off) and the
    metrics port (None: a worker's metrics are served by its supervisor, summed
    with the others'). The HTTP edge starts once the gRPC server serves, and
    both stop in the drain."""
    settings = service.config.settings
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if credentials is None:
        grpc_port = service.server.add_insecure_port(address)
    else:
        grpc_port = service.server.add_secure_port(address, credentials)
    metrics_port = None
    if worker is None:
        metrics_port = service.metrics.serve(settings.metrics_host, settings.metrics_port, serving.state)
    # A batch of 1000 events holds tens of thousands of small objects until
    # it is answered. At the default threshold (700) they set off young
    # collections that promote them, and full collections that walk the
    # whole heap, several times per batch: about a fifth of the CPU of a
    # RecordUsageBatch. Collecting every 20,000 allocations lets most of
    # them die young (measured: garbage collection from ~20% to ~4%).
    gc.set_threshold(GC_THRESHOLD)
    await service.server.start()
    stack.push_async_callback(_drain, service)
    http_port = None if service.http is None else await service.http.start()
    serving.started = True  # GET /health: 200 once both edges serve
    return grpc_port, http_port, metrics_port


def _start_after_serving(
    stack: contextlib.AsyncExitStack, service: Service, background: Background, signals: Signals, serving: Serving
) -> None:
    """The closer and the exporter stop before the drain, once the balancers
    have had METERING_SHUTDOWN_DELAY to see NOT_SERVING; the reload handler
    stops first of all."""
    # Every replica runs the closer: they share the due customers without
    # closing any period twice (metering.ledger.invoicing).
    background.start("closer", service.closer.run())
    if service.delivery.exporter is not None:
        background.start("Stripe exporter", service.delivery.exporter.run())
    stack.push_async_callback(_leave_the_balancers, service, serving)
    background.start("reload handler", service.reloader.run(signals.reload))


async def _leave_the_balancers(service: Service, serving: Serving) -> None:
    serving.stopping = True  # GET /health: 503 from now on
    await service.health.shutting_down()  # NOT_SERVING first: load balancers stop sending new calls
    delay = service.config.settings.shutdown_delay.total_seconds()
    if delay:
        # Until the balancers have seen NOT_SERVING, calls keep coming: serve them.
        log.info("stopping: health NOT_SERVING, serving on for %ss", delay)
        await asyncio.sleep(delay)


# How long the drain lets clients whose answer just left send their next call
# (held by the gate) before the servers stop: longer than the RetryInfo delay of
# a refusal (SHUTTING_DOWN_RETRY_SECONDS), so a client refused a moment before
# comes back into the parked phase, not into the stop. See metering.api.drain.
DRAIN_PARK_SECONDS = 0.3
# How long after the stop began the held calls are answered.
DRAIN_SETTLE_SECONDS = 0.1


async def _drain(service: Service) -> None:
    """New calls refused by the gate (metering.api.drain) while the calls in
    flight are given up to METERING_SHUTDOWN_GRACE, then held, the servers
    stopped and the held calls answered UNAVAILABLE (SHUTTING_DOWN): none
    arrives as the servers stop, when grpc.aio would cancel it (CANCELLED)."""
    grace = service.config.settings.shutdown_grace.total_seconds()
    log.info("stopping: draining in-flight calls for up to %ss", grace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    service.drain.close()
    service.delivery.stream.close()
    service.health.end_watches()
    await service.drain.wait_idle(grace)
    service.drain.park()
    await asyncio.sleep(min(DRAIN_PARK_SECONDS, max(0.0, deadline - loop.time())))
    left = max(0.0, deadline - loop.time())
    # Both edges stop at once, each giving what may still be in flight the rest of the grace.
    stops = (
        [service.server.stop(left)] if service.http is None else [service.server.stop(left), service.http.stop(left)]
    )
    stopping = asyncio.gather(*stops)
    await asyncio.sleep(DRAIN_SETTLE_SECONDS)  # the servers listen no more and have told their connections so
    service.drain.release()
    await stopping


async def _sample_pool(metrics: Metrics, settings: Settings) -> None:
    """A worker's pool gauges, refreshed as often as health is probed."""
    while True:
        metrics.sample_pool()
        await asyncio.sleep(settings.health_interval.total_seconds())


def _announce(
    service: Service,
    database: Database,
    grpc_port: int,
    http_port: int | None,
    metrics_port: int | None,
    worker: int | None,
    *,
    tracing: bool,
) -> None:
    settings = service.config.settings
    if worker is not None:
        # The supervisor waits for this line (metering.runtime.supervisor.WORKER_READY).
        http = "" if http_port is None else f" and http://{settings.http_host}:{http_port}"
        print(f"{WORKER_READY} {worker} pid {os.getpid()} on {settings.grpc_host}:{grpc_port}{http}", flush=True)
        return
    # Announce on stdout: people read it, and so do the tests (port 0 picks a free port).
    print(announcement(service.config, database, grpc_port, http_port, metrics_port, tracing=tracing), flush=True)


def announcement(
    config: Config,
    database: Database,
    grpc_port: int,
    http_port: int | None,
    metrics_port: int | None,
    workers: int = 1,
    *,
    tracing: bool = False,
) -> str:
    """The line that says the service serves (tests read the ports from it)."""
    settings, stripe_mapping = config.settings, config.stripe_mapping
    http = "HTTP off" if http_port is None else f"HTTP (Connect, gRPC-Web) on http://{settings.http_host}:{http_port}"
    return (
        f"metering: serving {METERING_SERVICE} on {settings.grpc_host}:{grpc_port}; {http}; "
        f"metrics on http://{settings.metrics_host}:{metrics_port}/metrics; "
        f"{'' if workers == 1 else f'{workers} worker processes; '}"
        f"catalog {config.catalog.source}; database {'embedded' if database.embedded else 'external'}; "
        f"{_security_summary(settings, config.policy)}"
        f"{'' if stripe_mapping is None else f'; Stripe sync on ({len(stripe_mapping.meters)} meters)'}"
        f"{'' if not tracing else '; tracing on (OTLP/gRPC)'}"
    )


def _security_summary(settings: Settings, policy: AccessPolicy | None) -> str:
    transport = "plaintext" if settings.tls_cert is None else ("mTLS" if settings.tls_client_ca else "TLS")
    callers = "auth OFF (open to anyone)" if policy is None else f"auth on ({len(policy.callers)} callers)"
    return f"{transport}, {callers}"


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
