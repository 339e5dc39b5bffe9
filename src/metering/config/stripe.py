"""Which meters and customers reach Stripe, and under which names (METERING_STRIPE_FILE).

The file is TOML, checked completely at start-up like the catalog: every
problem is reported with the dotted key that holds it, and the service
refuses to start on any.

    identifier_prefix = "metering"     # optional: starts every meter event identifier

    [meters.tokens]                    # a meter of the catalog
    event_name = "api_tokens"          # the Stripe meter's event_name
    customer_payload_key = "stripe_customer_id"   # optional: the meter's customer_mapping key
    value_payload_key = "value"                   # optional: the meter's value_settings key

    [customers]
    unlisted = "skip"                  # "skip": only listed customers are exported;
                                       # "same_id": a customer's id is its Stripe customer id
    [customers.ids]
    acme = "cus_NciAYcXfLnqBoz"        # metering customer id -> Stripe customer id

Only SUM and COUNT meters can be mapped: Stripe adds up the values of the
meter events it receives, and an hour's SUM or COUNT adds up across hours.
The maximum (MAX), last value (LATEST) or distinct count (UNIQUE_COUNT) of a
billing period is not the sum of its hours' figures, so such a meter is
refused here rather than billed wrong.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metering.config.toml import FileProblems, UnreadableFile, key_problems, parse_document, read_text
from metering.domain.catalog import Aggregation, Meter

DEFAULT_CUSTOMER_PAYLOAD_KEY = "stripe_customer_id"
DEFAULT_VALUE_PAYLOAD_KEY = "value"
DEFAULT_IDENTIFIER_PREFIX = "metering"
# Stripe's limits: event names up to 100 characters, identifiers up to 100
# (metering.domain.stripe keeps an identifier within it whatever the prefix).
_EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}\Z")
_PAYLOAD_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}\Z")
_PREFIX_RE = re.compile(r"^[a-z0-9_-]{1,24}\Z")
# Stripe object ids: a prefix, an underscore, letters and digits (cus_NciAYcXfLnqBoz).
_STRIPE_ID_RE = re.compile(r"^[A-Za-z0-9_]{1,255}\Z")
_EXPORTABLE = (Aggregation.SUM, Aggregation.COUNT)


class UnlistedCustomers(enum.Enum):
    SKIP = "skip"
    SAME_ID = "same_id"


@dataclass(frozen=True, slots=True)
class StripeMeter:
    """A catalog meter reported to a Stripe meter."""

    meter: Meter
    event_name: str
    customer_payload_key: str = DEFAULT_CUSTOMER_PAYLOAD_KEY
    value_payload_key: str = DEFAULT_VALUE_PAYLOAD_KEY


@dataclass(frozen=True, slots=True)
class StripeMapping:
    meters: Mapping[str, StripeMeter]  # by meter slug
    customer_ids: Mapping[str, str]  # metering customer id -> Stripe customer id
    unlisted: UnlistedCustomers = UnlistedCustomers.SKIP
    identifier_prefix: str = DEFAULT_IDENTIFIER_PREFIX
    source: str = "<memory>"

    def stripe_customer(self, customer_id: str) -> str | None:
        """The Stripe customer id of a customer, or None when it is not exported."""
        listed = self.customer_ids.get(customer_id)
        if listed is not None:
            return listed
        if self.unlisted is UnlistedCustomers.SAME_ID and _STRIPE_ID_RE.match(customer_id):
            return customer_id
        return None

    @property
    def listed_only(self) -> bool:
        """True when only the listed customers are exported (the ledger query can say so)."""
        return self.unlisted is UnlistedCustomers.SKIP


class StripeMappingError(FileProblems):
    """The mapping file is invalid; `problems` lists each one with its key."""

    what = "Stripe mapping"


def load_mapping(path: str | Path, meters: Mapping[str, Meter]) -> StripeMapping:
    source = str(path)
    try:
        text = read_text(path)
    except UnreadableFile as exc:
        raise StripeMappingError(source, [exc.reason]) from exc
    return parse_mapping(text, meters, source=source)


def parse_mapping(text: str, meters: Mapping[str, Meter], *, source: str = "<memory>") -> StripeMapping:
    try:
        document = parse_document(text)
    except UnreadableFile as exc:
        raise StripeMappingError(source, [exc.reason]) from exc
    return _MappingParser(source, meters).parse(document)


@dataclass
class _MappingParser:
    source: str
    catalog_meters: Mapping[str, Meter]
    problems: list[str] = field(default_factory=list)

    def parse(self, document: dict[str, Any]) -> StripeMapping:
        self._keys("", document, required=("meters", "customers"), optional=("identifier_prefix",))
        prefix = document.get("identifier_prefix", DEFAULT_IDENTIFIER_PREFIX)
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            self.problems.append("identifier_prefix: 1 to 24 characters of [a-z0-9_-]")
        meters = self._meters(document.get("meters", {}))
        unlisted, ids = self._customers(document.get("customers", {}))
        if self.problems:
            raise StripeMappingError(self.source, self.problems)
        return StripeMapping(
            meters=meters, customer_ids=ids, unlisted=unlisted, identifier_prefix=prefix, source=self.source
        )

    def _meters(self, tables: Any) -> dict[str, StripeMeter]:
        if not isinstance(tables, dict) or not tables:
            self.problems.append("meters: at least one [meters.<slug>] table")
            return {}
        mapped: dict[str, StripeMeter] = {}
        event_names: dict[str, str] = {}
        for slug, table in tables.items():
            key = f"meters.{slug}"
            if not isinstance(table, dict):
                self.problems.append(f"{key}: must be a table")
                continue
            self._keys(key, table, required=("event_name",), optional=("customer_payload_key", "value_payload_key"))
            meter = self.catalog_meters.get(slug)
            if meter is None:
                self.problems.append(f"{key}: the catalog has no meter named {slug!r}")
            elif meter.aggregation not in _EXPORTABLE:
                self.problems.append(
                    f"{key}: a {meter.aggregation.value} meter cannot be reported to Stripe, which adds up meter "
                    "events: only sum and count meters add up hour by hour"
                )
            event_name = self._text(key, table, "event_name", _EVENT_NAME_RE, "1 to 100 characters of [A-Za-z0-9_.:-]")
            customer_key = self._text(
                key, table, "customer_payload_key", _PAYLOAD_KEY_RE, "1 to 100 characters of [A-Za-z0-9_.-]"
            )
            value_key = self._text(
                key, table, "value_payload_key", _PAYLOAD_KEY_RE, "1 to 100 characters of [A-Za-z0-9_.-]"
            )
            if event_name is not None:
                if event_name in event_names:
                    # Two meters on one Stripe meter would share identifiers' hours and mix their usage.
                    other = event_names[event_name]
                    self.problems.append(f"{key}.event_name: {event_name!r} is already the event of {other}")
                event_names[event_name] = key
            customer_key = customer_key or DEFAULT_CUSTOMER_PAYLOAD_KEY
            value_key = value_key or DEFAULT_VALUE_PAYLOAD_KEY
            if customer_key == value_key:
                self.problems.append(f"{key}: customer_payload_key and value_payload_key must differ")
            if meter is None or meter.aggregation not in _EXPORTABLE or event_name is None:
                continue
            mapped[slug] = StripeMeter(meter, event_name, customer_key, value_key)
        return mapped

    def _customers(self, table: Any) -> tuple[UnlistedCustomers, dict[str, str]]:
        if not isinstance(table, dict):
            self.problems.append("customers: must be a table")
            return UnlistedCustomers.SKIP, {}
        self._keys("customers", table, required=("unlisted",), optional=("ids",))
        unlisted = UnlistedCustomers.SKIP
        raw_unlisted = table.get("unlisted")
        if raw_unlisted is not None:
            try:
                unlisted = UnlistedCustomers(raw_unlisted)
            except ValueError:
                allowed = ", ".join(repr(member.value) for member in UnlistedCustomers)
                self.problems.append(f"customers.unlisted: {raw_unlisted!r} is not one of {allowed}")
        raw_ids = table.get("ids", {})
        if not isinstance(raw_ids, dict):
            self.problems.append("customers.ids: must be a table of customer id = Stripe customer id")
            return unlisted, {}
        ids: dict[str, str] = {}
        for customer_id, stripe_id in raw_ids.items():
            if not isinstance(stripe_id, str) or not _STRIPE_ID_RE.match(stripe_id):
                self.problems.append(f"customers.ids.{customer_id}: a Stripe customer id such as 'cus_NciAYcXfLnqBoz'")
                continue
            ids[customer_id] = stripe_id
        if unlisted is UnlistedCustomers.SKIP and not ids and not self.problems:
            self.problems.append("customers.ids: with unlisted = 'skip', list at least one customer to export")
        return unlisted, ids

    def _text(self, key: str, table: dict[str, Any], name: str, pattern: re.Pattern[str], rule: str) -> str | None:
        if name not in table:
            return None
        value = table[name]
        if not isinstance(value, str) or not pattern.match(value):
            self.problems.append(f"{key}.{name}: {rule}")
            return None
        return value

    def _keys(self, key: str, table: dict[str, Any], *, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
        self.problems += key_problems(key, table, required=required, optional=optional)
