"""What an event means, and the decision of a batch of events: pure, no SQL, no I/O.

The batching writer (metering.ledger.writer) reads the batch's customers in
its transaction and calls `resolve` for each command with the customer row it
read (what the event means under the customer's plan: terms, period, price,
whether it is late); it then reads what the batch needs (metering.ledger.usage),
hands it here as `BatchReads`, and writes what `decide_batch` returns.
Everything between the reads and the write is in this module, so it is tested
without a database (tests/unit/test_batch_decision.py, test_resolve.py).

Events are decided in arrival order: duplicates of recorded events, payload
conflicts (also between two events of the same batch), late events (the
refusal a resolution carries applies only to a transaction id not recorded
yet: a reused id is a duplicate or a conflict whatever its time), limits,
thresholds crossed and the first hard-limit refusal of a period.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple
from uuid import UUID

from metering.domain import closing, decimals, limits, notifications, terms, wallets
from metering.domain.catalog import Meter, PlanMeter, Price
from metering.domain.errors import (
    CatalogReloaded,
    CreditsExhausted,
    InvalidArgument,
    MeteringError,
    NotFound,
    PriceCurrencyMismatch,
    TransactionConflict,
)
from metering.domain.notifications import MeterTerms, NewNotification
from metering.domain.periods import BillingPeriod, Period, Periods
from metering.domain.records import (
    CounterReading,
    CustomerRecord,
    NewEvent,
    RecordOutcome,
    StoredEvent,
    payload_differences,
)


class CounterKey(NamedTuple):
    """A counter row: one customer's meter in one period. A NamedTuple, not a
    dataclass: it is a dict key several times per event, and a tuple hashes
    and compares in C."""

    customer_id: str
    meter_slug: str
    period_start: datetime


_new_key = tuple.__new__  # CounterKey without NamedTuple's Python-level __new__ (2.4x faster, once per event)

# What the grants and holds an event sees depend on: its counter and its time.
AllowanceKey = tuple[str, str, datetime, datetime]  # customer, meter, period start, event time


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class UsageCommand:
    """A validated RecordUsage request with its catalog references resolved."""

    customer_id: str
    transaction_id: str
    meter: Meter
    price: Price | None  # the price the caller named, if any
    quantity: Decimal
    event_time: datetime | None  # None: the time the call was received
    properties: dict[str, str]
    unique_value: str | None  # the counted property value, for UNIQUE_COUNT meters
    allow_overage: bool
    # The server's clock, read once at the edge for the whole call: the
    # validation's too-old and too-new checks and the default event time.
    received_at: datetime
    # An event time older than the backfill window: refused if its transaction
    # id is new (validation decides, the writer applies: a reused id is a
    # duplicate or a conflict whatever its time).
    too_old: InvalidArgument | None = None


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class WalletTerms:
    """What charging an event to its customer's wallet needs (metering.domain.wallets):
    set on a resolution only for a customer with a wallet or on a prepaid plan."""

    price: Price  # the event's price
    included: Decimal  # the plan's included units when the price is the plan's, else 0
    currency: str  # the plan's
    prepaid: bool
    low_threshold: Decimal | None
    meter: Meter
    billing_period: BillingPeriod  # the billing period the event is billed in

    def spend_key(self, event: NewEvent | StoredEvent) -> wallets.SpendKey:
        return wallets.SpendKey(event.customer_id, event.meter_slug, self.billing_period.start, event.price_slug)


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class Resolution:
    """What the engine decided an event means under its customer's plan."""

    event: NewEvent
    plan: limits.Allowance  # without grants and holds: the writer adds them
    period: Period
    unique_value: str | None
    allow_overage: bool
    terms: MeterTerms  # what notifications about this meter say of the plan
    plan_terms: PlanMeter  # the plan's terms for the meter (balances, refusals)
    billing_anchor: datetime  # the customer's: a duplicate's balance is of its original's period
    # The event's values of its meter's declared dimensions: its rollup bucket.
    dimensions: dict[str, str] = field(default_factory=dict)
    # Refuses the event if its transaction id is new (a reused id is a
    # duplicate or a conflict, whatever its time): a time outside the backfill
    # window, before the customer's first period, or in a finalized period.
    refusal: MeteringError | None = None
    # Set when the event is charged to a wallet (its customer has one, or its plan is prepaid).
    wallet: WalletTerms | None = None
    # counter_key, built on first use: the batch looks it up more than once.
    _counter_key: CounterKey | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def counter_key(self) -> CounterKey:
        key = self._counter_key
        if key is None:
            event = self.event
            key = self._counter_key = _new_key(CounterKey, (event.customer_id, event.meter_slug, self.period.start))
        return key

    @property
    def spend_key(self) -> wallets.SpendKey:
        """The priced quantity a wallet-charged event moves (metering.domain.wallets)."""
        assert self.wallet is not None
        return self.wallet.spend_key(self.event)

    @property
    def allowance_key(self) -> AllowanceKey:
        return (self.event.customer_id, self.event.meter_slug, self.period.start, self.event.event_time)


def resolve(command: UsageCommand, customer: CustomerRecord | None, book: terms.TermsBook) -> Resolution:
    """What the event means under its customer's plan, given the customer row
    the writer read in its transaction (None: no such customer): the plan's
    terms for the meter, the event's time (the call's when it gave none) and
    period, its price, and whether it is late. Raises the error that refuses
    it outright (an unknown customer, a plan the catalog lost, a price in
    another currency than the plan's)."""
    if customer is None:
        # No event was ever recorded for an unknown customer: a bad time
        # is refused as it was sent, before the reference.
        raise command.too_old or NotFound("customer", command.customer_id)
    named = command.price
    if not book.catalog.defines(command.meter, named):
        # Validated under the catalog a reload has since replaced, which
        # changed what the event names: decided under neither.
        raise CatalogReloaded(command.meter.slug, named.slug if named else "")
    known = book.of(customer.plan_slug, command.meter)
    plan_terms = known.terms
    if named is not None and named.currency is not None and named.currency != known.plan.currency:
        raise PriceCurrencyMismatch(named.slug, named.currency, known.plan.currency or "")
    event_time = command.event_time or command.received_at
    event = NewEvent(
        customer_id=command.customer_id,
        transaction_id=command.transaction_id,
        meter_slug=command.meter.slug,
        price_slug=named.slug if named else plan_terms.price,
        requested_price_slug=named.slug if named else None,
        quantity=command.quantity,
        event_time=event_time,
        event_time_given=command.event_time is not None,
        properties=command.properties,
    )
    anchor = customer.billing_anchor
    refusal = command.too_old or closing.late_refusal(
        customer.customer_id,
        command.transaction_id,
        event_time,
        anchor,
        customer.closed_through,
        book.anchor_skew_tolerance,
    )
    return Resolution(
        event,
        known.plan_allowance,
        known.event_period(event_time, anchor, book.periods),
        command.unique_value,
        command.allow_overage,
        dimensions=command.meter.dimension_values(command.properties),
        terms=known.notified,
        plan_terms=plan_terms,
        billing_anchor=anchor,
        refusal=refusal,
        wallet=wallet_terms(customer, known, named or known.price, event_time, book.periods),
    )


def resolve_all(
    commands: Sequence[UsageCommand], customers: Mapping[str, CustomerRecord], book: terms.TermsBook
) -> list[Resolution | MeteringError]:
    """[resolve(command, customers.get(command.customer_id), book)] for each
    command (or the error refusing it), with what the events of one customer,
    meter, named price and event time share decided once: the catalog check,
    the plan's terms, the price, the period, and that the event is neither
    late nor charged to a wallet. An event with properties or already too old,
    and every event of a key whose first event was late, charged to a wallet
    or refused, is resolved by resolve itself.

    Sharing is sound because resolve decides those parts from the customer
    row, the meter, the named price and the event time alone (a lateness
    refusal names the transaction id, but whether there is one does not
    depend on it); each event's own fields (transaction id, quantity, whether
    a time was given, overage mode) are its command's. The shared objects are
    the ones resolve hands out for every event anyway (the book's terms and
    periods). tests/unit/test_resolve.py checks the equality on generated
    commands."""
    resolutions: list[Resolution | MeteringError] = []
    shared: dict[tuple[str, int, int, datetime], tuple[UsageCommand, Resolution]] = {}
    for command in commands:
        customer_id, meter, named = command.customer_id, command.meter, command.price
        event_time = command.event_time or command.received_at
        plain = command.too_old is None and not command.properties
        key = (customer_id, id(meter), id(named), event_time)
        found = shared.get(key) if plain else None
        # The first command keeps its meter and price alive, so their ids are
        # theirs; checked anyway.
        if found is None or found[0].meter is not meter or found[0].price is not named:
            try:
                resolution = resolve(command, customers.get(customer_id), book)
            except MeteringError as exc:
                resolutions.append(exc)
                continue
            resolutions.append(resolution)
            if plain and resolution.refusal is None and resolution.wallet is None:
                shared[key] = (command, resolution)
            continue
        first = found[1]
        event = first.event
        resolutions.append(
            Resolution(
                NewEvent(
                    customer_id,
                    command.transaction_id,
                    event.meter_slug,
                    event.price_slug,
                    event.requested_price_slug,
                    command.quantity,
                    event.event_time,
                    command.event_time is not None,
                    command.properties,
                ),
                first.plan,
                first.period,
                command.unique_value,
                command.allow_overage,
                first.terms,
                first.plan_terms,
                first.billing_anchor,
                {},  # the meter's dimensions among no properties
            )
        )
    return resolutions


def wallet_terms(
    customer: CustomerRecord,
    known: terms.PlanTerms,
    price: Price,
    event_time: datetime,
    periods: Periods | None = None,
) -> WalletTerms | None:
    """What charging an event at `price` to the customer's wallet needs; None
    (nothing to charge) for a customer without a wallet on a plan that needs none.
    `periods` remembers recent billing periods (the batching writer's TermsBook)."""
    plan = known.plan
    if not (customer.has_wallet or plan.prepaid):
        return None
    assert plan.currency is not None  # every plan has one (catalog check)
    anchor = customer.billing_anchor
    if periods is None:
        billing = closing.billing_period(event_time, anchor)
    else:
        found = periods.containing(event_time, anchor, closing.BILLING_PERIOD)
        assert found.end is not None  # a billing period always ends
        billing = BillingPeriod(found.start, found.end)
    return WalletTerms(
        price=price,
        included=known.terms.included if price.slug == known.terms.price else decimals.ZERO,
        currency=plan.currency,
        prepaid=plan.prepaid,
        low_threshold=plan.credits_low_threshold,
        meter=known.meter,
        billing_period=billing,
    )


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class Written:
    """The outcome of one event and the resolution it was decided under."""

    outcome: RecordOutcome
    resolution: Resolution


EventResult = Written | MeteringError


@dataclass(frozen=True, slots=True)
class BatchReads:
    """What the batch's transaction read before deciding."""

    # Locked counters, plus the counters of recorded events the batch repeats.
    counters: dict[CounterKey, limits.CounterState]
    existing: dict[tuple[str, str], StoredEvent]  # recorded events, by (customer, transaction id)
    holdings: dict[AllowanceKey, tuple[Decimal, Decimal]]  # (granted, reserved) for each allowance key
    seen_values: set[tuple[CounterKey, str]]  # distinct values already counted
    # Wallets (locked) of the batch's wallet-charged customers, and their priced quantities.
    wallet_states: dict[str, wallets.Wallet] = field(default_factory=dict)
    spends: dict[wallets.SpendKey, wallets.Spend] = field(default_factory=dict)


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class Insert:
    """An accepted event to insert, with what its counter and rollup bucket need."""

    event: NewEvent
    event_id: UUID
    key: CounterKey
    dimensions: dict[str, str]
    unique_value: str | None


@dataclass(frozen=True, slots=True)
class BurnRow:
    """A burn to append (metering.domain.wallets.Burn with the event that made it)."""

    key: wallets.SpendKey
    event_id: UUID
    burn: wallets.Burn


@dataclass(frozen=True, slots=True)
class WalletWrites:
    """What a batch changes in wallets: each Spend once, the burns, and each grant's remaining."""

    spends: list[tuple[wallets.SpendKey, wallets.Spend]]
    burns: list[BurnRow]
    remaining: list[tuple[str, str, Decimal]]  # (customer, grant id, remaining)

    def __bool__(self) -> bool:
        return bool(self.spends or self.burns)


NO_WALLET_WRITES = WalletWrites([], [], [])


@dataclass(frozen=True, slots=True)
class UniqueValue:
    """A distinct value counted for the first time in its period."""

    key: CounterKey
    value: str
    first_event_id: UUID


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class _Accepted:
    """Accepted, answered once its row is inserted (the database sets recorded_at)."""

    insert: int  # index into BatchPlan.inserts
    resolution: Resolution
    decision: limits.Decision
    reading: CounterReading


@dataclass(slots=True)  # built per event: not frozen (see metering.domain.limits)
class _DuplicateOf:
    """Repeats the transaction id of an event accepted earlier in the batch."""

    first_index: int
    resolution: Resolution


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What to write for a batch, and how to answer each event once it is written."""

    inserts: list[Insert]  # in arrival order
    counters: list[tuple[CounterKey, limits.CounterState]]  # each counter decided on, once, sorted
    unique_values: list[UniqueValue]
    notifications: list[NewNotification]  # once each by (customer, dedupe key)
    _answers: list[EventResult | _Accepted | _DuplicateOf]
    wallet_writes: WalletWrites = NO_WALLET_WRITES

    def answers(self, stored: Sequence[StoredEvent]) -> list[EventResult]:
        """Every event's result, given the stored form of each insert (same order)."""
        assert len(stored) == len(self.inserts)
        results: list[EventResult] = []
        for answer in self._answers:
            if isinstance(answer, _Accepted):
                outcome = RecordOutcome(stored[answer.insert], False, answer.decision, answer.reading)
                results.append(Written(outcome, answer.resolution))
            elif isinstance(answer, _DuplicateOf):
                original = results[answer.first_index]
                assert isinstance(original, Written) and original.outcome.event is not None
                outcome = RecordOutcome(original.outcome.event, True, None, original.outcome.reading)
                results.append(Written(outcome, answer.resolution))
            else:
                results.append(answer)
        return results


def counters_to_lock(resolutions: Sequence[Resolution | MeteringError]) -> dict[CounterKey, Period]:
    """The counters a batch may change, in the stable (sorted) order every
    writer locks them in. An event that is refused unless it is a replay creates
    no counter: nothing may be written for it (a replay reads its original's)."""
    periods = {r.counter_key: r.period for r in resolutions if isinstance(r, Resolution) and r.refusal is None}
    return {key: periods[key] for key in sorted(periods)}


def allowance_key_for(resolution: Resolution, existing: dict[tuple[str, str], StoredEvent]) -> AllowanceKey:
    """The grants and holds an event's answer sees: those of its counter at its time. A replay
    reports its original's balance, so it sees the original's: a retry that omits a backdated
    event's time must not get the current period's holds and today's grants."""
    earlier = existing.get((resolution.event.customer_id, resolution.event.transaction_id))
    if earlier is not None:
        return (earlier.customer_id, earlier.meter_slug, earlier.period_start, earlier.event_time)
    return resolution.allowance_key


def originals_unlocked(existing: dict[tuple[str, str], StoredEvent], locked: Container[CounterKey]) -> list[CounterKey]:
    """Counters of recorded events the batch repeats that it did not lock (a
    duplicate reports its original's counter): rare, read on their own."""
    keys = {CounterKey(e.customer_id, e.meter_slug, e.period_start) for e in existing.values()}
    return sorted(key for key in keys if key not in locked)


def decide_batch(
    resolutions: Sequence[Resolution | MeteringError],
    reads: BatchReads,
    event_ids: Iterator[UUID],
    announced: Container[tuple[str, str]],
) -> BatchPlan:
    """Decide every event in order. `event_ids` gives each accepted event its
    id; `announced` holds (customer, dedupe key) of notifications known to be in
    the outbox already (not built again)."""
    states = dict(reads.counters)
    seen_values = set(reads.seen_values)
    charging = WalletCharging(reads.wallet_states, reads.spends) if reads.wallet_states or reads.spends else None
    answers: list[EventResult | _Accepted | _DuplicateOf] = []
    in_batch: dict[tuple[str, str], tuple[int, NewEvent, UUID]] = {}  # accepted earlier in this batch
    inserts: list[Insert] = []
    touched: set[CounterKey] = set()
    new_values: list[UniqueValue] = []
    announce: dict[tuple[str, str], NewNotification] = {}
    # One allowance (and threshold bound) per (counter, event time): the events
    # of a call mostly share both.
    allowances: dict[AllowanceKey, tuple[limits.Allowance, Decimal | None]] = {}
    for index, resolution in enumerate(resolutions):
        if not isinstance(resolution, Resolution):
            answers.append(resolution)
            continue
        event, key = resolution.event, resolution.counter_key
        allowance_key = allowance_key_for(resolution, reads.existing)
        found = allowances.get(allowance_key)
        if found is None:
            granted, reserved = reads.holdings[allowance_key]
            allowance = terms.allowance(resolution.plan, granted, reserved)
            found = allowances[allowance_key] = (
                allowance,
                terms.quiet_below(allowance, resolution.terms.approaching_threshold),
            )
        allowance, quiet_below = found
        txn = (event.customer_id, event.transaction_id)
        try:
            # A reused transaction id is judged before any time policy: an exact
            # replay is a duplicate whatever its time now (its period may have
            # closed since), any other payload a conflict whatever its time. The
            # time policy (resolution.refusal) only ever judges a new id.
            earlier = reads.existing.get(txn)
            if earlier is not None:
                _same_payload(earlier, str(earlier.event_id), event)
                original = states[CounterKey(earlier.customer_id, earlier.meter_slug, earlier.period_start)]
                reading = CounterReading(original, allowance.granted, allowance.reserved, allowance)
                answers.append(Written(RecordOutcome(earlier, True, None, reading), resolution))
                continue
            if txn in in_batch:
                first_index, first, first_id = in_batch[txn]
                _same_payload(first, str(first_id), event)
                answers.append(_DuplicateOf(first_index, resolution))
                continue
            if resolution.refusal is not None:
                raise resolution.refusal
        except MeteringError as exc:
            answers.append(exc)
            continue
        unique = resolution.unique_value
        new_value = unique is not None and (key, unique) not in seen_values
        event_id = next(event_ids)
        before = states[key]
        decision = limits.decide(
            allowance,
            before,
            event.quantity,
            event_time=event.event_time,
            event_id=event_id,
            new_unique_value=new_value,
            allow_overage=resolution.allow_overage,
        )
        touched.add(key)
        reading = CounterReading(decision.state_after, allowance.granted, allowance.reserved, allowance)
        if not decision.accepted:
            answers.append(Written(RecordOutcome(None, False, decision, reading), resolution))
            # A customer that keeps hitting its limit is refused event after
            # event; the first refusal of the period was announced long ago,
            # so most refusals need no notification built.
            rejection = (event.customer_id, notifications.limit_rejected_key(event.meter_slug, resolution.period))
            if rejection not in announced:
                _announce(
                    announce,
                    [
                        notifications.limit_rejected_notification(
                            event.customer_id,
                            event.meter_slug,
                            resolution.terms,
                            resolution.period,
                            allowance,
                            available=decision.available_before,
                            requested=decision.cost,
                            transaction_id=event.transaction_id,
                        )
                    ],
                )
            continue
        wallet_terms = resolution.wallet
        if wallet_terms is not None:
            if charging is None:
                charging = WalletCharging({}, {})
            refused = charging.charge(
                event, resolution.terms.plan_slug, wallet_terms, event_id, new_value=new_value, announce=announce
            )
            if refused is not None:
                answers.append(refused)
                continue
        after = decision.state_after
        if quiet_below is not None and after.used >= quiet_below:
            _announce(
                announce,
                notifications.thresholds_notifications(
                    event.customer_id,
                    event.meter_slug,
                    resolution.terms,
                    resolution.period,
                    allowance,
                    before.used,
                    after.used,
                ),
            )
        states[key] = after
        in_batch[txn] = (index, event, event_id)
        answers.append(_Accepted(len(inserts), resolution, decision, reading))
        inserts.append(Insert(event, event_id, key, resolution.dimensions, unique))
        if new_value:
            assert unique is not None
            seen_values.add((key, unique))
            new_values.append(UniqueValue(key, unique, event_id))
    counters = [(key, states[key]) for key in sorted(touched)]
    writes = NO_WALLET_WRITES if charging is None else charging.writes()
    return BatchPlan(inserts, counters, new_values, list(announce.values()), answers, writes)


class WalletCharging:
    """Wallets (locked by the caller's transaction) as events are charged to them, in
    order: the batching writer's, a reservation's commit, and a void's settlement."""

    def __init__(self, wallet_states: dict[str, wallets.Wallet], spends: dict[wallets.SpendKey, wallets.Spend]) -> None:
        self.wallets = dict(wallet_states)
        self.spends = dict(spends)
        self.burns: list[BurnRow] = []
        self.touched: set[wallets.SpendKey] = set()

    def _wallet(self, customer_id: str) -> wallets.Wallet:
        wallet = self.wallets.get(customer_id)
        if wallet is None:
            wallet = self.wallets[customer_id] = wallets.Wallet(customer_id, 0, [], {})
        return wallet

    def settle(self, event: StoredEvent, terms: WalletTerms, state_after: limits.CounterState) -> None:
        """Move the priced quantity of a recorded event's key to `state_after`
        (recomputed from the events after a void): usage that got cheaper gives
        credit back; one that costs more (a voided LATEST gauge reading) is
        paid by the grants as far as they go, never refused."""
        key = terms.spend_key(event)
        spend = self.spends.get(key) or wallets.Spend()
        outcome = wallets.charge(
            self._wallet(event.customer_id),
            spend,
            price=terms.price,
            included=terms.included,
            currency=terms.currency,
            state_after=state_after,
            meter_slug=event.meter_slug,
            at=event.event_time,
            prepaid=False,
        )
        assert isinstance(outcome, wallets.Charge)  # never refused without prepaid
        self.spends[key] = outcome.spend_after
        self.touched.add(key)
        wallets.apply(self._wallet(event.customer_id), outcome.burns)
        self.burns.extend(BurnRow(key, event.event_id, burn) for burn in outcome.burns)

    def charge(
        self,
        event: NewEvent,
        plan_slug: str,
        terms: WalletTerms,
        event_id: UUID,
        *,
        new_value: bool,
        announce: dict[tuple[str, str], NewNotification],
    ) -> CreditsExhausted | None:
        """Charge an event the limits accepted; the refusal of a prepaid plan's
        event the credit cannot cover (nothing changes then)."""
        customer_id = event.customer_id
        wallet = self._wallet(customer_id)
        key = terms.spend_key(event)
        spend = self.spends.get(key) or wallets.Spend()
        state_after = wallets.advance(
            terms.meter.aggregation,
            spend.state,
            event.quantity,
            event_time=event.event_time,
            event_id=event_id,
            new_unique_value=new_value,
        )
        at = event.event_time
        outcome = wallets.charge(
            wallet,
            spend,
            price=terms.price,
            included=terms.included,
            currency=terms.currency,
            state_after=state_after,
            meter_slug=event.meter_slug,
            at=at,
            prepaid=terms.prepaid,
        )
        if isinstance(outcome, wallets.Shortfall):
            _announce(
                announce,
                [
                    notifications.credits_exhausted_notification(
                        customer_id,
                        terms.currency,
                        wallet.generation,
                        available=outcome.available,
                        requested=outcome.cost,
                        transaction_id=event.transaction_id,
                        meter_slug=event.meter_slug,
                        refused=True,
                    )
                ],
            )
            return CreditsExhausted(
                customer_id=customer_id,
                meter=event.meter_slug,
                plan=plan_slug,
                currency=terms.currency,
                cost=outcome.cost,
                available=outcome.available,
            )
        self.spends[key] = outcome.spend_after
        self.touched.add(key)
        if outcome.burns:
            wallets.apply(wallet, outcome.burns)
            self.burns.extend(BurnRow(key, event_id, burn) for burn in outcome.burns)
            # A positive burn takes only from grants active at `at` in this currency; credit
            # given back only raises the total, which crosses nothing (wallets.crossings).
            total_after = wallet.total_available(at, terms.currency)
            total_before = decimals.add(total_after, outcome.taken)
            low, exhausted = wallets.crossings(total_before, total_after, terms.low_threshold)
            new: list[NewNotification] = []
            if low:
                assert terms.low_threshold is not None
                new.append(
                    notifications.credits_low_notification(
                        customer_id,
                        terms.currency,
                        wallet.generation,
                        available=total_after,
                        threshold=terms.low_threshold,
                        transaction_id=event.transaction_id,
                    )
                )
            if exhausted:
                new.append(
                    notifications.credits_exhausted_notification(
                        customer_id,
                        terms.currency,
                        wallet.generation,
                        available=total_after,
                        requested=outcome.cost,
                        transaction_id=event.transaction_id,
                        meter_slug=event.meter_slug,
                        refused=False,
                    )
                )
            _announce(announce, new)
        return None

    def writes(self) -> WalletWrites:
        spends = [(key, self.spends[key]) for key in sorted(self.touched)]
        changed = {(row.key.customer_id, row.burn.grant_id) for row in self.burns}
        remaining = [
            (customer_id, grant_id, self.wallets[customer_id].remaining[grant_id])
            for customer_id, grant_id in sorted(changed)
        ]
        return WalletWrites(spends, self.burns, remaining)


def _announce(announce: dict[tuple[str, str], NewNotification], new: list[NewNotification]) -> None:
    """Keep the first of each notification the batch's decisions call for."""
    for notification in new:
        announce.setdefault((notification.customer_id, notification.dedupe_key), notification)


def _same_payload(earlier: StoredEvent | NewEvent, earlier_id: str, new: NewEvent) -> None:
    differences = payload_differences(earlier, new)
    if differences:
        raise TransactionConflict(new.transaction_id, differences, earlier_id)
