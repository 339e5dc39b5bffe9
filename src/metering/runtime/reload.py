"""SIGHUP: re-read the catalog, the auth file and the webhooks file while serving.

Each file is checked completely, as at start-up. A file with problems is
refused, every problem logged, and the one in force stays; a good one is
applied at once. Calls in flight are untouched: the new callers, tokens and
limits apply to calls that arrive after the swap. Each outcome is logged before
it is counted (metering_config_reloads_total), so a counted reload's line is
already in the log.

The catalog goes first, so that the auth file is checked against the catalog
in force. A catalog is also refused when it would strand recorded usage (see
metering.domain.catalog_change: a meter removed while a billing period not
finalized yet has events of it, say) or break the files in force (a meter a
caller is restricted to, or one the Stripe export reports); every reason is
logged. A call that started before the swap finishes on the catalog it
started with (metering.services.catalog).
"""

from __future__ import annotations

import asyncio
import logging

from metering.api.auth import Authenticator
from metering.config.access import load_access
from metering.config.catalog import CatalogError, load_catalog
from metering.config.endpoints import load_endpoints
from metering.config.files import Config, catalog_references
from metering.config.settings import ConfigError
from metering.delivery.retention import Retention
from metering.delivery.webhooks import WebhookDelivery
from metering.domain.errors import DatabaseUnavailable
from metering.services.catalog import CatalogRefused, Catalogs
from metering.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

APPLIED = "applied"
REFUSED = "refused"


class ConfigReloader:
    """Applies SIGHUP: re-reads the catalog, the auth and webhooks files, checks each completely and
    swaps it in whole, or keeps the one in force and logs every problem. Calls in flight are untouched."""

    def __init__(
        self,
        config: Config,
        catalogs: Catalogs,
        authenticator: Authenticator,
        webhooks: WebhookDelivery,
        retention: Retention,
        metrics: Metrics,
    ) -> None:
        self._settings = config.settings
        self._stripe_mapping = config.stripe_mapping
        self._catalogs = catalogs
        self._authenticator = authenticator
        self._webhooks = webhooks
        self._retention = retention
        self._metrics = metrics

    async def run(self, requested: asyncio.Event) -> None:
        """Reload each time `requested` is set (by the SIGHUP handler); signals
        that arrive during a reload coalesce into one more."""
        while True:
            await requested.wait()
            requested.clear()
            await self.reload()

    async def reload(self) -> None:
        await self._reload_catalog()
        await self._reload_auth()
        await self._reload_webhooks()

    async def _reload_catalog(self) -> None:
        path = self._settings.catalog_path
        if path is None:
            log.info("SIGHUP: no METERING_CATALOG: the service runs on the packaged sample catalog, nothing to reload")
            return
        try:
            catalog = await asyncio.to_thread(load_catalog, path)
            problems = catalog_references(catalog, self._authenticator.policy, self._stripe_mapping)
            if problems:
                raise CatalogRefused(problems)
            changed = await self._catalogs.replace(catalog)
        except CatalogError as exc:
            self._catalog_refused(str(exc))
            return
        except CatalogRefused as exc:
            self._catalog_refused(f"METERING_CATALOG={path!r}:\n" + "\n".join(f"  - {p}" for p in exc.problems))
            return
        except DatabaseUnavailable as exc:
            self._catalog_refused(f"the ledger could not be asked what the change would strand: {exc}")
            return
        if changed:
            log.info(
                "SIGHUP: METERING_CATALOG=%r reloaded: %d meters, %d prices, %d plans (revision %s)",
                path,
                len(catalog.meters),
                len(catalog.prices),
                len(catalog.plans),
                catalog.revision[:12],
            )
        else:
            log.info("SIGHUP: METERING_CATALOG=%r unchanged (revision %s)", path, catalog.revision[:12])
        self._metrics.config_reloads.labels("catalog", APPLIED).inc()

    def _catalog_refused(self, reason: str) -> None:
        log.error("SIGHUP: the catalog is refused, the previous catalog stays in force: %s", reason)
        self._metrics.config_reloads.labels("catalog", REFUSED).inc()

    async def _reload_auth(self) -> None:
        path = self._settings.auth_file
        if path is None or self._authenticator.policy is None:
            log.info("SIGHUP: no METERING_AUTH_FILE: the service runs without authentication, nothing to reload")
            return
        try:
            meters = self._catalogs.current.catalog.meters
            policy = await asyncio.to_thread(load_access, path, meters)
        except ConfigError as exc:
            log.error("SIGHUP: the auth file is refused, the previous callers stay in force: %s", exc)
            self._metrics.config_reloads.labels("auth", REFUSED).inc()
            return
        self._authenticator.reload(policy)
        log.info("SIGHUP: METERING_AUTH_FILE=%r reloaded: %d callers", path, len(policy.callers))
        self._metrics.config_reloads.labels("auth", APPLIED).inc()

    async def _reload_webhooks(self) -> None:
        path = self._settings.webhooks_file
        if path is None:
            return
        try:
            endpoints = await asyncio.to_thread(load_endpoints, path)
        except ConfigError as exc:
            log.error("SIGHUP: the webhooks file is refused, the previous endpoints stay in force: %s", exc)
            self._metrics.config_reloads.labels("webhooks", REFUSED).inc()
            return
        await self._webhooks.reload(endpoints)
        self._retention.use_endpoints([endpoint.name for endpoint in endpoints])
        log.info("SIGHUP: METERING_WEBHOOKS_FILE=%r reloaded: %d endpoints", path, len(endpoints))
        self._metrics.config_reloads.labels("webhooks", APPLIED).inc()
