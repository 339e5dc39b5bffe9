"""Whether a new catalog may replace the one in force while serving (a reload).

Recorded usage must stay billable and its counters must keep meaning what
they meant when they were added up. A change strands usage when, after it,
the events of a billing period that is not finalized yet (gathering, or a
draft in its grace) could not be priced, or their counters would be read
under another definition. So a reload is refused when:

- a meter is removed while an open period has events of it (voided ones
  included): its invoice could not be priced and would wait for ever;
- a meter's aggregation, unit or counted property (UNIQUE_COUNT) changes
  while an open period has events of it: its counters were added up under
  the old definition (a SUM read as a MAX, tokens read as thousands of
  tokens, distinct values of another property);
- a price is removed, moved to another meter or given another currency while
  events of an open period were priced with it: their bill would be NOT_FOUND
  or PRICE_CURRENCY_MISMATCH;
- a plan is removed, or its currency changes, while a customer is on it or an
  open period of a customer may still be billed with it (the plan in effect
  at a draft period's end);
- a meter's dimensions or counted property change while it has events at
  all: its hourly rollups are built for the old ones, and are rebuilt only at
  start-up (metering.ledger.rollups.sync_layouts).

Everything else applies from the next call on: new meters, prices and plans;
amounts, tiers, limits, included units, resets, thresholds, enforcement,
names and descriptions (and the bill of every period not finalized yet, since
bills are priced when they are asked for and invoices when they are
finalized). Pure: the ledger answers the UsageQuestion, these functions decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from metering.domain.catalog import Catalog, Meter, Price


@dataclass(frozen=True, slots=True)
class UsageQuestion:
    """What a change must ask the ledger, and nothing more: a reload that
    touches nothing recorded costs no query."""

    meters: tuple[str, ...]  # removed or redefined: have open periods events of them?
    layouts: tuple[str, ...]  # new dimensions or counted property: have they events at all?
    # Removed, or another meter or currency: were open-period events priced with
    # them? Each with its meter in the catalog in force (the events are found by it).
    prices: Mapping[str, str]
    plans: tuple[str, ...]  # removed, or another currency: may an open period be billed with them?

    @property
    def empty(self) -> bool:
        return not (self.meters or self.layouts or self.prices or self.plans)


@dataclass(frozen=True, slots=True)
class CatalogUse:
    """The ledger's answer to a UsageQuestion: the ones of each kind in use."""

    open_meters: frozenset[str] = frozenset()  # meters with events in a period not finalized
    recorded_meters: frozenset[str] = frozenset()  # meters with events at all
    prices: frozenset[str] = frozenset()  # prices of events in a period not finalized
    plans: frozenset[str] = frozenset()  # plans a customer is on, or an open period may be billed with


def _redefined(old: Meter, new: Meter) -> list[str]:
    """What of a meter's definition changed that its counters depend on."""
    changes = []
    if old.aggregation is not new.aggregation:
        changes.append(f"aggregation {old.aggregation.value} -> {new.aggregation.value}")
    if old.unit != new.unit:
        changes.append(f"unit {old.unit!r} -> {new.unit!r}")
    if old.unique_property != new.unique_property:
        changes.append(f"counted property {old.unique_property!r} -> {new.unique_property!r}")
    return changes


def _relaid(old: Meter, new: Meter) -> bool:
    """Whether the meter's rollups would need another layout."""
    return old.dimensions != new.dimensions or old.unique_property != new.unique_property


def _repriced(old: Price, new: Price | None) -> str | None:
    """Why a price's recorded events could no longer be billed with it (None: they can)."""
    if new is None:
        return "removed"
    if old.meter != new.meter:
        return f"moved from meter {old.meter!r} to {new.meter!r}"
    if old.currency != new.currency:
        return f"currency {old.currency} -> {new.currency}"
    return None


def question(old: Catalog, new: Catalog) -> UsageQuestion:
    """The meters, prices and plans of `old` that `new` removes or changes in
    a way that would strand their usage, if they have any."""
    meters = tuple(
        slug for slug, meter in old.meters.items() if slug not in new.meters or _redefined(meter, new.meters[slug])
    )
    layouts = tuple(
        slug for slug, meter in old.meters.items() if slug in new.meters and _relaid(meter, new.meters[slug])
    )
    prices = {
        slug: price.meter for slug, price in old.prices.items() if _repriced(price, new.prices.get(slug)) is not None
    }
    plans = tuple(
        slug for slug, plan in old.plans.items() if slug not in new.plans or new.plans[slug].currency != plan.currency
    )
    return UsageQuestion(meters, layouts, prices, plans)


def stranded(old: Catalog, new: Catalog, use: CatalogUse) -> list[str]:
    """Every reason `new` may not replace `old` given the usage recorded
    (`use`, the ledger's answer to `question(old, new)`), each as
    "<catalog key>: <why>"; empty when the change strands nothing."""
    asked = question(old, new)
    problems: list[str] = []
    for slug in _in(asked.meters, use.open_meters):
        meter = new.meters.get(slug)
        if meter is None:
            problems.append(f"meters.{slug}: removed while billing periods not finalized yet have events of it")
        else:
            changes = ", ".join(_redefined(old.meters[slug], meter))
            problems.append(
                f"meters.{slug}: {changes} while billing periods not finalized yet have events counted "
                "under the old definition"
            )
    for slug in _in(asked.layouts, use.recorded_meters):
        before, after = old.meters[slug], new.meters[slug]
        problems.append(
            f"meters.{slug}.dimensions: its rollups are built for dimensions {list(before.dimensions)}"
            f"{_counted(before)}; changing them to {list(after.dimensions)}{_counted(after)} takes a restart "
            "(the rollups of a meter with events are rebuilt at start-up)"
        )
    for slug in _in(asked.prices, use.prices):
        why = _repriced(old.prices[slug], new.prices.get(slug))
        problems.append(f"prices.{slug}: {why} while events of billing periods not finalized yet are priced with it")
    for slug in _in(asked.plans, use.plans):
        plan = new.plans.get(slug)
        why = "removed" if plan is None else f"currency {old.plans[slug].currency} -> {plan.currency}"
        problems.append(
            f"plans.{slug}: {why} while customers are on it or billing periods not finalized yet are billed with it"
        )
    return problems


def _in(asked: Iterable[str], used: frozenset[str]) -> list[str]:
    """The ones asked about that are in use, in the catalog's order."""
    return [slug for slug in asked if slug in used]


def _counted(meter: Meter) -> str:
    return "" if meter.unique_property is None else f" counting {meter.unique_property!r}"
