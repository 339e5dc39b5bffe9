"""The catalog check: each mistake an operator can make in the catalog file is
reported with the key it is at, and a valid catalog answers its lookups."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.config.catalog import CatalogError, parse_catalog

METER = '[meters.tokens]\naggregation = "sum"\nunit = "token"\n'
PLAN = '[plans.p]\ncurrency = "USD"\n[plans.p.meters.tokens]\nlimit = "100"\n'
BASE = METER + PLAN


def problems(text: str) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    return caught.value.problems


def price(body: str, slug: str = "t") -> str:
    """A price table for the tokens meter, in USD, with `body` as its model's keys."""
    return f'[prices.{slug}]\nmeter = "tokens"\ncurrency = "USD"\n{body}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A section entry that is a value rather than a table.
        ('[meters]\nloose = 3\n[meters.tokens]\naggregation = "sum"\nunit = "token"\n' + PLAN, "meters.loose: must be"),
        (BASE.replace('unit = "token"', 'unit = ""'), "meters.tokens.unit: must be a non-empty string"),
        (
            BASE + '[meters.users]\naggregation = "unique_count"\nunit = "user"\nproperty = "not a key"\n',
            "meters.users.property: unique_count meters name the property to count",
        ),
        (
            BASE.replace('unit = "token"', 'unit = "token"\nproperty = "user"'),
            "meters.tokens.property: only unique_count meters take a property",
        ),
        (
            BASE + '[meters.calls_no_charge]\naggregation = "count"\nunit = "call"\n',
            "meters.calls_no_charge: a meter slug must not end in _no_charge",
        ),
        (
            BASE + '[prices.t]\nmeter = "nothing"\nmodel = "per_unit"\ncurrency = "USD"\nunit_amount = "1"\n',
            "prices.t.meter: no meter named 'nothing'",
        ),
        (
            BASE + price('model = "package"\npackage_size = "0"\npackage_amount = "1"\n'),
            "prices.t.package_size: must be greater than 0",
        ),
        (
            BASE + price('model = "package"\npackage_size = "10"\npackage_amount = "1"\npackage_rounding = "half"\n'),
            "prices.t.package_rounding: 'half' is not one of",
        ),
        (BASE + price('model = "graduated"\ntiers = "flat"\n'), "prices.t.tiers: a non-empty array"),
        (BASE + price('model = "graduated"\ntiers = []\n'), "prices.t.tiers: a non-empty array"),
        (BASE + price('model = "volume"\ntiers = [1]\n'), "prices.t.tiers[0]: must be a table"),
        (
            BASE + price('model = "graduated"\ntiers = [{unit_amount = "1"}, {unit_amount = "2"}]\n'),
            "prices.t.tiers[0].up_to: every tier but the last needs an up_to",
        ),
        (
            BASE + price('model = "graduated"\ntiers = [{up_to = "10", unit_amount = "1"}, {flat_amount = "2"}]\n'),
            "prices.t.tiers[1].unit_amount: required",
        ),
        (BASE + "[plans.q]\nmeters = 3\n", "plans.q.meters: must be a table of [plans.q.meters.<meter>] tables"),
        (BASE.replace('currency = "USD"', 'currency = "dollars"'), "plans.p.currency: must be an ISO 4217 code"),
        (
            BASE + '[plans.q]\ncurrency = "USD"\n[plans.q.meters]\ntokens = 3\n',
            "plans.q.meters.tokens: must be a table",
        ),
        (
            BASE + '[plans.q]\ncurrency = "USD"\n[plans.q.meters.tokens]\nenforcement = "soft"\n',
            "plans.q.meters.tokens.limit: a soft enforcement needs a limit",
        ),
        (
            BASE.replace('limit = "100"', 'limit = "100"\nreset = "fortnight"'),
            "plans.p.meters.tokens.reset: 'fortnight' is not one of",
        ),
        (
            BASE + '[meters.calls]\naggregation = "count"\nunit = "call"\n'
            '[prices.c]\nmeter = "calls"\nmodel = "per_unit"\ncurrency = "USD"\nunit_amount = "1"\n'
            '[plans.q]\ncurrency = "USD"\n[plans.q.meters.tokens]\nprice = "c"\n',
            "plans.q.meters.tokens.price: price 'c' belongs to meter 'calls', not 'tokens'",
        ),
    ],
)
def test_each_mistake_is_reported_at_its_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in problem for problem in found), found


def test_a_price_with_an_unknown_model_is_reported_once_and_not_built() -> None:
    found = problems(BASE + price('model = "auction"\n'))
    assert [p for p in found if p.startswith("prices.t.model")] == [
        "prices.t.model: 'auction' is not one of 'per_unit', 'package', 'graduated', 'volume'"
    ]


def test_a_plan_meter_is_its_listed_terms() -> None:
    catalog = parse_catalog(BASE)
    plan = catalog.plans["p"]
    terms = catalog.plan_meter(plan, catalog.meters["tokens"])
    assert terms is plan.meters["tokens"]
    assert terms.limit == Decimal(100)


@pytest.mark.parametrize("properties", [{}, {"region": "eu"}])
def test_a_meter_without_dimensions_keeps_no_properties(properties: dict[str, str]) -> None:
    assert parse_catalog(BASE).meters["tokens"].dimension_values(properties) == {}


def test_a_dimensioned_meter_keeps_nothing_of_an_event_without_properties() -> None:
    text = BASE.replace('unit = "token"', 'unit = "token"\ndimensions = ["region"]')
    assert parse_catalog(text).meters["tokens"].dimension_values({}) == {}
