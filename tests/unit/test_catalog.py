from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from metering.config.catalog import CatalogError, load_catalog, parse_catalog
from metering.domain.catalog import Aggregation, Enforcement, PricingModel
from metering.domain.periods import ResetPeriod

BASE = """
[meters.tokens]
aggregation = "sum"
unit = "token"

[plans.p]
currency = "USD"

[plans.p.meters.tokens]
limit = "100"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    return caught.value.problems


def test_sample_catalog_is_valid_and_complete() -> None:
    catalog = load_catalog(None)
    assert set(catalog.plans) == {"free", "pro", "enterprise"}
    assert {m.aggregation for m in catalog.meters.values()} == {Aggregation.COUNT, Aggregation.SUM, Aggregation.LATEST}
    for meter in catalog.meters.values():
        assert catalog.prices[f"{meter.slug}_no_charge"].is_no_charge
    assert catalog.plans["pro"].currency == "USD"


def test_test_catalog_is_valid() -> None:
    load_catalog(Path(__file__).resolve().parent.parent / "catalog.toml")


def test_defaults_of_a_plan_meter() -> None:
    terms = parse_catalog(BASE).plans["p"].meters["tokens"]
    assert terms.limit == Decimal(100)
    assert terms.enforcement is Enforcement.HARD
    assert terms.reset is ResetPeriod.MONTH
    assert terms.included == 0
    assert terms.approaching_threshold == 80
    assert terms.price == "tokens_no_charge"


def test_a_meter_outside_the_plan_is_unlimited() -> None:
    catalog = parse_catalog(BASE + '[meters.other]\naggregation = "count"\nunit = "x"\n')
    terms = catalog.plan_meter(catalog.plans["p"], catalog.meters["other"])
    assert terms.limit is None and terms.enforcement is Enforcement.UNLIMITED
    assert terms.price == "other_no_charge"


def test_tiers_and_packages_parse() -> None:
    catalog = parse_catalog(
        BASE
        + """
[prices.grad]
meter = "tokens"
model = "graduated"
currency = "USD"
tiers = [{ up_to = "10", unit_amount = "1", flat_amount = "5" }, { unit_amount = "0.5" }]

[prices.pack]
meter = "tokens"
model = "package"
currency = "JPY"
package_size = 1000
package_amount = "3"
package_rounding = "down"
"""
    )
    grad = catalog.prices["grad"]
    assert grad.model is PricingModel.GRADUATED
    assert [t.up_to for t in grad.tiers] == [Decimal(10), None]
    assert grad.tiers[0].flat_amount == 5
    assert catalog.prices["pack"].package_size == 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[meters.x]\naggregation = "avg"\nunit = "u"\n[plans.p.meters.x]\n',
            "meters.x.aggregation: 'avg' is not one of",
        ),
        (BASE.replace('limit = "100"', "limit = 1.5"), "plans.p.meters.tokens.limit: write decimals as strings"),
        (BASE.replace('limit = "100"', 'limit = "-1"'), "plans.p.meters.tokens.limit: must be a non-negative decimal"),
        (BASE + 'typo = "x"\n', "plans.p.meters.tokens.typo: unknown key"),
        (BASE.replace('unit = "token"', ""), "meters.tokens.unit: required"),
        (BASE + 'price = "missing"\n', "plans.p.meters.tokens.price: no price named 'missing'"),
        (BASE + 'enforcement = "unlimited"\n', "plans.p.meters.tokens.enforcement: 'unlimited' contradicts"),
        (BASE + 'approaching_threshold = "150"\n', "plans.p.meters.tokens.approaching_threshold"),
        (BASE + '[plans.q.meters.ghost]\nlimit = "1"\n', "plans.q.meters.ghost: no meter named 'ghost'"),
        (BASE + '[meters.users]\naggregation = "unique_count"\nunit = "u"\n', "meters.users.property"),
        (BASE + '[meters.Bad-Slug]\naggregation = "sum"\nunit = "u"\n', "meters.Bad-Slug: the slug must be"),
        (
            BASE + '[prices.t]\nmeter = "tokens"\nmodel = "graduated"\ncurrency = "USD"\n'
            'tiers = [{ up_to = "10", unit_amount = "1" }, { up_to = "5", unit_amount = "1" }]\n',
            "prices.t.tiers[1].up_to",
        ),
        (
            BASE + '[prices.t]\nmeter = "tokens"\nmodel = "per_unit"\ncurrency = "usd"\nunit_amount = "1"\n',
            "prices.t.currency: must be an ISO 4217 code",
        ),
        (
            BASE + '[prices.tokens_no_charge]\nmeter = "tokens"\nmodel = "per_unit"\ncurrency = "USD"\n'
            'unit_amount = "1"\n',
            "prices.tokens_no_charge: the name is reserved",
        ),
        ("meters = 3\nplans = {}\n", "meters: must be a table"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_problems_name_the_offending_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in problem for problem in found), found


def test_plans_cannot_mix_currencies() -> None:
    text = BASE + (
        '[meters.calls]\naggregation = "count"\nunit = "call"\n'
        '[prices.a]\nmeter = "tokens"\nmodel = "per_unit"\ncurrency = "USD"\nunit_amount = "1"\n'
        '[prices.b]\nmeter = "calls"\nmodel = "per_unit"\ncurrency = "EUR"\nunit_amount = "1"\n'
        '[plans.mixed.meters.tokens]\nprice = "a"\n[plans.mixed.meters.calls]\nprice = "b"\n'
    )
    assert any("plans.mixed: its prices mix currencies" in p for p in problems(text))


def test_plan_currency_is_declared_or_derived() -> None:
    without = BASE.replace('currency = "USD"\n', "")
    assert any("plans.p.currency: required" in p for p in problems(without))
    priced = (
        without + 'price = "t"\n[prices.t]\nmeter = "tokens"\nmodel = "per_unit"\ncurrency = "EUR"\nunit_amount = "1"\n'
    )
    assert parse_catalog(priced).plans["p"].currency == "EUR"
    conflicting = priced.replace("[plans.p]\n", '[plans.p]\ncurrency = "USD"\n')
    assert any("plans.p.currency: USD differs" in p for p in problems(conflicting))


def test_every_problem_is_reported_at_once() -> None:
    text = '[meters.x]\naggregation = "avg"\n[plans.p.meters.y]\n'
    found = problems(text)
    assert len(found) >= 3


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the file"):
        load_catalog(tmp_path / "missing.toml")


def test_dimensions_parse_and_select_properties() -> None:
    text = BASE.replace('unit = "token"', 'unit = "token"\ndimensions = ["region", "model"]')
    meter = parse_catalog(text).meters["tokens"]
    assert meter.dimensions == ("region", "model")
    assert meter.dimension_values({"region": "eu", "user": "ann"}) == {"region": "eu"}
    assert meter.serves_from_rollups(["model", "region"])
    assert not meter.serves_from_rollups(["user"])


@pytest.mark.parametrize(
    ("dimensions", "problem"),
    [
        ('"region"', "meters.tokens.dimensions: must be a list of property keys"),
        ('["bad key"]', "meters.tokens.dimensions[0]: a property key is 1 to 64 characters"),
        ('["a", "a"]', "meters.tokens.dimensions: each property key at most once"),
        (str([f"k{i}" for i in range(9)]).replace("'", '"'), "meters.tokens.dimensions: at most 8 dimensions"),
    ],
)
def test_bad_dimensions_are_reported_with_their_key(dimensions: str, problem: str) -> None:
    text = BASE.replace('unit = "token"', f'unit = "token"\ndimensions = {dimensions}')
    assert any(p.startswith(problem) for p in problems(text)), problems(text)
