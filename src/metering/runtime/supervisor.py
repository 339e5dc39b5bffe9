"""`metering serve` with METERING_WORKERS > 1: a supervisor and N worker processes.

Python serves gRPC on about one core per process, so one machine's cores need
several processes. The supervisor creates no gRPC object (gRPC's fork
caveats: a process that forks after gRPC started its threads hands the child
a broken copy). It checks the configuration, starts the embedded database if
there is one, applies migrations once, reserves the port, and starts each
worker as a fresh interpreter (`metering serve --worker N`: spawned, not
forked). Every worker binds the reserved port with SO_REUSEPORT, so the
kernel spreads incoming connections over them; each has its own event loop,
pool and gRPC health service, and writes its metrics to files in a private
directory that the supervisor's /metrics endpoint sums.

SIGTERM or SIGINT to the supervisor: every worker gets SIGTERM and does the
single process's shutdown (NOT_SERVING, METERING_SHUTDOWN_DELAY, the drain);
the supervisor exits once they all have. SIGHUP is forwarded to every worker.
The HTTP edge's port (METERING_HTTP_PORT) is reserved and shared the same way.
A worker that dies is started again after a back-off that grows while it keeps
dying young (restart_delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import multiprocess

from metering.config.files import Config, load_config
from metering.config.settings import Settings
from metering.runtime.database import Database, connect, open_database, prepare_database
from metering.runtime.serve import WORKER_READY, announcement, remove_pid_file, write_pid_file
from metering.telemetry.metrics import WorkersState, serve_workers

log = logging.getLogger(__name__)

# The first restart waits RESTART_BASE_SECONDS, each further quick death twice
# as long, up to RESTART_MAX_SECONDS; a worker that served STABLE_SECONDS
# before dying starts the count again.
RESTART_BASE_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
STABLE_SECONDS = 60.0
# How long the first start of every worker may take (each waits for the database).
STARTUP_SECONDS = 90.0
# Beyond the shutdown delay and grace, how long the workers may take to exit before they are killed.
STOP_MARGIN_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def restart_delay(failures: int) -> float:
    """Seconds before starting again a worker that died young `failures`
    times in a row (1: this is the first)."""
    doublings = min(max(1, failures) - 1, 32)  # far past the cap already; no float overflow
    return min(RESTART_MAX_SECONDS, RESTART_BASE_SECONDS * 2.0**doublings)


def consecutive_failures(previous: int, lived_seconds: float) -> int:
    """The count restart_delay takes, after a worker died having lived `lived_seconds`."""
    return 1 if lived_seconds >= STABLE_SECONDS else previous + 1


class WorkerFailed(RuntimeError):
    """A worker exited before it first served: start-up cannot succeed."""


@dataclass(eq=False)
class _Slot:
    index: int
    first_ready: asyncio.Future[None]
    process: asyncio.subprocess.Process | None = None
    serving: bool = False
    failures: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Keeps `count` workers running `command + [index]` with `env`."""

    def __init__(self, count: int, command: list[str], env: dict[str, str], metrics_dir: str) -> None:
        loop = asyncio.get_running_loop()
        self._slots = [_Slot(index, loop.create_future()) for index in range(count)]
        self._command = command
        self._env = env
        self._metrics_dir = metrics_dir
        self._stopping = asyncio.Event()
        self._restarts = 0

    def state(self) -> WorkersState:
        """Read from the metrics thread: plain attribute reads, no locking needed."""
        return WorkersState(
            configured=len(self._slots),
            serving=sum(1 for slot in self._slots if slot.serving),
            restarts=self._restarts,
            stopping=self._stopping.is_set(),
        )

    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    async def start(self) -> None:
        """Start every worker and return once each serves (WorkerFailed if one exits first)."""
        for slot in self._slots:
            slot.task = asyncio.create_task(self._keep(slot))
        await asyncio.wait_for(asyncio.gather(*(slot.first_ready for slot in self._slots)), STARTUP_SECONDS)

    def forward(self, signum: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signum)

    async def stop(self, kill_after: float) -> None:
        """SIGTERM to every worker; SIGKILL to those still running `kill_after` seconds later."""
        self._stopping.set()
        for slot in self._slots:
            if not slot.first_ready.done():  # nobody waits for it any more
                slot.first_ready.cancel()
        self.forward(signal.SIGTERM)
        tasks = [slot.task for slot in self._slots if slot.task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=kill_after)
        if pending:
            log.error("workers still running %.0f s after SIGTERM: killing them", kill_after)
            self.forward(signal.SIGKILL)
            await asyncio.wait(pending)

    async def _keep(self, slot: _Slot) -> None:
        while not self._stopping.is_set():
            process = await asyncio.create_subprocess_exec(
                *self._command, str(slot.index), env=self._env, stdout=asyncio.subprocess.PIPE
            )
            slot.process = process
            if self._stopping.is_set():  # stop() came while it was being started
                process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            await self._follow(slot, process)
            code = await process.wait()
            slot.serving = False
            # The dead worker's "live" gauges go; its counters stay in the sums.
            multiprocess.mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                log.info("worker %d (pid %d) stopped: %s", slot.index, process.pid, _exit(code))
                return
            if not slot.first_ready.done():
                slot.first_ready.set_exception(
                    WorkerFailed(f"worker {slot.index} exited before it served: {_exit(code)}")
                )
                return
            slot.failures = consecutive_failures(slot.failures, time.monotonic() - started)
            delay = restart_delay(slot.failures)
            log.error(
                "worker %d (pid %d) died: %s; starting it again in %.1f s", slot.index, process.pid, _exit(code), delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            self._restarts += 1

    async def _follow(self, slot: _Slot, process: asyncio.subprocess.Process) -> None:
        """Pass the worker's stdout on, noting the line that says it serves."""
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(WORKER_READY):
                slot.serving = True
                if not slot.first_ready.done():
                    slot.first_ready.set_result(None)
                log.info("%s", line.rstrip())
                continue
            sys.stdout.write(line)
            sys.stdout.flush()


def _exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold the gRPC port for the workers (port 0: a free one) while they come
    and go. Bound before SO_REUSEPORT is set, so that a port another process
    listens on (another supervisor's workers included) is refused here rather
    than silently shared; never listening, so it takes no connections."""
    family, kind, _proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reservation = socket.socket(family, kind)
    try:
        # As gRPC does for its own listeners: a restart must not wait for old connections' TIME_WAIT.
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reservation.bind(address)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        yield int(reservation.getsockname()[1])
    finally:
        reservation.close()


@contextlib.contextmanager
def _reserve_http_port(settings: Settings) -> Iterator[int | None]:
    """The HTTP edge's port, held as the gRPC port is (None: the edge is off)."""
    if settings.http_port is None:
        yield None
        return
    with reserve_port(settings.http_host, settings.http_port) as port:
        yield port


def die_with_parent() -> None:
    """A worker gets SIGTERM (and drains) if its supervisor dies, rather than serving on orphaned."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_environment(
    settings: Settings,
    database_url: str,
    port: int,
    metrics_dir: str,
    open_access: bool,
    *,
    http_port: int | None = None,
) -> dict[str, str]:
    env = dict(os.environ)
    env["METERING_DATABASE_URL"] = database_url  # the embedded database too: the supervisor runs it
    env["METERING_GRPC_PORT"] = str(port)
    env["METERING_HTTP_PORT"] = "off" if http_port is None else str(http_port)
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if open_access:
        # The supervisor has decided (and warned) that this service runs open;
        # a worker, seeing a database URL, would refuse to.
        env["METERING_ALLOW_UNAUTHENTICATED"] = "1"
    return env


async def supervise(settings: Settings) -> None:
    # The files are checked as each worker will check them (metering.runtime.wiring),
    # before the database is touched and before any worker starts, so that a
    # bad file is one clear error rather than N crash loops.
    config = load_config(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Until the workers exist, SIGHUP has nothing to reload; it must not kill the supervisor.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    write_pid_file(settings.pid_file)  # `metering reload` signals the supervisor, which forwards it
    database = await asyncio.to_thread(open_database, settings)
    try:
        pool = await connect(settings, database.url)
        try:
            await prepare_database(pool, config.catalog)
        finally:
            await pool.close()
        await _run_workers(config, database, stop)
    finally:
        await asyncio.to_thread(database.close)
        remove_pid_file(settings.pid_file)
    log.info("stopped")


async def _run_workers(config: Config, database: Database, stop: asyncio.Event) -> None:
    """Start the workers, announce once they all serve, and stop them all at `stop`."""
    settings = config.settings
    with (
        reserve_port(settings.grpc_host, settings.grpc_port) as port,
        _reserve_http_port(settings) as http_port,
        tempfile.TemporaryDirectory(prefix="metering-metrics-") as metrics_dir,
    ):
        env = worker_environment(
            settings, database.url, port, metrics_dir, open_access=config.policy is None, http_port=http_port
        )
        command = [sys.executable, "-m", "metering", "serve", "--worker"]
        supervisor = Supervisor(settings.workers, command, env, metrics_dir)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, supervisor.forward, signal.SIGHUP)
        metrics_port = serve_workers(settings.metrics_host, settings.metrics_port, metrics_dir, supervisor.state)
        timeout = (settings.shutdown_delay + settings.shutdown_grace).total_seconds() + STOP_MARGIN_SECONDS
        try:
            if await _started_before_stop(supervisor, stop):
                print(
                    announcement(
                        config, database, port, http_port, metrics_port, settings.workers, tracing=settings.tracing
                    ),
                    flush=True,
                )
                await stop.wait()
            log.info("stopping: every worker drains")
        finally:
            await supervisor.stop(timeout)


async def _started_before_stop(supervisor: Supervisor, stop: asyncio.Event) -> bool:
    """Whether every worker serves before a stop is asked for (WorkerFailed if
    one exits first). Neither wait outlives this call."""
    started = asyncio.ensure_future(supervisor.start())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({started, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (started, stopped):
            waiting.cancel()
        await asyncio.wait({started, stopped})
    if started.cancelled():
        return False
    started.result()  # WorkerFailed: out to the caller, which stops the workers
    return True
