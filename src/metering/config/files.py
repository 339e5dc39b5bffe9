"""The settings and every operator file they name, read and checked as one
configuration: what a process (or a supervisor, once for all its workers) checks
before it touches the database, and what a reload re-reads."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from metering.config.access import load_access
from metering.config.catalog import load_catalog
from metering.config.endpoints import Endpoint, load_endpoints
from metering.config.settings import ConfigError, Settings, is_loopback
from metering.config.stripe import StripeMapping, load_mapping
from metering.domain.access import AccessPolicy
from metering.domain.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    """The settings and the operator files they name, each checked completely."""

    settings: Settings
    catalog: Catalog
    stripe_mapping: StripeMapping | None
    policy: AccessPolicy | None  # None: the service runs open (see access_policy)
    endpoints: tuple[Endpoint, ...]


def load_config(settings: Settings) -> Config:
    """Every operator file, read and checked: a bad one refuses start-up before
    the database is touched (a supervisor checks them once for all its workers)."""
    catalog = load_catalog(settings.catalog_path)
    stripe_mapping = load_mapping(settings.stripe_file, catalog.meters) if settings.stripe_file else None
    policy = access_policy(settings, catalog)
    endpoints = load_endpoints(settings.webhooks_file) if settings.webhooks_file else ()
    return Config(settings, catalog, stripe_mapping, policy, endpoints)


def access_policy(settings: Settings, catalog: Catalog) -> AccessPolicy | None:
    """The callers allowed in, or None to run open: only for the embedded
    database on a loopback address (local use) or when explicitly asked for
    (METERING_ALLOW_UNAUTHENTICATED=1), and then loudly."""
    if settings.auth_file is not None:
        return load_access(settings.auth_file, catalog.meters)
    if settings.database_url is not None and not settings.allow_unauthenticated:
        raise ConfigError(
            "no callers configured: set METERING_AUTH_FILE (see `metering token new`), or "
            "METERING_ALLOW_UNAUTHENTICATED=1 to let anyone who reaches the port record and read usage"
        )
    # Both edges serve the API: gRPC, and HTTP unless METERING_HTTP_PORT=off.
    edges = [("METERING_GRPC_HOST", settings.grpc_host)]
    if settings.http_port is not None:
        edges.append(("METERING_HTTP_HOST", settings.http_host))
    exposed = [(variable, host) for variable, host in edges if not is_loopback(host)]
    if exposed and not settings.allow_unauthenticated:
        variable, host = exposed[0]
        raise ConfigError(
            f"{variable}={host!r} would let anyone on the network record and read usage: "
            "without METERING_AUTH_FILE the service binds a loopback address (127.0.0.1, the default); set "
            "METERING_AUTH_FILE to expose it, or METERING_ALLOW_UNAUTHENTICATED=1 to run open on purpose"
        )
    log.warning(
        "AUTHENTICATION IS OFF: any client that reaches %s:%s may record, void and read usage%s. "
        "Set METERING_AUTH_FILE before exposing this service.",
        settings.grpc_host,
        settings.grpc_port,
        " (NOT ONLY THIS MACHINE: a non-loopback address)" if exposed else "",
    )
    return None


def catalog_references(
    catalog: Catalog, policy: AccessPolicy | None, stripe_mapping: StripeMapping | None
) -> list[str]:
    """What the operator files in force say of meters that `catalog` would break:
    a meter a caller is restricted to, or one the Stripe export reports, that
    it removes (the next start-up would refuse those files against it), or a
    reported meter whose aggregation it changes (the export is configured at
    start-up only). Empty when the catalog keeps them all."""
    problems = []
    if policy is not None:
        for caller in policy.callers:
            for slug in sorted(caller.meters or ()):
                if slug not in catalog.meters:
                    problems.append(
                        f"meters.{slug}: removed, but caller {caller.name!r} of the auth file is restricted to it"
                    )
    if stripe_mapping is not None:
        for slug, exported in stripe_mapping.meters.items():
            meter = catalog.meters.get(slug)
            if meter is None:
                problems.append(f"meters.{slug}: removed, but the Stripe mapping ({stripe_mapping.source}) reports it")
            elif meter.aggregation is not exported.meter.aggregation:
                problems.append(
                    f"meters.{slug}.aggregation: the Stripe export reports it as {exported.meter.aggregation.value} "
                    "until the next start"
                )
    return problems
