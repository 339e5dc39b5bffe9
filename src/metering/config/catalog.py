"""The catalog: meters, prices and plans, declared in a TOML file.

The file is checked completely at start-up; every problem is reported with
the dotted key that holds it (e.g. `plans.pro.meters.ai_tokens.limit`), and
the service refuses to start on any. Once loaded the catalog is immutable, so
requests never parse or re-check it.

File shape (see config/sample_catalog.toml):

    [meters.<slug>]    aggregation, unit, property (unique_count), default_price, description,
                       dimensions (property keys kept by the hourly rollups)
    [prices.<slug>]    meter, model, currency, unit_amount | package_* | tiers
    [plans.<slug>]     name, currency, prepaid (usage paid from wallet credit),
                       credits_low_threshold (money: credits.low below it), and per meter [plans.<slug>.meters.<meter>]:
                       limit (absent = unlimited), included, price, reset, enforcement,
                       approaching_threshold
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from metering.config.toml import FileProblems, UnreadableFile, key_problems, parse_document, read_text
from metering.domain.catalog import (
    CURRENCY_RE,
    DEFAULT_APPROACHING_THRESHOLD,
    MAX_DIMENSIONS,
    NO_CHARGE_SUFFIX,
    PROPERTY_KEY_RE,
    SLUG_RE,
    Aggregation,
    Catalog,
    Enforcement,
    Meter,
    PackageRounding,
    Plan,
    PlanMeter,
    Price,
    PricingModel,
    Tier,
)
from metering.domain.decimals import HUNDRED, ZERO, DecimalFormatError, parse_decimal
from metering.domain.periods import ResetPeriod

_E = TypeVar("_E", bound=enum.Enum)


class CatalogError(FileProblems):
    """The catalog file is invalid; `problems` lists each one with its key."""

    what = "catalog"


def sample_catalog_text() -> str:
    return resources.files("metering.config").joinpath("sample_catalog.toml").read_text(encoding="utf-8")


def load_catalog(path: str | Path | None) -> Catalog:
    """Load and check the catalog file; None loads the packaged sample catalog."""
    if path is None:
        return parse_catalog(sample_catalog_text(), source="sample_catalog.toml")
    source = str(path)
    try:
        text = read_text(path)
    except UnreadableFile as exc:
        raise CatalogError(source, [exc.reason]) from exc
    return parse_catalog(text, source=source)


def parse_catalog(text: str, *, source: str = "<memory>") -> Catalog:
    try:
        document = parse_document(text)
    except UnreadableFile as exc:
        raise CatalogError(source, [exc.reason]) from exc
    catalog = _CatalogParser(source).parse(document)
    return replace(catalog, revision=hashlib.sha256(text.encode()).hexdigest())


@dataclass
class _CatalogParser:
    source: str
    problems: list[str] = field(default_factory=list)

    def parse(self, document: dict[str, Any]) -> Catalog:
        self._keys("", document, required=("meters", "plans"), optional=("prices",))
        meters = self._section(document, "meters", self._meter)
        prices = self._section(document, "prices", lambda key, slug, table: self._price(key, slug, table, meters))
        for meter in meters.values():
            no_charge = Price(meter.no_charge_price, meter.slug, PricingModel.PER_UNIT, currency=None)
            if no_charge.slug in prices:
                self.problems.append(f"prices.{no_charge.slug}: the name is reserved for the built-in no-charge price")
            prices[no_charge.slug] = no_charge
        for meter in meters.values():
            self._check_price_ref(f"meters.{meter.slug}.default_price", meter.default_price, meter.slug, prices)
        plans = self._section(document, "plans", lambda key, slug, table: self._plan(key, slug, table, meters, prices))
        if self.problems:
            raise CatalogError(self.source, self.problems)
        return Catalog(meters=meters, prices=prices, plans=plans, source=self.source)

    # -- sections -------------------------------------------------------------

    def _section(self, document: dict[str, Any], name: str, build: Any) -> dict[str, Any]:
        tables = document.get(name, {})
        if not isinstance(tables, dict):
            self.problems.append(f"{name}: must be a table of [{name}.<slug>] tables")
            return {}
        if name in ("meters", "plans") and not tables:
            self.problems.append(f"{name}: at least one is required")
        built: dict[str, Any] = {}
        for slug, table in tables.items():
            key = f"{name}.{slug}"
            if not SLUG_RE.match(slug):
                self.problems.append(f"{key}: the slug must be 1 to 64 characters of [a-z0-9_]")
                continue
            if not isinstance(table, dict):
                self.problems.append(f"{key}: must be a table")
                continue
            item = build(key, slug, table)
            if item is not None:
                built[slug] = item
        return built

    def _meter(self, key: str, slug: str, table: dict[str, Any]) -> Meter | None:
        self._keys(
            key,
            table,
            required=("aggregation", "unit"),
            optional=("property", "default_price", "description", "dimensions"),
        )
        aggregation = self._enum(key, table, "aggregation", Aggregation)
        unit = self._string(key, table, "unit")
        prop = table.get("property")
        if aggregation is Aggregation.UNIQUE_COUNT:
            if not isinstance(prop, str) or not PROPERTY_KEY_RE.match(prop):
                self.problems.append(f"{key}.property: unique_count meters name the property to count")
        elif prop is not None:
            self.problems.append(f"{key}.property: only unique_count meters take a property")
        if slug.endswith(NO_CHARGE_SUFFIX):
            self.problems.append(f"{key}: a meter slug must not end in {NO_CHARGE_SUFFIX}")
        dimensions = self._dimensions(f"{key}.dimensions", table.get("dimensions", []))
        if aggregation is None or unit is None:
            return None
        return Meter(
            slug=slug,
            aggregation=aggregation,
            unit=unit,
            description=str(table.get("description", "")),
            unique_property=prop if aggregation is Aggregation.UNIQUE_COUNT else None,
            default_price=table.get("default_price"),
            dimensions=dimensions,
        )

    def _dimensions(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problems.append(f"{key}: must be a list of property keys")
            return ()
        for index, item in enumerate(value):
            if not PROPERTY_KEY_RE.match(item):
                self.problems.append(f"{key}[{index}]: a property key is 1 to 64 characters of [A-Za-z0-9_.-]")
        if len(set(value)) != len(value):
            self.problems.append(f"{key}: each property key at most once")
        if len(value) > MAX_DIMENSIONS:
            self.problems.append(f"{key}: at most {MAX_DIMENSIONS} dimensions")
        return tuple(value)

    def _price(self, key: str, slug: str, table: dict[str, Any], meters: Mapping[str, Meter]) -> Price | None:
        model = self._enum(key, table, "model", PricingModel)
        optional_by_model = {
            PricingModel.PER_UNIT: ("unit_amount",),
            PricingModel.PACKAGE: ("package_size", "package_amount", "package_rounding"),
            PricingModel.GRADUATED: ("tiers",),
            PricingModel.VOLUME: ("tiers",),
        }
        self._keys(
            key, table, required=("meter", "model", "currency"), optional=optional_by_model[model] if model else ()
        )
        meter = table.get("meter")
        if not isinstance(meter, str) or meter not in meters:
            self.problems.append(f"{key}.meter: no meter named {meter!r}")
        currency = table.get("currency")
        if not isinstance(currency, str) or not CURRENCY_RE.match(currency):
            self.problems.append(f"{key}.currency: must be an ISO 4217 code such as 'USD'")
        if model is None or not isinstance(meter, str) or meter not in meters or not isinstance(currency, str):
            return None
        if model is PricingModel.PER_UNIT:
            amount = self._decimal(key, table, "unit_amount", required=True)
            return None if amount is None else Price(slug, meter, model, currency, unit_amount=amount)
        if model is PricingModel.PACKAGE:
            size = self._decimal(key, table, "package_size", required=True)
            amount = self._decimal(key, table, "package_amount", required=True)
            rounding = self._enum(key, table, "package_rounding", PackageRounding, default=PackageRounding.UP)
            if size is not None and size <= 0:
                self.problems.append(f"{key}.package_size: must be greater than 0")
            if size is None or amount is None or rounding is None:
                return None
            return Price(slug, meter, model, currency, unit_amount=amount, package_size=size, package_rounding=rounding)
        tiers = self._tiers(f"{key}.tiers", table.get("tiers"))
        return None if tiers is None else Price(slug, meter, model, currency, tiers=tiers)

    def _tiers(self, key: str, raw: Any) -> tuple[Tier, ...] | None:
        if not isinstance(raw, list) or not raw:
            self.problems.append(f"{key}: a non-empty array of {{ up_to, unit_amount, flat_amount }} tables")
            return None
        tiers: list[Tier] = []
        previous = ZERO
        for index, entry in enumerate(raw):
            tier_key = f"{key}[{index}]"
            if not isinstance(entry, dict):
                self.problems.append(f"{tier_key}: must be a table")
                return None
            last = index == len(raw) - 1
            self._keys(tier_key, entry, required=("unit_amount",), optional=("up_to", "flat_amount"))
            up_to = self._decimal(tier_key, entry, "up_to", required=False)
            if last and up_to is not None:
                self.problems.append(f"{tier_key}.up_to: the last tier is open-ended and takes no up_to")
            if not last and up_to is None:
                self.problems.append(f"{tier_key}.up_to: every tier but the last needs an up_to")
            if up_to is not None and up_to <= previous:
                self.problems.append(f"{tier_key}.up_to: must be greater than the previous tier's ({previous})")
            unit_amount = self._decimal(tier_key, entry, "unit_amount", required=True)
            flat_amount = self._decimal(tier_key, entry, "flat_amount", required=False) or ZERO
            if unit_amount is None:
                return None
            tiers.append(Tier(up_to=None if last else up_to, unit_amount=unit_amount, flat_amount=flat_amount))
            previous = up_to if up_to is not None else previous
        return tuple(tiers)

    def _plan(
        self, key: str, slug: str, table: dict[str, Any], meters: Mapping[str, Meter], prices: Mapping[str, Price]
    ) -> Plan | None:
        self._keys(key, table, required=("meters",), optional=("name", "currency", "prepaid", "credits_low_threshold"))
        prepaid = table.get("prepaid", False)
        if not isinstance(prepaid, bool):
            self.problems.append(f"{key}.prepaid: must be true or false")
            prepaid = False
        low = self._decimal(key, table, "credits_low_threshold", required=False)
        if low is not None and low <= 0:
            self.problems.append(f"{key}.credits_low_threshold: an amount of money above 0")
            low = None
        raw_meters = table.get("meters", {})
        if not isinstance(raw_meters, dict):
            self.problems.append(f"{key}.meters: must be a table of [{key}.meters.<meter>] tables")
            return None
        terms: dict[str, PlanMeter] = {}
        for meter_slug, raw in raw_meters.items():
            term = self._plan_meter(f"{key}.meters.{meter_slug}", meter_slug, raw, meters, prices)
            if term is not None:
                terms[meter_slug] = term
        # One bill has one currency: every price the plan can bill with must agree.
        currencies = {prices[t.price].currency for t in terms.values() if t.price in prices}
        currencies |= {
            prices[m.default_price].currency
            for m in meters.values()
            if m.slug not in terms and m.default_price is not None and m.default_price in prices
        }
        currencies.discard(None)
        declared = table.get("currency")
        if declared is not None and (not isinstance(declared, str) or not CURRENCY_RE.match(declared)):
            self.problems.append(f"{key}.currency: must be an ISO 4217 code such as 'USD'")
            declared = None
        if len(currencies) > 1:
            self.problems.append(f"{key}: its prices mix currencies {sorted(c or '' for c in currencies)}")
        elif declared is not None and currencies and declared not in currencies:
            self.problems.append(f"{key}.currency: {declared} differs from its prices' {next(iter(currencies))}")
        elif declared is None and not currencies:
            self.problems.append(f"{key}.currency: required, since no priced meter gives the plan a currency")
        currency = declared or (next(iter(currencies)) if len(currencies) == 1 else None)
        return Plan(
            slug=slug,
            name=str(table.get("name", slug)),
            meters=terms,
            currency=currency,
            prepaid=prepaid,
            credits_low_threshold=low,
        )

    def _plan_meter(
        self, key: str, meter_slug: str, raw: Any, meters: Mapping[str, Meter], prices: Mapping[str, Price]
    ) -> PlanMeter | None:
        if not isinstance(raw, dict):
            self.problems.append(f"{key}: must be a table")
            return None
        self._keys(
            key,
            raw,
            required=(),
            optional=("limit", "included", "price", "reset", "enforcement", "approaching_threshold"),
        )
        meter = meters.get(meter_slug)
        if meter is None:
            self.problems.append(f"{key}: no meter named {meter_slug!r}")
            return None
        limit = self._decimal(key, raw, "limit", required=False)
        included = self._decimal(key, raw, "included", required=False) or ZERO
        reset = self._enum(key, raw, "reset", ResetPeriod, default=ResetPeriod.MONTH)
        default_enforcement = Enforcement.UNLIMITED if "limit" not in raw else Enforcement.HARD
        enforcement = self._enum(key, raw, "enforcement", Enforcement, default=default_enforcement)
        if enforcement is Enforcement.UNLIMITED and "limit" in raw:
            self.problems.append(f"{key}.enforcement: 'unlimited' contradicts the limit; remove one of them")
        if enforcement in (Enforcement.HARD, Enforcement.SOFT) and "limit" not in raw:
            self.problems.append(f"{key}.limit: a {enforcement.value} enforcement needs a limit")
        threshold = self._decimal(key, raw, "approaching_threshold", required=False)
        if threshold is not None and not ZERO < threshold <= HUNDRED:
            self.problems.append(f"{key}.approaching_threshold: a percentage above 0 and at most 100")
        price = raw.get("price", meter.default_price or meter.no_charge_price)
        self._check_price_ref(f"{key}.price", price, meter_slug, prices)
        if reset is None or enforcement is None:
            return None
        return PlanMeter(
            meter=meter_slug,
            price=price,
            limit=limit if enforcement is not Enforcement.UNLIMITED else None,
            included=included,
            reset=reset,
            enforcement=enforcement,
            approaching_threshold=threshold if threshold is not None else DEFAULT_APPROACHING_THRESHOLD,
        )

    # -- field helpers --------------------------------------------------------

    def _check_price_ref(self, key: str, price: Any, meter: str, prices: Mapping[str, Price]) -> None:
        if price is None:
            return
        if price not in prices:
            self.problems.append(f"{key}: no price named {price!r}")
        elif prices[price].meter != meter:
            self.problems.append(f"{key}: price {price!r} belongs to meter {prices[price].meter!r}, not {meter!r}")

    def _keys(self, key: str, table: dict[str, Any], *, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
        self.problems += key_problems(key, table, required=required, optional=optional)

    def _string(self, key: str, table: dict[str, Any], name: str) -> str | None:
        value = table.get(name)
        if not isinstance(value, str) or not value:
            if name in table:
                self.problems.append(f"{key}.{name}: must be a non-empty string")
            return None
        return value

    def _decimal(self, key: str, table: dict[str, Any], name: str, *, required: bool) -> Decimal | None:
        if name not in table:
            return None  # `_keys` reports missing required keys
        value = table[name]
        # Decimal strings only: a TOML float would already have lost exactness.
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.problems.append(f'{key}.{name}: write decimals as strings (e.g. "0.25") or integers')
            return None
        try:
            return parse_decimal(str(value))
        except DecimalFormatError as exc:
            self.problems.append(f"{key}.{name}: {exc}")
            return None

    def _enum(self, key: str, table: dict[str, Any], name: str, kind: type[_E], default: _E | None = None) -> _E | None:
        if name not in table:
            return default
        try:
            return kind(table[name])
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in kind)
            self.problems.append(f"{key}.{name}: {table[name]!r} is not one of {allowed}")
            return None
