"""Who may call: callers, their roles, their credentials (METERING_AUTH_FILE).

The file is TOML, one table per caller; the caller's name is the key:

    [callers.api-gateway]
    roles = ["recorder"]                 # recorder, reader, admin
    token_sha256 = ["<64 hex digits>"]   # one or more (rotation): never the token itself
    meters = ["api_calls"]               # optional: only these meters

    [callers.billing-ui]
    roles = ["reader"]
    certificate_cn = "billing-ui.internal"   # a client certificate's common name (mTLS)

    [callers.batch-importer]
    roles = ["recorder"]
    # A digest may carry an expiry (a TOML date-time with its offset, or a date:
    # midnight UTC); past it the token is refused (CREDENTIALS_EXPIRED).
    token_sha256 = [{ sha256 = "<64 hex digits>", expires = 2027-01-31T00:00:00Z }]
    requests_per_second = 200            # optional: a token bucket per process...
    burst = 400                          # ...holding this many (default: one second's worth)
    max_in_flight = 16                   # optional: concurrent calls per process

Tokens are 256-bit random strings made by `metering token new`. Only their
SHA-256 digest is configured: with that much entropy a fast hash is enough
(there is nothing to guess, so no password stretching is needed), and the
file can be read without revealing a usable credential.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from metering.config.settings import ConfigError
from metering.config.toml import UnreadableFile, parse_document, read_text
from metering.domain.access import TOKEN_PREFIX, AccessPolicy, Caller, Role, TokenCredential
from metering.domain.rate_limits import CallerLimits, RateLimit

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # safe as a metric label value
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_KNOWN_KEYS = {"roles", "token_sha256", "certificate_cn", "meters", "requests_per_second", "burst", "max_in_flight"}
_DIGEST_KEYS = {"sha256", "expires"}


def load_access(path: str | Path, meters: Collection[str]) -> AccessPolicy:
    """Read and check an access file; every problem is reported at once, with its key."""
    try:
        data = parse_document(read_text(path, unreadable="cannot read it"))
    except UnreadableFile as exc:
        raise ConfigError(f"METERING_AUTH_FILE={str(path)!r}: {exc.reason}") from None
    problems: list[str] = []
    tokens: dict[str, TokenCredential] = {}
    certificates: dict[str, Caller] = {}
    callers = data.get("callers")
    if not isinstance(callers, dict) or not callers:
        problems.append("callers: define at least one [callers.<name>] table")
        callers = {}
    for unknown in sorted(set(data) - {"callers"}):
        problems.append(f"{unknown}: unknown key")
    for name, entry in callers.items():
        caller = _caller(f"callers.{name}", name, entry, meters, problems)
        if caller is None:
            continue
        for digest, expires in _digests(f"callers.{name}.token_sha256", entry.get("token_sha256", []), problems):
            if digest in tokens:
                problems.append(f"callers.{name}.token_sha256: also the token of {tokens[digest].caller.name!r}")
            tokens[digest] = TokenCredential(caller, expires, math.inf if expires is None else expires.timestamp())
        common_name = entry.get("certificate_cn")
        if common_name is not None:
            if not isinstance(common_name, str) or not common_name:
                problems.append(f"callers.{name}.certificate_cn: expected a non-empty string")
            elif common_name in certificates:
                problems.append(
                    f"callers.{name}.certificate_cn: also the certificate of {certificates[common_name].name!r}"
                )
            else:
                certificates[common_name] = caller
        if "token_sha256" not in entry and common_name is None:
            problems.append(f"callers.{name}: needs token_sha256 or certificate_cn")
    if problems:
        raise ConfigError(f"METERING_AUTH_FILE={str(path)!r}:\n  " + "\n  ".join(problems))
    return AccessPolicy(by_token_digest=tokens, by_certificate_cn=certificates)


def _caller(key: str, name: str, entry: Any, meters: Collection[str], problems: list[str]) -> Caller | None:
    if not isinstance(entry, dict):
        problems.append(f"{key}: expected a table")
        return None
    if not _NAME_RE.match(name):
        problems.append(f"{key}: a caller name is 1 to 64 characters of letters, digits, '.', '_' and '-'")
    for unknown in sorted(set(entry) - _KNOWN_KEYS):
        problems.append(f"{key}.{unknown}: unknown key")
    roles: set[Role] = set()
    raw_roles = entry.get("roles")
    if not isinstance(raw_roles, list) or not raw_roles:
        problems.append(f"{key}.roles: expected a non-empty list of {', '.join(Role)}")
    else:
        for role in raw_roles:
            if role in Role.__members__.values():
                roles.add(Role(role))
            else:
                problems.append(f"{key}.roles: unknown role {role!r} (known: {', '.join(Role)})")
    allowed: frozenset[str] | None = None
    if "meters" in entry:
        raw_meters = entry["meters"]
        if not isinstance(raw_meters, list) or not raw_meters or not all(isinstance(m, str) for m in raw_meters):
            problems.append(f"{key}.meters: expected a non-empty list of meter slugs")
        else:
            for meter in raw_meters:
                if meter not in meters:
                    problems.append(f"{key}.meters: no meter {meter!r} in the catalog")
            allowed = frozenset(raw_meters)
    limits = _limits(key, entry, problems)
    return Caller(name=name, roles=frozenset(roles), meters=allowed, limits=limits)


def _limits(key: str, entry: dict[str, Any], problems: list[str]) -> CallerLimits:
    rate = None
    raw_rate = entry.get("requests_per_second")
    raw_burst = entry.get("burst")
    if raw_rate is not None:
        # bool is an int subclass; nan and inf are floats TOML can spell.
        if isinstance(raw_rate, bool) or not isinstance(raw_rate, int | float) or not 0 < raw_rate < math.inf:
            problems.append(f"{key}.requests_per_second: expected a number greater than 0")
        elif raw_burst is not None and (isinstance(raw_burst, bool) or not isinstance(raw_burst, int) or raw_burst < 1):
            problems.append(f"{key}.burst: expected a whole number of at least 1")
        else:
            burst = raw_burst if raw_burst is not None else max(1, math.ceil(raw_rate))
            rate = RateLimit(per_second=float(raw_rate), burst=float(burst))
    elif raw_burst is not None:
        problems.append(f"{key}.burst: needs requests_per_second (the rate the bucket refills at)")
    max_in_flight = entry.get("max_in_flight")
    if max_in_flight is not None and (
        isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1
    ):
        problems.append(f"{key}.max_in_flight: expected a whole number of at least 1")
        max_in_flight = None
    return CallerLimits(rate=rate, max_in_flight=max_in_flight)


def _digests(key: str, raw: Any, problems: list[str]) -> list[tuple[str, datetime | None]]:
    """(digest, expiry) of each entry: a digest, or a table {sha256 = digest, expires = date-time}."""
    values = [raw] if isinstance(raw, str | dict) else raw
    if not isinstance(values, list) or not all(isinstance(v, str | dict) for v in values):
        problems.append(f"{key}: expected a SHA-256 hex digest, a {{ sha256, expires }} table, or a list of them")
        return []
    digests = []
    for index, item in enumerate(values):
        expires = None
        if isinstance(item, dict):
            where = f"{key}[{index}]"
            for unknown in sorted(set(item) - _DIGEST_KEYS):
                problems.append(f"{where}.{unknown}: unknown key")
            value = item.get("sha256")
            if not isinstance(value, str):
                problems.append(f"{where}.sha256: expected a SHA-256 hex digest")
                continue
            if "expires" in item:
                expires = _expiry(f"{where}.expires", item["expires"], problems)
        else:
            value = item
        digest = value.strip().lower()
        if not _DIGEST_RE.match(digest):
            # Someone pasted the token instead of its digest: say so without echoing it.
            hint = (
                " (this looks like a token: configure its digest, `metering token digest`)"
                if value.startswith(TOKEN_PREFIX)
                else ""
            )
            problems.append(f"{key}: expected 64 hexadecimal digits{hint}")
        else:
            digests.append((digest, expires))
    return digests


def _expiry(key: str, raw: Any, problems: list[str]) -> datetime | None:
    if isinstance(raw, datetime):
        if raw.tzinfo is None:
            problems.append(f"{key}: give the offset (e.g. 2027-01-31T00:00:00Z): a local time is ambiguous")
            return None
        return raw.astimezone(UTC)
    if isinstance(raw, date):
        return datetime(raw.year, raw.month, raw.day, tzinfo=UTC)
    problems.append(f"{key}: expected a TOML date-time with offset (2027-01-31T00:00:00Z) or a date")
    return None
