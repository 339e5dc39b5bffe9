"""Where the service is and how to prove who we are: target, bearer token,
TLS and mTLS, read from the same METERING_* variables as the `metering` CLI."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"

# Notice a restarted server within about two seconds (gRPC's default reconnect
# backoff grows to two minutes), and never let gRPC retry by itself: the
# client's own retries are bounded and keep the request identical.
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),
)


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach the service. Plaintext unless `tls_ca` is given; mTLS with `tls_cert` and `tls_key`."""

    target: str = DEFAULT_TARGET
    token: str | None = None  # sent as `authorization: Bearer <token>`
    tls_ca: Path | None = None  # PEM CA that signed the server's certificate
    tls_cert: Path | None = None  # PEM client certificate (mTLS)
    tls_key: Path | None = None  # PEM key of tls_cert
    tls_server_name: str | None = None  # the name the server certificate carries, if not the target's host

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Connection:
        """METERING_TARGET, METERING_TOKEN and METERING_CLIENT_TLS_{CA,CERT,KEY,SERVER_NAME}."""
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            value = env.get(name)
            return Path(value) if value else None

        return cls(
            target=env.get("METERING_TARGET") or DEFAULT_TARGET,
            token=env.get("METERING_TOKEN") or None,
            tls_ca=path("METERING_CLIENT_TLS_CA"),
            tls_cert=path("METERING_CLIENT_TLS_CERT"),
            tls_key=path("METERING_CLIENT_TLS_KEY"),
            tls_server_name=env.get("METERING_CLIENT_TLS_SERVER_NAME") or None,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None:
            return None

        def read(path: Path | None) -> bytes | None:
            return None if path is None else path.read_bytes()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls_ca), private_key=read(self.tls_key), certificate_chain=read(self.tls_cert)
        )

    def _options(self, extra: Sequence[tuple[str, str | int]]) -> list[tuple[str, str | int]]:
        options: list[tuple[str, str | int]] = [*_CHANNEL_OPTIONS, *extra]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options

    def sync_channel(self, target: str | None = None, options: Sequence[tuple[str, str | int]] = ()) -> grpc.Channel:
        """A grpcio channel to the service (or to `target`), with TLS if configured."""
        credentials = self._credentials()
        where = target or self.target
        if credentials is None:
            return grpc.insecure_channel(where, options=self._options(options))
        return grpc.secure_channel(where, credentials, options=self._options(options))

    def aio_channel(self, options: Sequence[tuple[str, str | int]] = ()) -> grpc.aio.Channel:
        """A grpc.aio channel to the service, with TLS if configured."""
        credentials = self._credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self._options(options))
        return grpc.aio.secure_channel(self.target, credentials, options=self._options(options))
