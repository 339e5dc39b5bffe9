"""The common case of a batch's decision, in columns: pure, no I/O.

Most batches are new events of adding-up meters (SUM, COUNT) that no limit or
threshold is near: every event is accepted, each counter's `used` is a running
sum, nothing is announced. `decide_common` proves that a batch is such a batch
and returns its plan as columns (one list per field, no object per event); it
returns None for any other batch, which then goes through
metering.domain.usage.decide_batch, unchanged, in the same transaction.

It decides nothing decide_batch would decide otherwise: it only answers when
each of decide_batch's branches is provably not taken (no reused transaction
id, no refusal a resolution carries, no distinct value, no wallet, no gauge,
and for every allowance the counter's usage after the whole batch stays below
the usage at which a threshold could be reached and within the allowance), so
every event goes through decide_batch's accepting branch with an overage of
zero. tests/unit/test_columns.py checks that property on generated batches:
whenever this answers, decide_batch gives the same inserts, counters and
answers, and announces nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from metering.domain import decimals, limits, terms
from metering.domain.errors import MeteringError
from metering.domain.usage import AllowanceKey, BatchReads, CounterKey, Resolution


@dataclass(frozen=True, slots=True)
class CommonPlan:
    """What to write for a batch of the common case, and each event's balance, as columns.

    The events of a batch are its resolutions, in order; each list below has
    one entry per event but `allowances`, `thresholds` (one per allowance key)
    and `counters`."""

    event_ids: Sequence[UUID]
    used: list[Decimal]  # the event's counter's usage after it
    allowance_of: list[int]  # the event's allowance: an index into `allowances`
    allowances: list[limits.Allowance]  # what decide_batch decides each allowance key under
    thresholds: list[Decimal]  # the approaching threshold of each allowance's plan terms (its balances')
    counters: list[tuple[CounterKey, limits.CounterState]]  # each counter once, sorted


def decide_common(
    resolutions: Sequence[Resolution | MeteringError], reads: BatchReads, event_ids: Sequence[UUID]
) -> CommonPlan | None:
    """The plan of a batch whose events are all accepted with nothing to
    announce, or None when that is not certain (decide_batch decides it then).
    `event_ids` has one id per event, in order (the ids decide_batch would
    give the accepted events)."""
    if reads.existing or reads.wallet_states or reads.spends or len(event_ids) != len(resolutions):
        return None
    holdings, counters = reads.holdings, reads.counters
    seen: set[tuple[str, str]] = set()
    # Per allowance key: its index, its counter, and the plan terms it was first seen under.
    known: dict[AllowanceKey, tuple[int, CounterKey, Resolution]] = {}
    allowances: list[limits.Allowance] = []
    thresholds: list[Decimal] = []
    running: dict[CounterKey, Decimal] = {}
    count: dict[CounterKey, int] = {}
    latest: dict[CounterKey, tuple[datetime | None, UUID | None]] = {}
    used_column: list[Decimal] = []
    allowance_of: list[int] = []
    for resolution, event_id in zip(resolutions, event_ids, strict=True):
        # Each of decide_batch's branches other than a plain acceptance is out.
        if (
            not isinstance(resolution, Resolution)
            or resolution.refusal is not None
            or resolution.wallet is not None
            or resolution.unique_value is not None
        ):
            return None
        plan = resolution.plan
        if not plan.accumulates:
            return None  # gauges keep a maximum or the latest value, not a running sum
        event = resolution.event
        txn = (event.customer_id, event.transaction_id)
        if txn in seen:
            return None  # a duplicate or a conflict inside the batch
        seen.add(txn)
        key = resolution.counter_key
        allowance_key = resolution.allowance_key
        found = known.get(allowance_key)
        if found is None:
            granted, reserved = holdings[allowance_key]
            found = known[allowance_key] = (len(allowances), key, resolution)
            allowances.append(terms.allowance(plan, granted, reserved))
            thresholds.append(resolution.plan_terms.approaching_threshold)
        elif found[2].plan is not plan or found[2].plan_terms is not resolution.plan_terms:
            # Two catalogs' terms for one allowance key (a reload between two calls of
            # the batch): decide_batch decides under the first, each balance is its own.
            return None
        cost = limits.event_cost(plan.aggregation, event.quantity, new_unique_value=False)
        if cost < 0:
            return None  # never valid; the running sums below need usage that only grows
        used = running.get(key)
        if used is None:
            state = counters[key]
            used = state.used
            count[key] = state.event_count
            latest[key] = (state.latest_event_time, state.latest_event_id)
        used = running[key] = decimals.add(used, cost)
        count[key] += 1
        latest_time, latest_id = latest[key]
        if limits.is_newer(event.event_time, event_id, latest_time, latest_id):
            latest[key] = (event.event_time, event_id)
        used_column.append(used)
        allowance_of.append(found[0])
    # Usage only grows, so each counter's usage after the batch bounds every
    # event's: below it, no event of the allowance was refused or crossed anything.
    for index, key, first in known.values():
        if not _quiet(allowances[index], running[key], first.terms.approaching_threshold):
            return None
    states = [(key, limits.CounterState(running[key], count[key], *latest[key])) for key in sorted(running)]
    return CommonPlan(event_ids, used_column, allowance_of, allowances, thresholds, states)


def _quiet(allowance: limits.Allowance, used: Decimal, approaching_threshold: Decimal) -> bool:
    """Whether usage up to `used` fits the allowance (nothing refused, no
    overage) and reaches no threshold (decide_batch announces one from
    terms.quiet_below up)."""
    total = allowance.total
    if total is None:
        return True  # unlimited: nothing to refuse, no threshold
    quiet_below = terms.quiet_below(allowance, approaching_threshold)
    assert quiet_below is not None  # only None when unlimited
    reserved = allowance.reserved
    return used < quiet_below and (decimals.add(used, reserved) if reserved else used) <= total


@dataclass(frozen=True, slots=True)
class Recorded:
    """The events of one group (a call), all recorded by the common-case
    decision, as columns: what the answers need once they are written."""

    resolutions: Sequence[Resolution]
    event_ids: Sequence[UUID]
    recorded_at: Sequence[datetime]  # when the database recorded each
    used: Sequence[Decimal]  # the event's counter's usage after it
    allowance_of: Sequence[int]  # an index into `allowances`
    allowances: Sequence[limits.Allowance]
    thresholds: Sequence[Decimal]  # by allowance

    def __len__(self) -> int:
        return len(self.event_ids)


def recorded(
    plan: CommonPlan, resolutions: Sequence[Resolution], recorded_at: Sequence[datetime], start: int, end: int
) -> Recorded:
    """The events start..end of a batch written with `plan` (one group's)."""
    return Recorded(
        resolutions[start:end],
        plan.event_ids[start:end],
        recorded_at[start:end],
        plan.used[start:end],
        plan.allowance_of[start:end],
        plan.allowances,
        plan.thresholds,
    )


@dataclass(frozen=True, slots=True)
class BalanceColumns:
    """The figures of each event's balance (limits.BalanceFigures) that vary
    from event to event; limit, granted and reserved are its allowance's."""

    available: list[Decimal | None]
    percent_used: list[Decimal | None]
    approaching_limit: list[bool]
    limit_reached: list[bool]


def balance_columns(events: Recorded) -> BalanceColumns:
    """limits.balance_figures for every event, by the same rules, with what an
    allowance fixes computed once: a percentage is rounded from a ratio that
    never falls as usage grows, so when the lowest and highest usage of an
    allowance round to the same percentage, every usage between them does."""
    allowances, thresholds = events.allowances, events.thresholds
    low: dict[int, Decimal] = {}
    high: dict[int, Decimal] = {}
    for index, used in zip(events.allowance_of, events.used, strict=True):
        if index not in low:
            low[index] = high[index] = used
        elif used < low[index]:
            low[index] = used
        elif used > high[index]:
            high[index] = used
    constant: dict[int, Decimal | None] = {}
    for index in low:
        allowance = allowances[index]
        lowest = limits.percent_used(allowance, low[index])
        if lowest == limits.percent_used(allowance, high[index]):
            constant[index] = lowest
    available: list[Decimal | None] = []
    percent: list[Decimal | None] = []
    approaching: list[bool] = []
    reached: list[bool] = []
    for index, used in zip(events.allowance_of, events.used, strict=True):
        allowance = allowances[index]
        left = limits.available_quantity(allowance, used)
        share = constant[index] if index in constant else limits.percent_used(allowance, used)
        available.append(left)
        percent.append(share)
        approaching.append(limits.approaching_limit(share, thresholds[index]))
        reached.append(limits.limit_reached(left))
    return BalanceColumns(available, percent, approaching, reached)


def preinsertable(resolutions: Sequence[Resolution | MeteringError]) -> bool:
    """Whether decide_common could answer for this batch whatever its
    counters and holdings turn out to be: the checks of decide_common that need
    no read (every event resolved, none refused by its resolution, no wallet,
    no distinct value, only adding-up meters, each transaction id once).

    Such a batch's events may be inserted before its counters are locked
    (metering.ledger.writer, "Events inserted before the counter locks"): when
    decide_common then answers, they are exactly its inserts, with the same
    event ids; when it does not (a limit or a threshold is near), the writer
    deletes them in the same transaction before deciding the usual way."""
    seen: set[tuple[str, str]] = set()
    for resolution in resolutions:
        if (
            not isinstance(resolution, Resolution)
            or resolution.refusal is not None
            or resolution.wallet is not None
            or resolution.unique_value is not None
            or not resolution.plan.accumulates
        ):
            return False
        txn = (resolution.event.customer_id, resolution.event.transaction_id)
        if txn in seen:
            return False
        seen.add(txn)
    return bool(resolutions)
