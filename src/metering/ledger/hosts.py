"""The hosts of a multi-host METERING_DATABASE_URL, and the order to try them in.

Pure: no I/O, no asyncpg. metering.ledger.connector connects host by host in
the order HostOrder gives, each host bounded by METERING_DB_CONNECT_TIMEOUT,
and tells it how each attempt went.

The order: hosts with no recent failure first, in the URL's order (the
operator's preference); then the hosts that answered but would not do (a
standby, under target_session_attrs=read-write), then the hosts that did not
answer at all (refused, reset, or silent until the connect timeout), each
group oldest failure first. A failure is forgotten after FORGET_AFTER
seconds, or at once when the host is connected to again. So a silent host
costs one connect timeout, once: the connections after it go to the others
first, and a standby that is about to be promoted is tried before the host
that stopped answering.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# Seconds after which a host's failure no longer moves it back: long enough to
# spare the connections of a failover the silent host's timeout, short enough
# that a host back in service (the old primary, rejoined) regains its place.
FORGET_AFTER = 30.0


@dataclass(frozen=True, slots=True)
class Host:
    """One host of the URL: a name or address (or a unix socket directory), and a port."""

    host: str
    port: int | None  # None: the URL's (or libpq's) default

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


class Attempt(enum.Enum):
    """How a connection attempt to one host ended."""

    CONNECTED = "connected"  # the host qualifies: its connection is used
    WRONG_ROLE = "wrong_role"  # it answered, but does not match target_session_attrs (a standby)
    UNREACHABLE = "unreachable"  # refused, reset, not ready, or silent until the connect timeout


# The group of a host with a recent failure of each kind (lower: tried earlier).
_RANK = {Attempt.WRONG_ROLE: 1, Attempt.UNREACHABLE: 2}


@dataclass
class HostOrder:
    """The failures of each host (by its index in the URL), and the order they call for.
    Times are seconds of a monotonic clock."""

    count: int
    forget_after: float = FORGET_AFTER
    _failures: dict[int, tuple[Attempt, float]] = field(default_factory=dict)

    def note(self, index: int, attempt: Attempt, now: float) -> None:
        """What an attempt on host `index` did at `now`."""
        if attempt is Attempt.CONNECTED:
            self._failures.pop(index, None)
        else:
            self._failures[index] = (attempt, now)

    def order(self, now: float) -> list[int]:
        """The host indexes, in the order to try them at `now`."""

        def key(index: int) -> tuple[int, float, int]:
            failure = self._failures.get(index)
            if failure is None or now - failure[1] >= self.forget_after:
                return (0, 0.0, index)
            attempt, at = failure
            return (_RANK[attempt], at, index)

        return sorted(range(self.count), key=key)


def hosts_of(url: str) -> list[Host]:
    """The hosts a postgres:// URL names, in order: in its authority
    (`h1:p1,h2:p2`, `[::1]:5432`) or, without one, in its `host` query
    parameter; a host without a port takes the `port` parameter's (one for
    all, or one per host), as libpq reads them. Empty when it names none (a
    unix socket or libpq's default)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    ports = [int(port) if port else None for port in query["port"].split(",")] if "port" in query else []
    hostspec = parts.netloc.rpartition("@")[2]
    if hostspec:
        hosts = [_one(entry) for entry in hostspec.split(",") if entry]
    else:
        hosts = [Host(name, None) for name in query.get("host", "").split(",") if name]
    if len(ports) == 1:
        ports = ports * len(hosts)  # one port for every host
    return [
        host if host.port is not None or i >= len(ports) else Host(host.host, ports[i]) for i, host in enumerate(hosts)
    ]


def without_hosts(url: str) -> str:
    """`url` with its hosts taken out (authority and `host`/`port` parameters),
    the rest kept: user, password, database, parameters. Each host is then
    given to asyncpg apart."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("host", "port")]
    # By hand: urlunsplit drops an empty authority, and `postgresql:/m` is no URL asyncpg reads.
    rest = urlunsplit(parts._replace(scheme="", netloc="", query=urlencode(query)))
    return f"{parts.scheme}://{userinfo}{at}{rest}"


def _one(entry: str) -> Host:
    if entry.startswith("["):  # an IPv6 literal
        address, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return Host(address, int(port) if port else None)
    name, colon, port = entry.rpartition(":")
    if not colon:
        return Host(unquote(entry), None)
    return Host(unquote(name), int(port) if port else None)


def describe(hosts: Sequence[Host]) -> str:
    return ", ".join(str(host) for host in hosts)
