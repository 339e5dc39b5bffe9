"""Wallets (metering.domain.wallets): the burn order, marginal costs, give-backs,
prepaid refusals and crossings, and a property test of the burn-down against a
small model written independently of the implementation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from metering.domain import limits, wallets
from metering.domain.catalog import Aggregation, Meter, Price, PricingModel, Tier
from metering.domain.errors import CreditsExhausted
from metering.domain.notifications import CreditsExhausted as ExhaustedPayload
from metering.domain.notifications import CreditsLow, NewNotification, credits_key, dedupe_key
from metering.domain.periods import BillingPeriod
from metering.domain.pricing import price_line
from metering.domain.records import NewEvent, StoredEvent
from metering.domain.usage import WalletCharging, WalletTerms
from metering.domain.wallets import (
    Burn,
    Charge,
    CreditApplied,
    CreditCategory,
    CreditGrant,
    Shortfall,
    Spend,
    Wallet,
)

D = Decimal
T0 = datetime(2026, 3, 1, tzinfo=UTC)
GRADUATED = Price(
    "tokens_graduated",
    "tokens",
    PricingModel.GRADUATED,
    "USD",
    tiers=(Tier(D(100), D("0.01")), Tier(D(1000), D("0.005"), D("0.25")), Tier(None, D("0.001"))),
)
VOLUME = Price(
    "images_volume", "images", PricingModel.VOLUME, "USD", tiers=(Tier(D(3), D("0.10")), Tier(None, D("0.05")))
)
TOKENS = Meter("tokens", Aggregation.SUM, "token")
IMAGES = Meter("images", Aggregation.SUM, "image")


def grant(
    grant_id: str,
    amount: str,
    *,
    priority: int = 0,
    expires: datetime | None = None,
    effective: datetime = T0,
    meters: tuple[str, ...] = (),
    currency: str = "USD",
) -> CreditGrant:
    return CreditGrant(
        customer_id="acme",
        grant_id=grant_id,
        currency=currency,
        amount=D(amount),
        category=CreditCategory.PAID,
        priority=priority,
        effective_at=effective,
        expires_at=expires,
        meters=meters,
        reason="",
        created_at=T0,
    )


def wallet_of(*grants: CreditGrant) -> Wallet:
    return Wallet("acme", 1, wallets.sort_grants(grants), {g.grant_id: g.amount for g in grants})


def state(used: str) -> limits.CounterState:
    return limits.CounterState(used=D(used), event_count=1, latest_event_time=T0, latest_event_id=uuid.uuid4())


def charge(
    wallet: Wallet,
    spend: Spend,
    used_after: str,
    *,
    price: Price = GRADUATED,
    prepaid: bool = False,
    meter: str = "tokens",
    at: datetime = T0 + timedelta(hours=1),
) -> Charge | Shortfall:
    return wallets.charge(
        wallet,
        spend,
        price=price,
        included=D(0),
        currency="USD",
        state_after=state(used_after),
        meter_slug=meter,
        at=at,
        prepaid=prepaid,
    )


# -- the burn order ----------------------------------------------------------------


def test_grants_burn_by_priority_then_soonest_expiry_then_effective_time_then_id() -> None:
    grants = [
        grant("never", "1"),
        grant("late", "1", expires=T0 + timedelta(days=30)),
        grant("soon", "1", expires=T0 + timedelta(days=3)),
        grant("b-first", "1", priority=-1, effective=T0 + timedelta(seconds=1)),
        grant("a-first", "1", priority=-1, effective=T0 + timedelta(seconds=1)),
        grant("earlier", "1", priority=-1),
    ]
    assert [g.grant_id for g in wallets.sort_grants(grants)] == [
        "earlier",
        "a-first",
        "b-first",
        "soon",
        "late",
        "never",
    ]


def test_a_grant_pays_only_while_active_in_its_currency_and_for_its_meters() -> None:
    scoped = grant("g", "1", meters=("images",), expires=T0 + timedelta(days=1), effective=T0)
    assert scoped.pays_for("images", T0, "USD")
    assert not scoped.pays_for("tokens", T0, "USD")
    assert not scoped.pays_for("images", T0 - timedelta(seconds=1), "USD")
    assert not scoped.pays_for("images", T0 + timedelta(days=1), "USD")
    assert not scoped.pays_for("images", T0, "EUR")


def test_allocation_skips_what_cannot_pay_and_stops_when_paid() -> None:
    wallet = wallet_of(
        grant("images-only", "5", priority=-2, meters=("images",)),
        grant("euros", "5", priority=-1, currency="EUR"),
        grant("empty", "1", priority=0),
        grant("a", "0.30", priority=1),
        grant("b", "1", priority=2),
        grant("c", "1", priority=3),
    )
    wallet.remaining["empty"] = D(0)
    assert wallets.allocate(wallet, D("0.50"), "tokens", T0, "USD") == [Burn("a", D("0.30")), Burn("b", D("0.20"))]
    assert wallet.available("tokens", T0, "USD") == D("2.30")
    assert wallet.total_available(T0, "USD") == D("7.30")


# -- marginal costs ------------------------------------------------------------------


def test_graduated_marginal_costs_add_up_to_the_line() -> None:
    spend = Spend()
    total = D(0)
    for used in ("50", "150", "1200"):
        cost = wallets.marginal_cost(GRADUATED, D(0), "USD", spend, D(used))
        total += cost
        spend = Spend(state(used), spend.charged + cost, {})
    assert total == price_line(GRADUATED, D(1200), D(0), "USD").exact_amount == D("5.95")


def test_a_volume_tier_makes_a_marginal_cost_negative() -> None:
    spend = Spend(state("3"), D("0.30"), {})
    assert wallets.marginal_cost(VOLUME, D(0), "USD", spend, D(4)) == D("-0.10")


def test_start_charges_usage_from_before_the_wallet_without_covering_it() -> None:
    started = wallets.start(GRADUATED, D(10), "USD", state("60"))
    assert (started.charged, started.covered) == (D("0.50"), D(0))


def test_advance_applies_the_aggregation() -> None:
    before = state("5")
    after = wallets.advance(Aggregation.MAX, before, D(3), event_time=T0, event_id=uuid.uuid4(), new_unique_value=False)
    assert after.used == D(5) and after.event_count == 2
    after = wallets.advance(Aggregation.SUM, before, D(3), event_time=T0, event_id=uuid.uuid4(), new_unique_value=False)
    assert after.used == D(8)


# -- charging --------------------------------------------------------------------


def test_a_prepaid_event_beyond_the_credit_is_a_shortfall_and_changes_nothing() -> None:
    wallet = wallet_of(grant("g", "0.50"))
    outcome = charge(wallet, Spend(), "60", prepaid=True)
    assert outcome == Shortfall(D("0.60"), D("0.50"))
    assert wallet.remaining == {"g": D("0.50")}


def test_without_prepaid_the_grants_pay_what_they_can() -> None:
    wallet = wallet_of(grant("g", "0.50"))
    outcome = charge(wallet, Spend(), "60")
    assert isinstance(outcome, Charge)
    assert outcome.burns == (Burn("g", D("0.50")),)
    assert (outcome.spend_after.charged, outcome.spend_after.covered) == (D("0.60"), D("0.50"))
    assert outcome.taken == D("0.50") and wallet.available("tokens", T0, "USD") == D("0.50")


def test_a_cheaper_usage_first_drops_the_uncovered_part_then_gives_back_in_reverse_order() -> None:
    wallet = wallet_of(grant("first", "0.25", priority=1), grant("second", "1", priority=2))
    spend = Spend(state("4"), D("0.40"), {"first": D("0.25"), "second": D("0.05")})  # 0.10 uncovered
    outcome = charge(wallet, spend, "3", price=VOLUME, meter="images")  # 3 images: 0.30 (-0.10)
    assert isinstance(outcome, Charge) and outcome.burns == ()  # the uncovered 0.10 absorbs it
    spend = Spend(state("4"), D("0.30"), {"first": D("0.25"), "second": D("0.05")})  # all covered
    outcome = charge(wallet, spend, "5", price=VOLUME, meter="images")  # 5 at 0.05 = 0.25 (-0.05)
    assert isinstance(outcome, Charge)
    assert outcome.burns == (Burn("second", D("-0.05")),)
    outcome = charge(wallet, spend, "1", price=VOLUME, meter="images")  # 0.10 (-0.20)
    assert isinstance(outcome, Charge)
    assert outcome.burns == (Burn("second", D("-0.05")), Burn("first", D("-0.15")))
    wallets.apply(wallet, outcome.burns)
    assert wallet.remaining == {"first": D("0.40"), "second": D("1.05")}


def test_give_back_skips_grants_that_hold_nothing() -> None:
    wallet = wallet_of(grant("a", "1"), grant("b", "1"))
    spend = Spend(state("1"), D(1), {"a": D("0.5"), "b": D(0)})
    assert wallets.give_back(wallet, spend, D("0.2")) == [Burn("a", D("-0.2"))]


def test_a_free_event_costs_nothing() -> None:
    wallet = wallet_of(grant("g", "1"))
    outcome = charge(wallet, Spend(state("10"), D("0.10"), {"g": D("0.10")}), "10", prepaid=True)
    assert isinstance(outcome, Charge) and outcome.cost == 0 and outcome.burns == ()


def test_crossings() -> None:
    assert wallets.crossings(D(1), D("0.4"), D("0.5")) == (True, False)
    assert wallets.crossings(D("0.4"), D("0.3"), D("0.5")) == (False, False)
    assert wallets.crossings(D("0.4"), D(0), None) == (False, True)
    assert wallets.crossings(D(0), D(0), D("0.5")) == (False, False)


def test_summaries_and_requested_costs() -> None:
    empty = wallets.summarize("acme", "USD", None, T0)
    assert (empty.available, empty.grants) == (D(0), [])
    wallet = wallet_of(
        grant("g", "1", expires=T0 + timedelta(days=1)), grant("later", "2", effective=T0 + timedelta(days=2))
    )
    summary = wallets.summarize("acme", "USD", wallet, T0)
    assert summary.available == D(1)
    assert [(g.grant.grant_id, g.active) for g in summary.grants] == [("g", True), ("later", False)]
    assert wallets.requested_cost(GRADUATED, D(0), "USD", D(90), D(20), Aggregation.SUM) == D("0.40")
    assert wallets.requested_cost(VOLUME, D(0), "USD", D(2), D(5), Aggregation.MAX) == D("0.05")


def test_credits_total_is_minus_the_rounded_sum() -> None:
    applied = [
        CreditApplied("a", CreditCategory.PAID, D("0.104")),
        CreditApplied("b", CreditCategory.PROMOTIONAL, D("0.2")),
    ]
    assert wallets.credits_total(applied, "USD") == D("-0.30")
    assert wallets.credits_total([], "USD") == D(0)


def test_wallet_notifications_are_once_per_generation() -> None:
    low = NewNotification("acme", CreditsLow("USD", D("0.4"), D("0.5"), 3, "t1"))
    out = NewNotification("acme", ExhaustedPayload("USD", D(0), 3, "t2", "tokens", D("0.1"), True))
    assert dedupe_key(low.payload) == low.dedupe_key == "credits.low/USD/3"
    assert out.dedupe_key == credits_key(out.type, "USD", 3) == "credits.exhausted/USD/3"


# -- WalletCharging: the batch's charging, in order ------------------------------------------

PERIOD = BillingPeriod(T0, T0 + timedelta(days=31))


def terms(price: Price = GRADUATED, *, prepaid: bool, low: str | None = "0.5") -> WalletTerms:
    meter = TOKENS if price is GRADUATED else IMAGES
    return WalletTerms(price, D(0), "USD", prepaid, None if low is None else D(low), meter, PERIOD)


def event(txn: str, quantity: str, price: Price = GRADUATED, at: datetime = T0 + timedelta(hours=1)) -> NewEvent:
    return NewEvent("acme", txn, price.meter, price.slug, None, D(quantity), at, True, {})


def test_charging_refuses_announces_and_writes_in_order() -> None:
    charging = WalletCharging({"acme": wallet_of(grant("g", "1"))}, {})
    announce: dict[tuple[str, str], NewNotification] = {}
    prepaid = terms(prepaid=True)
    assert (
        charging.charge(event("t1", "60"), "prepaid", prepaid, uuid.uuid4(), new_value=False, announce=announce) is None
    )
    refused = charging.charge(event("t2", "50"), "prepaid", prepaid, uuid.uuid4(), new_value=False, announce=announce)
    assert isinstance(refused, CreditsExhausted) and (refused.cost, refused.available) == (D("0.70"), D("0.40"))
    assert (
        charging.charge(event("t3", "40"), "prepaid", prepaid, uuid.uuid4(), new_value=False, announce=announce) is None
    )
    assert [n.dedupe_key for n in announce.values()] == [
        "credits.low/USD/1",
        "credits.exhausted/USD/1",
    ]
    writes = charging.writes()
    assert [(k.price_slug, s.charged, s.covered) for k, s in writes.spends] == [("tokens_graduated", D(1), D(1))]
    assert [r.burn.amount for r in writes.burns] == [D("0.60"), D("0.40")]
    assert writes.remaining == [("acme", "g", D(0))]
    assert writes  # something to write


def test_charging_a_customer_without_a_wallet_creates_an_empty_one() -> None:
    charging = WalletCharging({}, {})
    announce: dict[tuple[str, str], NewNotification] = {}
    assert (
        charging.charge(event("t1", "0"), "p", terms(prepaid=True), uuid.uuid4(), new_value=False, announce=announce)
        is None
    )
    refused = charging.charge(
        event("t2", "1"), "p", terms(prepaid=True), uuid.uuid4(), new_value=False, announce=announce
    )
    assert isinstance(refused, CreditsExhausted)
    assert [n.dedupe_key for n in announce.values()] == ["credits.exhausted/USD/0"]


def test_settling_a_void_gives_credit_back() -> None:
    charging = WalletCharging({"acme": wallet_of(grant("g", "1"))}, {})
    eid = uuid.uuid4()
    announce: dict[tuple[str, str], NewNotification] = {}
    charging.charge(event("t1", "30"), "p", terms(prepaid=False, low=None), eid, new_value=False, announce=announce)
    stored = StoredEvent(
        eid, "acme", "t1", "tokens", "tokens_graduated", None, D(30), T0 + timedelta(hours=1), T0, T0, {}
    )
    charging.settle(stored, terms(prepaid=False, low=None), limits.CounterState())
    assert charging.wallets["acme"].remaining == {"g": D(1)}
    assert [r.burn.amount for r in charging.writes().burns] == [D("0.30"), D("-0.30")]


# -- the property: the burn-down against a model ------------------------------------------


@dataclass
class ModelGrant:
    grant_id: str
    amount: Decimal
    priority: int
    expires: datetime | None
    meters: tuple[str, ...]
    remaining: Decimal

    def pays(self, meter: str, at: datetime) -> bool:
        return (self.expires is None or at < self.expires) and (not self.meters or meter in self.meters)


@dataclass
class ModelKey:
    """One meter's usage in the period: its events, and what each grant paid of it, in burn order."""

    quantities: dict[str, Decimal] = field(default_factory=dict)  # by transaction id
    paid: list[tuple[str, Decimal]] = field(default_factory=list)  # (grant, amount), oldest first

    def cost(self, price: Price) -> Decimal:
        return price_line(price, sum(self.quantities.values(), D(0)), D(0), "USD").exact_amount

    def held(self, grant_id: str) -> Decimal:
        return sum((a for g, a in self.paid if g == grant_id), D(0))


def model_order(grants: list[ModelGrant]) -> list[ModelGrant]:
    # Written from the rule, not from the implementation: a stable sort on
    # (priority, never-expiring last, expiry, id); every grant is effective at T0.
    return sorted(grants, key=lambda g: (g.priority, g.expires is None, g.expires or T0, g.grant_id))


grant_specs = st.lists(
    st.tuples(
        st.integers(-2, 2),  # priority
        st.one_of(st.none(), st.integers(1, 48)),  # expiry, hours after T0
        st.sampled_from([(), ("tokens",), ("images",)]),
        st.decimals(D("0.01"), D("3"), places=2),
    ),
    max_size=5,
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.sampled_from(["tokens", "images"]), st.integers(0, 400), st.integers(0, 60)),
        st.tuples(st.just("void"), st.integers(0, 30), st.just(0), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(grant_specs, steps, st.booleans())
def test_the_burn_down_matches_a_model(
    specs: list[tuple[int, int | None, tuple[str, ...], Decimal]],
    plan: list[tuple[str, str | int, int, int]],
    prepaid: bool,
) -> None:
    grants = [
        grant(f"g{i}", str(amount), priority=p, expires=None if e is None else T0 + timedelta(hours=e), meters=m)
        for i, (p, e, m, amount) in enumerate(specs)
    ]
    model = [ModelGrant(g.grant_id, g.amount, g.priority, g.expires_at, g.meters, g.amount) for g in grants]
    prices = {"tokens": GRADUATED, "images": VOLUME}
    keys = {"tokens": ModelKey(), "images": ModelKey()}
    charging = WalletCharging(
        {"acme": Wallet("acme", 1, wallets.sort_grants(grants), {g.grant_id: g.amount for g in grants})}, {}
    )
    recorded: list[tuple[str, uuid.UUID, NewEvent]] = []
    overran: set[str] = set()
    for n, (kind, a, b, c) in enumerate(plan):
        if kind == "event":
            meter, quantity, hours = str(a), D(b), c
            at = T0 + timedelta(hours=hours)
            price = prices[meter]
            key = keys[meter]
            txn = f"t{n}"
            before = key.cost(price)
            key.quantities[txn] = quantity
            cost = key.cost(price) - before
            payers = [g for g in model_order(model) if g.remaining > 0 and g.pays(meter, at)]
            available = sum((g.remaining for g in payers), D(0))
            new = event(txn, str(quantity), price, at)
            eid = uuid.uuid4()
            refused = charging.charge(new, "p", terms(price, prepaid=prepaid), eid, new_value=False, announce={})
            if prepaid and cost > available:
                assert isinstance(refused, CreditsExhausted) and refused.cost == cost
                del key.quantities[txn]
                continue
            assert refused is None
            recorded.append((meter, eid, new))
            _model_pay(key, payers, model, cost, key.cost(price))
        elif recorded:
            meter, eid, new = recorded.pop(int(a) % len(recorded))
            key, price = keys[meter], prices[meter]
            before = key.cost(price)
            del key.quantities[new.transaction_id]
            cost = key.cost(price) - before  # positive when a volume tier gets dearer without the event
            payers = [g for g in model_order(model) if g.remaining > 0 and g.pays(meter, new.event_time)]
            if cost > sum((g.remaining for g in payers), D(0)):
                overran.add(meter)  # a void is never refused: the rest is billed, even on a prepaid plan
            _model_pay(key, payers, model, cost, key.cost(price))
            total = sum(key.quantities.values(), D(0))
            stored = StoredEvent(
                eid, "acme", new.transaction_id, meter, price.slug, None, new.quantity, new.event_time, T0, T0, {}
            )
            charging.settle(stored, terms(price, prepaid=prepaid), limits.CounterState(used=total, event_count=1))
        # The invariants, after every step.
        wallet = charging.wallets["acme"]
        assert {g.grant_id: g.remaining for g in model} == wallet.remaining  # the order and amounts
        assert all(r >= 0 for r in wallet.remaining.values())  # never below zero
        for meter, key in keys.items():
            spend = charging.spends.get(terms(prices[meter], prepaid=prepaid).spend_key(event("x", "0", prices[meter])))
            covered = D(0) if spend is None else spend.covered
            assert covered == sum((amount for _, amount in key.paid), D(0))  # burned == what usage covered
            assert covered <= key.cost(prices[meter])
            if prepaid and meter not in overran:
                assert covered == key.cost(prices[meter])  # a prepaid plan's usage is all paid for
    burned = {g.grant_id: D(0) for g in model}
    for row in charging.writes().burns:
        burned[row.burn.grant_id] += row.burn.amount
    assert all(burned[g.grant_id] == g.amount - g.remaining for g in model)


def _model_pay(
    key: ModelKey, payers: list[ModelGrant], model: list[ModelGrant], cost: Decimal, charged_after: Decimal
) -> None:
    """Pay a positive cost from `payers` in order; take a negative one off the
    uncovered part first, then give the rest back, newest burn first."""
    if cost > 0:
        left = cost
        for g in payers:
            take = min(g.remaining, left)
            if take > 0:
                g.remaining -= take
                key.paid.append((g.grant_id, take))
                left -= take
        return
    excess = sum((a for _, a in key.paid), D(0)) - charged_after  # covered beyond what the usage now costs
    by_id = {g.grant_id: g for g in model}
    for g in reversed(model_order(model)):
        held = key.held(g.grant_id)
        back = min(held, excess)
        if back > 0:
            by_id[g.grant_id].remaining += back
            key.paid.append((g.grant_id, -back))
            excess -= back


def test_wallet_notifications_on_the_wire_and_in_storage() -> None:
    import json

    from metering.domain.notifications import Position, StoredNotification, payload_from_json, payload_json
    from metering.wire.notifications import notification_json

    low = CreditsLow("USD", D("0.4"), D("0.5"), 3, "t1")
    out = ExhaustedPayload("USD", D(0), 3, "t2", "tokens", D("0.125"), True)
    for payload in (low, out):
        assert payload_from_json(NewNotification("acme", payload).type, payload_json(payload)) == payload
    body = json.loads(notification_json(StoredNotification(uuid.uuid4(), "acme", T0, Position(1, 1), low), "cursor-1"))
    assert body["type"] == "credits.low"  # a webhook body names its type as the webhooks file does
    assert body["creditsLow"] == {
        "available": {"currencyCode": "USD", "amount": "0.40"},
        "threshold": {"currencyCode": "USD", "amount": "0.50"},
        "transactionId": "t1",
    }
    body = json.loads(notification_json(StoredNotification(uuid.uuid4(), "acme", T0, Position(1, 2), out), "cursor-2"))
    assert body["creditsExhausted"] == {
        "available": {"currencyCode": "USD", "amount": "0.00"},
        "requested": {"currencyCode": "USD", "amount": "0.125"},
        "transactionId": "t2",
        "meterSlug": "tokens",
        "refused": True,
    }
