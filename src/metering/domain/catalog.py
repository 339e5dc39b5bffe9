"""The catalog model: meters, prices and plans, immutable once loaded.

What a catalog file declares (config/catalog.py reads and checks it) and what
every rule reads: a meter's aggregation and dimensions, a price's model and
amounts, a plan's terms per meter. Pure: no file is read here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from metering.domain.decimals import ZERO
from metering.domain.errors import NotFound
from metering.domain.periods import ResetPeriod

# \Z, not $: "$" also matches before a trailing newline, so "tokens\n" would pass.
SLUG_RE = re.compile(r"^[a-z0-9_]{1,64}\Z")
PROPERTY_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
CURRENCY_RE = re.compile(r"^[A-Z]{3}\Z")
NO_CHARGE_SUFFIX = "_no_charge"
DEFAULT_APPROACHING_THRESHOLD = Decimal(80)
# Each dimension multiplies the rollup rows of an hour by its number of values.
MAX_DIMENSIONS = 8
# Minor-unit exponents of ISO 4217 currencies whose minor unit is not 2 digits.
_MINOR_UNIT_EXCEPTIONS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3}


class Aggregation(enum.Enum):
    SUM = "sum"
    COUNT = "count"
    MAX = "max"
    UNIQUE_COUNT = "unique_count"
    LATEST = "latest"

    @property
    def accumulates(self) -> bool:
        """True when events add up (SUM, COUNT, UNIQUE_COUNT); False for gauges (MAX, LATEST)."""
        return self in (Aggregation.SUM, Aggregation.COUNT, Aggregation.UNIQUE_COUNT)


class Enforcement(enum.Enum):
    HARD = "hard"
    SOFT = "soft"
    UNLIMITED = "unlimited"


class PricingModel(enum.Enum):
    PER_UNIT = "per_unit"
    PACKAGE = "package"
    GRADUATED = "graduated"
    VOLUME = "volume"


class PackageRounding(enum.Enum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Meter:
    slug: str
    aggregation: Aggregation
    unit: str
    description: str = ""
    unique_property: str | None = None  # the property counted by UNIQUE_COUNT
    default_price: str | None = None
    # Property keys the hourly rollups keep, so that grouping and filtering by
    # them is served from rollups (metering.ledger.rollups).
    dimensions: tuple[str, ...] = ()

    @property
    def no_charge_price(self) -> str:
        return f"{self.slug}{NO_CHARGE_SUFFIX}"

    def dimension_values(self, properties: Mapping[str, str]) -> dict[str, str]:
        """The part of an event's properties its rollup bucket keeps: the
        declared dimensions it carries (an absent one stays absent). The SQL
        twin is metering.ledger.rollups.DIMENSIONS_SQL; the audit checks that
        they agree."""
        if not self.dimensions or not properties:
            return {}
        return {key: properties[key] for key in self.dimensions if key in properties}

    def serves_from_rollups(self, keys: Iterable[str]) -> bool:
        """Whether grouping or filtering by these property keys can read rollups."""
        return all(key in self.dimensions for key in keys)


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: Decimal | None  # inclusive upper bound; None for the open last tier
    unit_amount: Decimal
    flat_amount: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Price:
    slug: str
    meter: str
    model: PricingModel
    currency: str | None  # None only for the built-in no-charge prices
    unit_amount: Decimal = ZERO  # per unit, or per package for PACKAGE
    package_size: Decimal | None = None
    package_rounding: PackageRounding = PackageRounding.UP
    tiers: tuple[Tier, ...] = ()

    @property
    def is_no_charge(self) -> bool:
        return self.currency is None


@dataclass(frozen=True, slots=True)
class PlanMeter:
    """What a plan says about one meter: its limit, allowance, price and reset."""

    meter: str
    price: str
    limit: Decimal | None  # None: unlimited
    included: Decimal
    reset: ResetPeriod
    enforcement: Enforcement
    approaching_threshold: Decimal  # percent


@dataclass(frozen=True, slots=True)
class Plan:
    slug: str
    name: str
    meters: Mapping[str, PlanMeter]  # in file order
    currency: str | None  # None only while a catalog with problems is parsed
    # Usage must be paid from the customer's wallet (metering.domain.wallets):
    # an event whose cost the credit grants cannot cover is refused.
    prepaid: bool = False
    # Remaining wallet credit below which `credits.low` is announced (None: never).
    credits_low_threshold: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Catalog:
    meters: Mapping[str, Meter]
    prices: Mapping[str, Price]  # includes every meter's built-in no-charge price
    plans: Mapping[str, Plan]
    source: str = "<memory>"
    # The hexadecimal SHA-256 of the file the catalog was read from (GetCatalog's
    # revision): equal revisions, equal catalogs.
    revision: str = ""

    # The one get-or-NotFound of each kind: a well-formed reference to
    # something the catalog does not have (or no longer has: a plan customers
    # are still on, a price recorded events were priced with) is NOT_FOUND.

    def meter(self, slug: str) -> Meter:
        found = self.meters.get(slug)
        if found is None:
            raise NotFound("meter", slug)
        return found

    def plan(self, slug: str) -> Plan:
        found = self.plans.get(slug)
        if found is None:
            raise NotFound("plan", slug)
        return found

    def price(self, slug: str) -> Price:
        found = self.prices.get(slug)
        if found is None:
            raise NotFound("price", slug)
        return found

    def defines(self, meter: Meter, price: Price | None = None) -> bool:
        """Whether this catalog has this very meter (and price): False for the
        references of a request validated under a catalog a reload replaced
        that changed them. Identity first: once per event."""
        found = self.meters.get(meter.slug)
        if found is not meter and found != meter:
            return False
        if price is None:
            return True
        known = self.prices.get(price.slug)
        return known is price or known == price

    def plan_meter(self, plan: Plan, meter: Meter) -> PlanMeter:
        """The plan's terms for a meter; a meter the plan does not list is unlimited,
        resets monthly and is billed at the meter's default price (else no charge)."""
        terms = plan.meters.get(meter.slug)
        if terms is not None:
            return terms
        return PlanMeter(
            meter=meter.slug,
            price=meter.default_price or meter.no_charge_price,
            limit=None,
            included=ZERO,
            reset=ResetPeriod.MONTH,
            enforcement=Enforcement.UNLIMITED,
            approaching_threshold=DEFAULT_APPROACHING_THRESHOLD,
        )


def minor_unit_digits(currency: str) -> int:
    """Digits after the decimal point of the currency's minor unit (ISO 4217)."""
    return _MINOR_UNIT_EXCEPTIONS.get(currency, 2)
