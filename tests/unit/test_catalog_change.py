"""What a catalog reload would strand (metering.domain.catalog_change), and what the
operator files in force need of a new catalog (metering.config.files.catalog_references):
pure, no database."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.config.catalog import parse_catalog
from metering.config.files import catalog_references
from metering.config.stripe import parse_mapping
from metering.domain.access import AccessPolicy, Caller, Role, TokenCredential
from metering.domain.catalog import Aggregation, Catalog, Meter, Price, PricingModel
from metering.domain.catalog_change import CatalogUse, UsageQuestion, question, stranded

OLD = """
[meters.tokens]
aggregation = "sum"
unit = "token"
dimensions = ["region"]
default_price = "tokens_per_unit"

[meters.users]
aggregation = "unique_count"
unit = "user"
property = "user_id"

[meters.calls]
aggregation = "count"
unit = "call"

[prices.tokens_per_unit]
meter = "tokens"
model = "per_unit"
currency = "USD"
unit_amount = "0.001"

[prices.tokens_bulk]
meter = "tokens"
model = "package"
currency = "USD"
package_size = "1000"
package_amount = "0.5"

[plans.free]
[plans.free.meters.tokens]
limit = "100"

[plans.pro]
[plans.pro.meters.tokens]
limit = "1000"
included = "10"
price = "tokens_bulk"
"""


def catalog(text: str = OLD) -> Catalog:
    return parse_catalog(text)


def edited(*replacements: tuple[str, str]) -> Catalog:
    text = OLD
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    return catalog(text)


# Every kind in use: what a busy ledger answers.
EVERYTHING = CatalogUse(
    open_meters=frozenset({"tokens", "users", "calls"}),
    recorded_meters=frozenset({"tokens", "users", "calls"}),
    prices=frozenset({"tokens_per_unit", "tokens_bulk", "tokens_no_charge", "users_no_charge", "calls_no_charge"}),
    plans=frozenset({"free", "pro"}),
)


def test_the_same_catalog_asks_nothing_and_strands_nothing() -> None:
    asked = question(catalog(), catalog())
    assert asked.empty
    assert stranded(catalog(), catalog(), EVERYTHING) == []


def test_terms_that_only_price_or_limit_differently_ask_nothing() -> None:
    new = edited(
        ('unit_amount = "0.001"', 'unit_amount = "0.002"'),
        ('limit = "1000"\nincluded = "10"', 'limit = "5000"\nincluded = "0"\nenforcement = "soft"'),
        ("[plans.free]\n", '[plans.free]\nname = "Free tier"\n'),
    )
    assert question(catalog(), new).empty
    assert stranded(catalog(), new, EVERYTHING) == []


def test_additions_ask_nothing() -> None:
    team = '\n[plans.team]\ncurrency = "USD"\n[plans.team.meters.storage]\nlimit = "5"\n'
    storage = '[meters.storage]\naggregation = "latest"\nunit = "GB"\n\n'
    new = catalog(OLD.replace("[prices.", storage + "[prices.", 1) + team)
    assert question(catalog(), new).empty


def test_a_removed_meter_strands_usage_of_an_open_period() -> None:
    new = edited(
        ('[meters.calls]\naggregation = "count"\nunit = "call"\n', ""),
    )
    asked = question(catalog(), new)
    assert asked == UsageQuestion(meters=("calls",), layouts=(), prices={"calls_no_charge": "calls"}, plans=())
    assert stranded(catalog(), new, CatalogUse()) == []  # no usage: removed freely
    assert stranded(catalog(), new, EVERYTHING) == [
        "meters.calls: removed while billing periods not finalized yet have events of it",
        "prices.calls_no_charge: removed while events of billing periods not finalized yet are priced with it",
    ]
    # Events only in finalized periods (and so no open price use): the invoices keep them.
    only_history = CatalogUse(recorded_meters=frozenset({"calls"}))
    assert stranded(catalog(), new, only_history) == []


@pytest.mark.parametrize(
    ("replacement", "change"),
    [
        (('aggregation = "count"', 'aggregation = "sum"'), "aggregation count -> sum"),
        (('unit = "call"', 'unit = "request"'), "unit 'call' -> 'request'"),
    ],
)
def test_a_redefined_meter_strands_its_open_counters(replacement: tuple[str, str], change: str) -> None:
    new = edited(replacement)
    assert question(catalog(), new).meters == ("calls",)
    assert stranded(catalog(), new, EVERYTHING) == [
        f"meters.calls: {change} while billing periods not finalized yet have events counted under the old definition"
    ]
    assert stranded(catalog(), new, CatalogUse(recorded_meters=frozenset({"calls"}))) == []


def test_another_counted_property_strands_the_counters_and_the_rollups() -> None:
    new = edited(('property = "user_id"', 'property = "account_id"'))
    asked = question(catalog(), new)
    assert (asked.meters, asked.layouts) == (("users",), ("users",))
    assert stranded(catalog(), new, EVERYTHING) == [
        "meters.users: counted property 'user_id' -> 'account_id' while billing periods not finalized yet have "
        "events counted under the old definition",
        "meters.users.dimensions: its rollups are built for dimensions [] counting 'user_id'; changing them to [] "
        "counting 'account_id' takes a restart (the rollups of a meter with events are rebuilt at start-up)",
    ]


def test_new_dimensions_need_a_restart_once_the_meter_has_events() -> None:
    new = edited(('dimensions = ["region"]', 'dimensions = ["region", "model"]'))
    asked = question(catalog(), new)
    assert (asked.meters, asked.layouts) == ((), ("tokens",))
    assert stranded(catalog(), new, CatalogUse()) == []
    assert stranded(catalog(), new, CatalogUse(recorded_meters=frozenset({"tokens"}))) == [
        "meters.tokens.dimensions: its rollups are built for dimensions ['region']; changing them to "
        "['region', 'model'] takes a restart (the rollups of a meter with events are rebuilt at start-up)"
    ]


def test_a_price_removed_or_moved_strands_the_events_priced_with_it() -> None:
    removed = edited(
        (
            '[prices.tokens_bulk]\nmeter = "tokens"\nmodel = "package"\ncurrency = "USD"\n'
            'package_size = "1000"\npackage_amount = "0.5"\n',
            "",
        ),
        ('price = "tokens_bulk"\n', ""),
    )
    assert question(catalog(), removed).prices == {"tokens_bulk": "tokens"}
    assert stranded(catalog(), removed, CatalogUse(prices=frozenset({"tokens_bulk"}))) == [
        "prices.tokens_bulk: removed while events of billing periods not finalized yet are priced with it"
    ]
    assert stranded(catalog(), removed, CatalogUse(prices=frozenset({"tokens_per_unit"}))) == []


def test_a_price_moved_to_another_meter_strands_the_events_priced_with_it() -> None:
    moved = edited(
        ('[prices.tokens_bulk]\nmeter = "tokens"', '[prices.tokens_bulk]\nmeter = "calls"'),
        ('price = "tokens_bulk"\n', ""),
    )
    assert question(catalog(), moved).prices == {"tokens_bulk": "tokens"}
    assert stranded(catalog(), moved, CatalogUse(prices=frozenset({"tokens_bulk"}))) == [
        "prices.tokens_bulk: moved from meter 'tokens' to 'calls' while events of billing periods not finalized "
        "yet are priced with it"
    ]


def test_a_price_in_another_currency_strands_the_events_priced_with_it() -> None:
    new = edited(('currency = "USD"\nunit_amount', 'currency = "EUR"\nunit_amount'))
    # The plans' currencies follow their prices: free (priced tokens_per_unit) is now in EUR.
    asked = question(catalog(), new)
    assert asked.prices == {"tokens_per_unit": "tokens"}
    assert asked.plans == ("free",)
    assert stranded(catalog(), new, CatalogUse(prices=frozenset({"tokens_per_unit"}))) == [
        "prices.tokens_per_unit: currency USD -> EUR while events of billing periods not finalized yet are "
        "priced with it"
    ]
    assert stranded(catalog(), new, CatalogUse(plans=frozenset({"free"}))) == [
        "plans.free: currency USD -> EUR while customers are on it or billing periods not finalized yet are "
        "billed with it"
    ]


def test_a_removed_plan_strands_its_customers() -> None:
    new = edited(('[plans.free]\n[plans.free.meters.tokens]\nlimit = "100"\n', ""))
    assert question(catalog(), new) == UsageQuestion((), (), {}, ("free",))
    assert stranded(catalog(), new, CatalogUse(plans=frozenset({"pro"}))) == []
    assert stranded(catalog(), new, EVERYTHING) == [
        "plans.free: removed while customers are on it or billing periods not finalized yet are billed with it"
    ]


def test_every_reason_is_reported_at_once_in_the_catalogs_order() -> None:
    new = edited(
        ('[meters.calls]\naggregation = "count"\nunit = "call"\n', ""),
        ('unit = "token"', 'unit = "ktoken"'),
        ('[plans.free]\n[plans.free.meters.tokens]\nlimit = "100"\n', ""),
    )
    assert [problem.split(":")[0] for problem in stranded(catalog(), new, EVERYTHING)] == [
        "meters.tokens",
        "meters.calls",
        "prices.calls_no_charge",
        "plans.free",
    ]


def test_the_defines_check_tells_a_replaced_meter_or_price() -> None:
    old, same, changed = catalog(), catalog(), edited(('unit = "token"', 'unit = "ktoken"'))
    tokens, price = old.meters["tokens"], old.prices["tokens_bulk"]
    assert old.defines(tokens, price)
    assert same.defines(tokens, price)  # equal, not identical: a reload of an unchanged file
    assert not changed.defines(tokens)
    assert not changed.defines(old.meters["calls"], Price("gone", "calls", PricingModel.PER_UNIT, "USD"))
    assert not old.defines(Meter("gone", Aggregation.SUM, "x"))


def policy_restricting(caller: str, meters: frozenset[str]) -> AccessPolicy:
    credential = TokenCredential(Caller(caller, frozenset({Role.RECORDER}), meters))
    return AccessPolicy(by_token_digest={"0" * 64: credential}, by_certificate_cn={})


STRIPE = """
[meters.calls]
event_name = "api_calls"

[customers]
unlisted = "skip"

[customers.ids]
acme = "cus_NciAYcXfLnqBoz"
"""


def test_the_files_in_force_keep_the_meters_they_name() -> None:
    old = catalog()
    without_calls = edited(('[meters.calls]\naggregation = "count"\nunit = "call"\n', ""))
    assert catalog_references(without_calls, None, None) == []
    restricted = policy_restricting("billing", frozenset({"calls", "tokens"}))
    mapping = parse_mapping(STRIPE, old.meters, source="stripe.toml")
    assert catalog_references(old, restricted, mapping) == []
    assert catalog_references(without_calls, restricted, mapping) == [
        "meters.calls: removed, but caller 'billing' of the auth file is restricted to it",
        "meters.calls: removed, but the Stripe mapping (stripe.toml) reports it",
    ]
    summed = edited(('aggregation = "count"', 'aggregation = "sum"'))
    assert catalog_references(summed, None, mapping) == [
        "meters.calls.aggregation: the Stripe export reports it as count until the next start"
    ]


def test_the_revision_is_the_text_digest() -> None:
    import hashlib

    assert catalog().revision == hashlib.sha256(OLD.encode()).hexdigest()
    assert edited(('limit = "100"', 'limit = "101"')).revision != catalog().revision
    assert catalog().meters["tokens"].dimensions == ("region",)
    assert catalog().plans["pro"].meters["tokens"].included == Decimal(10)
