"""The catalog in force in this process, and its replacement by a reload.

A catalog is immutable (metering.domain.catalog); what changes on SIGHUP is
which one is in force. Every service reads `Catalogs.current` once per call
and does all of that call's work with the catalog (and terms) it read, so no
call mixes two catalogs: a call that started before a reload finishes on the
old catalog, the next one starts on the new. An event validated under the old
catalog and recorded after the swap is refused if what it names changed
(metering.domain.usage.resolve: CatalogReloaded, retryable).

A new catalog replaces the one in force only if the change strands no
recorded usage: the ledger answers which of the meters, prices and plans it
touches are in use, and metering.domain.catalog_change decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from metering.domain.catalog import Catalog
from metering.domain.catalog_change import question, stranded
from metering.domain.terms import TermsBook
from metering.ledger.customers import CustomerStore


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LoadedCatalog:
    """A catalog in force, with its terms per plan and meter and when it was loaded."""

    catalog: Catalog
    book: TermsBook  # the catalog's terms, each built on first use
    load_time: datetime


class CatalogRefused(Exception):
    """A new catalog would strand recorded usage; `problems` says each reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class Catalogs:
    """The catalog in force, swapped whole by `replace` once the ledger shows
    that the change strands no recorded usage."""

    def __init__(
        self,
        catalog: Catalog,
        ledger: CustomerStore,
        *,
        anchor_skew_tolerance: timedelta = timedelta(0),
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        # METERING_ANCHOR_SKEW_TOLERANCE: the writer's resolution of new events reads it from the book.
        self._tolerance = anchor_skew_tolerance
        self._current = LoadedCatalog(catalog, self._book(catalog), clock())

    @property
    def current(self) -> LoadedCatalog:
        """The catalog in force: read it once per call."""
        return self._current

    async def replace(self, catalog: Catalog) -> bool:
        """Put `catalog` in force for the calls that start from now on; False
        when it equals the one in force (nothing changes). CatalogRefused,
        with every reason, when it would strand recorded usage; the catalog in
        force then stays. Reloads run one at a time (metering.runtime.reload)."""
        old = self._current.catalog
        if catalog == old:
            return False
        problems = stranded(old, catalog, await self._ledger.catalog_use(question(old, catalog)))
        if problems:
            raise CatalogRefused(problems)
        self._current = LoadedCatalog(catalog, self._book(catalog), self._clock())
        return True

    def _book(self, catalog: Catalog) -> TermsBook:
        return TermsBook(catalog, anchor_skew_tolerance=self._tolerance)
