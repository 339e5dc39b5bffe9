"""Wallets: prepaid credit in money, burned by each event's marginal cost. Pure, no I/O.

A customer's wallet holds credit grants in its plan's currency. Each grant
has an amount, a category (paid or promotional), a priority, an effective
time, an optional expiry, optionally the meters it pays for (none: every
meter), and an idempotency key (its grant id). A top-up is such a grant.

**The cost of an event** is its marginal cost under its price: the exact
price (metering.domain.pricing, before rounding) of the priced quantity after
the event, less what the priced quantity had been charged before it. The
priced quantity is kept per customer, meter, period and price (a `Spend`), and
advances with the meter's aggregation exactly as the counter does. With
graduated tiers the cost is never negative; with volume tiers (or a LATEST
gauge that falls, or a void) it can be.

**The burn order.** A positive cost is charged against the grants that pay for
the event (active at the event's time, in the plan's currency, covering the
event's meter, with credit left) in this order: lower `priority` first; then
the soonest expiry (a grant that never expires last); then the earlier
effective time; then the grant id.

**A negative cost** (the priced quantity got cheaper) first reduces the part of
the usage's cost that no grant covered (it is billed, so it simply costs
less), and only then gives credit back to the grants this usage burned, in
reverse burn order (the last grant burned is refilled first). So the credit a
usage holds is never more than what it costs: 0 <= covered <= charged.

**Rounding.** Burns are exact (full precision, no rounding): the sum of the
burns of a Spend equals the exact cost it covered, and the invoice shows the
credit applied per grant as the exact sum of that grant's burns in the period.
Only the invoice total is rounded, once, half-even to the minor unit.

**Prepaid plans.** On a plan with `prepaid = true`, an event whose positive cost
is more than the credit that can pay for it is refused (CreditsExhausted); on
other plans the grants pay what they can and the rest is billed.

**Notifications.** `credits.low` when the wallet's available credit falls below
the plan's `credits_low_threshold`; `credits.exhausted` when it reaches zero
or an event is refused for credit. Each is once per wallet generation: a
top-up starts a new generation, which re-arms both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple
from uuid import UUID

from metering.domain import decimals, limits
from metering.domain.catalog import Aggregation, Enforcement, Price
from metering.domain.decimals import ZERO
from metering.domain.pricing import exact_amount, round_money


class CreditCategory(StrEnum):
    """What the customer gave for the credit."""

    PAID = "paid"
    PROMOTIONAL = "promotional"


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """Credit in money added to a customer's wallet."""

    customer_id: str
    grant_id: str  # the caller's idempotency key
    currency: str
    amount: Decimal  # > 0, exact
    category: CreditCategory
    priority: int  # lower burns first
    effective_at: datetime
    expires_at: datetime | None  # exclusive; None: never expires
    meters: tuple[str, ...]  # sorted; empty: every meter
    reason: str
    created_at: datetime

    @property
    def burn_order(self) -> tuple[int, bool, datetime, datetime, str]:
        """The key grants burn in: priority, then expiry (never-expiring last),
        then effective time, then grant id."""
        expiry = self.expires_at
        return (self.priority, expiry is None, expiry or self.effective_at, self.effective_at, self.grant_id)

    def active_at(self, at: datetime) -> bool:
        return self.effective_at <= at and (self.expires_at is None or at < self.expires_at)

    def pays_for(self, meter_slug: str, at: datetime, currency: str) -> bool:
        """Whether the grant may pay for an event of `meter_slug` at `at`."""
        return self.currency == currency and self.active_at(at) and (not self.meters or meter_slug in self.meters)


def sort_grants(grants: Iterable[CreditGrant]) -> list[CreditGrant]:
    """Grants in burn order."""
    return sorted(grants, key=lambda grant: grant.burn_order)


@dataclass(slots=True)
class Wallet:
    """A customer's wallet as a transaction holding its lock sees it."""

    customer_id: str
    generation: int  # the number of grants ever given: a top-up re-arms notifications
    grants: list[CreditGrant]  # in burn order
    remaining: dict[str, Decimal]  # by grant id: amount less its net burns

    def available(self, meter_slug: str, at: datetime, currency: str) -> Decimal:
        """The credit that can pay for an event of `meter_slug` at `at`."""
        return decimals.add(
            *(
                self.remaining[g.grant_id]
                for g in self.grants
                if self.remaining[g.grant_id] > 0 and g.pays_for(meter_slug, at, currency)
            )
        )

    def total_available(self, at: datetime, currency: str) -> Decimal:
        """The credit active at `at`, whatever meters it pays for."""
        return decimals.add(
            *(
                self.remaining[g.grant_id]
                for g in self.grants
                if g.currency == currency and g.active_at(at) and self.remaining[g.grant_id] > 0
            )
        )


class SpendKey(NamedTuple):
    """What usage is priced by: a customer's meter in one period at one price."""

    customer_id: str
    meter_slug: str
    period_start: datetime
    price_slug: str


@dataclass(slots=True)
class Spend:
    """The priced quantity of a SpendKey, what it has been charged (exact), and
    what each grant paid of that (net of credit given back), in burn order."""

    state: limits.CounterState = field(default_factory=limits.CounterState)
    charged: Decimal = ZERO
    burned: dict[str, Decimal] = field(default_factory=dict)

    @property
    def covered(self) -> Decimal:
        return decimals.add(*self.burned.values())


@dataclass(frozen=True, slots=True)
class Burn:
    """Credit taken from a grant (negative: given back to it)."""

    grant_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Charge:
    """What charging one event does: its marginal cost, the burns, and the Spend after it."""

    cost: Decimal  # exact; negative when the usage got cheaper
    burns: tuple[Burn, ...]
    spend_after: Spend

    @property
    def taken(self) -> Decimal:
        """The credit the event took (negative: gave back)."""
        return decimals.add(*(b.amount for b in self.burns))


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A prepaid plan's refusal: the event costs more than the credit that can pay for it."""

    cost: Decimal
    available: Decimal


_UNLIMITED = {aggregation: limits.Allowance(aggregation, Enforcement.SOFT, None) for aggregation in Aggregation}


def advance(
    aggregation: Aggregation,
    state: limits.CounterState,
    quantity: Decimal,
    *,
    event_time: datetime,
    event_id: UUID,
    new_unique_value: bool,
) -> limits.CounterState:
    """The priced quantity after an accepted event: the meter's aggregation
    applied to the Spend's own state, as the counter applies it to its own
    (metering.domain.limits.decide, without a limit)."""
    return limits.decide(
        _UNLIMITED[aggregation],
        state,
        quantity,
        event_time=event_time,
        event_id=event_id,
        new_unique_value=new_unique_value,
    ).state_after


def start(price: Price, included: Decimal, currency: str, state: limits.CounterState) -> Spend:
    """A Spend that starts from usage recorded before its customer had a
    wallet: charged its exact cost, none of it covered (it is billed)."""
    return Spend(state, exact_amount(price, state.used, included), {})


def marginal_cost(price: Price, included: Decimal, currency: str, spend: Spend, used_after: Decimal) -> Decimal:
    """cost(priced quantity after) - what it was charged before: exact, may be negative."""
    return decimals.sub(exact_amount(price, used_after, included), spend.charged)


def allocate(wallet: Wallet, amount: Decimal, meter_slug: str, at: datetime, currency: str) -> list[Burn]:
    """Burns of up to `amount` over the grants that pay for the event, in burn order."""
    burns: list[Burn] = []
    left = amount
    for grant in wallet.grants:
        if left <= 0:
            break
        remaining = wallet.remaining[grant.grant_id]
        if remaining <= 0 or not grant.pays_for(meter_slug, at, currency):
            continue
        taken = min(remaining, left)
        burns.append(Burn(grant.grant_id, taken))
        left = decimals.sub(left, taken)
    return burns


def give_back(wallet: Wallet, spend: Spend, amount: Decimal) -> list[Burn]:
    """Negative burns returning `amount` (> 0) to the grants this Spend burned,
    in reverse burn order."""
    order = {grant.grant_id: index for index, grant in enumerate(wallet.grants)}
    burns: list[Burn] = []
    left = amount
    for grant_id in sorted(spend.burned, key=lambda g: order.get(g, -1), reverse=True):
        if left <= 0:
            break
        held = spend.burned[grant_id]
        if held <= 0:
            continue
        returned = min(held, left)
        burns.append(Burn(grant_id, -returned))
        left = decimals.sub(left, returned)
    return burns


def charge(
    wallet: Wallet,
    spend: Spend,
    *,
    price: Price,
    included: Decimal,
    currency: str,
    state_after: limits.CounterState,
    meter_slug: str,
    at: datetime,
    prepaid: bool,
) -> Charge | Shortfall:
    """Charge one accepted event: its marginal cost under `price` with the
    priced quantity moving to `state_after`, paid by the wallet's grants in
    burn order (or credit given back when it is negative). A prepaid plan's
    event that the credit cannot cover is a Shortfall, and nothing changes."""
    cost = marginal_cost(price, included, currency, spend, state_after.used)
    burns: list[Burn] = []
    if cost > 0:
        if prepaid:
            available = wallet.available(meter_slug, at, currency)
            if cost > available:
                return Shortfall(cost, available)
        burns = allocate(wallet, cost, meter_slug, at, currency)
    elif cost < 0:
        charged_after = decimals.add(spend.charged, cost)
        excess = decimals.sub(spend.covered, charged_after)
        if excess > 0:
            burns = give_back(wallet, spend, excess)
    burned = dict(spend.burned)
    for burn in burns:
        burned[burn.grant_id] = decimals.add(burned.get(burn.grant_id, ZERO), burn.amount)
    return Charge(cost, tuple(burns), Spend(state_after, decimals.add(spend.charged, cost), burned))


def apply(wallet: Wallet, burns: Sequence[Burn]) -> None:
    """The wallet's remaining credit after `burns`."""
    for burn in burns:
        wallet.remaining[burn.grant_id] = decimals.sub(wallet.remaining[burn.grant_id], burn.amount)


def crossings(before: Decimal, after: Decimal, low_threshold: Decimal | None) -> tuple[bool, bool]:
    """Whether a change of the wallet's available credit from `before` to
    `after` crossed below the low threshold, and whether it reached zero."""
    low = low_threshold is not None and before >= low_threshold > after
    exhausted = before > 0 and after <= 0
    return low, exhausted


@dataclass(frozen=True, slots=True)
class CreditApplied:
    """What one grant paid toward a billing period's usage: the exact sum of its burns."""

    grant_id: str
    category: CreditCategory
    amount: Decimal


def credits_total(applied: Sequence[CreditApplied], currency: str) -> Decimal:
    """A bill's `credits`: minus the exact sum of the credit applied, rounded
    once, half-even, to the currency's minor unit (zero or negative)."""
    total = decimals.add(*(c.amount for c in applied))
    return decimals.sub(ZERO, round_money(total, currency)) if total else ZERO


@dataclass(frozen=True, slots=True)
class GrantBalance:
    """One grant as GetWallet answers it."""

    grant: CreditGrant
    remaining: Decimal
    active: bool


@dataclass(frozen=True, slots=True)
class WalletSummary:
    """A wallet at an instant: the credit available now, grant by grant."""

    customer_id: str
    currency: str
    available: Decimal  # the credit of the grants active now
    grants: list[GrantBalance]  # in burn order


def summarize(customer_id: str, currency: str, wallet: Wallet | None, at: datetime) -> WalletSummary:
    """What a wallet holds at `at` (an empty summary without a wallet)."""
    if wallet is None:
        return WalletSummary(customer_id, currency, ZERO, [])
    grants = [
        GrantBalance(g, wallet.remaining[g.grant_id], g.active_at(at) and g.currency == currency) for g in wallet.grants
    ]
    return WalletSummary(customer_id, currency, wallet.total_available(at, currency), grants)


def requested_cost(
    price: Price, included: Decimal, currency: str, used: Decimal, requested: Decimal, aggregation: Aggregation
) -> Decimal:
    """What `requested` more units would cost now, for a balance check: the
    marginal cost at the meter's current usage (accumulating meters), or of
    reporting `requested` as the gauge's value."""
    before = exact_amount(price, used, included)
    after_used = decimals.add(used, requested) if aggregation.accumulates else max(used, requested)
    return decimals.sub(exact_amount(price, after_used, included), before)
