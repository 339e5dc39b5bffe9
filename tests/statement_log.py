"""Which SQL a service sends, and whether each statement is keyed by customer.

`StatementLog` is a TCP proxy between a service and PostgreSQL that reads the
frontend protocol and keeps the text of every statement the service sends
(Parse messages of the extended protocol, Query messages of the simple one)
while it is recording. It forwards bytes unchanged; it cannot read TLS, so the
service connects through it with `sslmode=disable`.

`unkeyed_scans` reads an `EXPLAIN (VERBOSE, FORMAT JSON)` plan and names
every scan of a distributed table that no condition keys by that table's
customer_id: neither its own (index condition, filter, recheck) nor the
condition of a join above it. Pure: tests/unit/test_statement_log.py.
`examine` applies it to the generic plan of each statement on a real database
(tests/integration/test_citus_schema.py checks it on known statements).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import threading
from collections.abc import Iterator, Mapping, Set
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104
_CANCEL_REQUEST = 80877102

# The parts of a plan node that restrict the rows of a scan or a join.
_OWN_CONDITIONS = ("Index Cond", "Recheck Cond", "Filter", "TID Cond")
_JOIN_CONDITIONS = ("Hash Cond", "Merge Cond", "Join Filter")


def _cstring(body: bytes, start: int) -> tuple[str, int]:
    end = body.index(b"\0", start)
    return body[start:end].decode(), end + 1


def statement_of(kind: bytes, body: bytes) -> str | None:
    """The SQL text of a frontend message: Parse ('P': name, then the query)
    or Query ('Q'); None for any other message."""
    if kind == b"P":
        _, at = _cstring(body, 0)
        return _cstring(body, at)[0]
    if kind == b"Q":
        return _cstring(body, 0)[0]
    return None


class StatementLog:
    """A proxy on a free port of 127.0.0.1 to PostgreSQL, in a thread of its own: at `host:port`,
    or on a unix socket when `host` is a directory (as libpq reads a host starting with '/')."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self.recording = False
        self._statements: list[str] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatementLog:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the statement log's proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @contextlib.contextmanager
    def recorded(self) -> Iterator[list[str]]:
        """Statements sent while the block runs, in order (repeats included)."""
        with self._lock:
            self._statements.clear()
            self.recording = True
        found: list[str] = []
        try:
            yield found
        finally:
            with self._lock:
                self.recording = False
                found.extend(self._statements)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream
        try:
            if host.startswith("/"):
                server_reader, server_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                server_reader, server_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        back = asyncio.ensure_future(self._pipe(server_reader, client_writer))
        try:
            await self._frontend(client_reader, server_writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            server_writer.close()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await back
            client_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Untyped messages first: SSL or GSS requests (answered 'N' under
        # sslmode=disable they are not even sent), then the startup message.
        while True:
            header = await reader.readexactly(8)
            length, code = struct.unpack("!ii", header)
            writer.write(header + await reader.readexactly(length - 8))
            await writer.drain()
            if code not in (_SSL_REQUEST, _GSS_REQUEST):
                if code == _CANCEL_REQUEST:
                    return
                break
        while True:
            kind = await reader.readexactly(1)
            size = await reader.readexactly(4)
            body = await reader.readexactly(struct.unpack("!i", size)[0] - 4)
            if self.recording:
                text = statement_of(kind, body)
                if text is not None:
                    with self._lock:
                        if self.recording:
                            self._statements.append(text)
            writer.write(kind + size + body)
            await writer.drain()


def upstream_of(database_url: str) -> tuple[str, int]:
    """Where a database URL's server listens: (host, port), or (socket directory, port)."""
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    return (socket_dir or parts.hostname or "127.0.0.1", parts.port or 5432)


def through(database_url: str, port: int) -> str:
    """The same database, reached through the proxy on `port` of 127.0.0.1, without TLS."""
    parts = urlsplit(database_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port", "sslmode")]
    query.append(("sslmode", "disable"))
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}", query=urlencode(query)))


def tables_named(statement: str, tables: Set[str]) -> set[str]:
    """Which of `tables` the statement's text names (a word match: a first sieve)."""
    return {name for name in tables if re.search(rf"\b{re.escape(name)}\b", statement)}


def _conditions(node: Mapping[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [str(node[key]) for key in keys if key in node]


def _keys_customer(conditions: list[str], alias: str) -> bool:
    """An equality (or `= ANY`) on alias.customer_id, on either side."""
    column = rf"\b{re.escape(alias)}\.customer_id\b"
    pattern = rf"{column}\s*=|=\s*(ANY\s*\(\s*)?{column}"
    return any(re.search(pattern, condition) for condition in conditions)


def unkeyed_scans(plan: Mapping[str, Any], distributed: Set[str]) -> list[str]:
    """Scans of distributed tables in `plan` (a node of EXPLAIN (VERBOSE,
    FORMAT JSON): the "Plan" of its one entry) that no condition keys by
    customer_id, as "table (alias): node type"."""
    found: list[str] = []

    def walk(node: Mapping[str, Any], inherited: list[str]) -> None:
        relation = node.get("Relation Name")
        if relation in distributed and node.get("Node Type") != "ModifyTable":
            alias = str(node.get("Alias", relation))
            own = _conditions(node, _OWN_CONDITIONS)
            # A bitmap heap scan's index conditions are on its bitmap children.
            for child in node.get("Plans", []):
                if str(child.get("Node Type", "")).startswith("Bitmap"):
                    own += _conditions(child, _OWN_CONDITIONS)
                    own += [c for grand in child.get("Plans", []) for c in _conditions(grand, _OWN_CONDITIONS)]
            if not _keys_customer(own + inherited, alias):
                found.append(f"{relation} ({alias}): {node.get('Node Type')}")
        passed = inherited + _conditions(node, _JOIN_CONDITIONS)
        for child in node.get("Plans", []):
            # A subplan's scans are keyed by their own conditions, not by the
            # joins of the query that calls them.
            walk(child, [] if child.get("Parent Relationship") in ("SubPlan", "InitPlan") else passed)

    walk(plan, [])
    return found


def _is_query(statement: str) -> bool:
    return re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", statement, re.IGNORECASE) is not None


async def examine(database_url: str, statements: list[str], distributed: set[str]) -> dict[str, list[str]]:
    """Each statement naming a distributed table, with its unkeyed scans
    (empty: keyed), from its generic plan on the database at `database_url`:
    prepared, then `EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE` with NULLs under
    `plan_cache_mode = force_generic_plan`, so parameters stay parameters."""
    results: dict[str, list[str]] = {}
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for statement in dict.fromkeys(statements):
            if not tables_named(statement, distributed):
                continue
            if not _is_query(statement) or ";" in statement.strip().rstrip(";"):
                results[statement] = ["not a single query: cannot be examined"]
                continue
            await conn.execute(f"PREPARE citus_check AS {statement}")
            try:
                types = await conn.fetchval(
                    "SELECT parameter_types FROM pg_prepared_statements WHERE name = 'citus_check'"
                )
                arguments = f"({', '.join(['NULL'] * len(types))})" if types else ""
                [entry] = json.loads(
                    await conn.fetchval(f"EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE citus_check{arguments}")
                )
                results[statement] = unkeyed_scans(entry["Plan"], distributed)
            finally:
                await conn.execute("DEALLOCATE citus_check")
    finally:
        await conn.close()
    return results
