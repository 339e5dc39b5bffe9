"""Webhook endpoints, declared in a TOML file (METERING_WEBHOOKS_FILE).

One table per endpoint; its name is the key (and a metric label):

    [endpoints.billing]
    url = "https://billing.internal/hooks/metering"
    secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]   # several while a secret rotates
    types = ["usage.threshold_crossed", "usage.limit_rejected"]

Checked completely at start-up, like the catalog: every problem is reported
with its dotted key, and the service refuses to start on any.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from metering.config.settings import ConfigError
from metering.config.toml import UnreadableFile, parse_document, read_text
from metering.domain.notifications import NotificationType

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # safe as a metric label value
_KNOWN_KEYS = {"url", "secrets", "types"}
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks marker, not a secret
# Standard Webhooks: secrets of 24 to 64 random bytes.
_SECRET_BYTES = (24, 64)


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    secrets: tuple[str, ...]  # whsec_<base64>: one signature each
    types: frozenset[NotificationType]


def load_endpoints(path: str | Path) -> tuple[Endpoint, ...]:
    """Read and check an endpoints file; every problem is reported at once, with its key."""
    where = f"METERING_WEBHOOKS_FILE={str(path)!r}"
    try:
        text = read_text(path, unreadable="cannot read it")
    except UnreadableFile as exc:
        raise ConfigError(f"{where}: {exc.reason}") from None
    return parse_endpoints(text, where)


def parse_endpoints(text: str, where: str = "<memory>") -> tuple[Endpoint, ...]:
    try:
        data = parse_document(text)
    except UnreadableFile as exc:
        raise ConfigError(f"{where}: {exc.reason}") from None
    problems: list[str] = []
    for unknown in sorted(set(data) - {"endpoints"}):
        problems.append(f"{unknown}: unknown key")
    tables = data.get("endpoints")
    if not isinstance(tables, dict) or not tables:
        problems.append("endpoints: define at least one [endpoints.<name>] table")
        tables = {}
    endpoints = []
    for name, table in tables.items():
        endpoint = _endpoint(f"endpoints.{name}", name, table, problems)
        if endpoint is not None:
            endpoints.append(endpoint)
    if problems:
        raise ConfigError(f"{where}:\n  " + "\n  ".join(problems))
    return tuple(endpoints)


def _endpoint(key: str, name: str, table: Any, problems: list[str]) -> Endpoint | None:
    if not isinstance(table, dict):
        problems.append(f"{key}: expected a table")
        return None
    before = len(problems)
    if not _NAME_RE.match(name):
        problems.append(f"{key}: an endpoint name is 1 to 64 characters of letters, digits, '.', '_' and '-'")
    for unknown in sorted(set(table) - _KNOWN_KEYS):
        problems.append(f"{key}.{unknown}: unknown key")
    url = table.get("url")
    if not isinstance(url, str) or not url:
        problems.append(f"{key}.url: required, an http:// or https:// URL")
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"{key}.url: only http:// and https:// URLs with a host are allowed")
    secrets = table.get("secrets")
    if not isinstance(secrets, list) or not secrets or not all(isinstance(s, str) for s in secrets):
        problems.append(f'{key}.secrets: required, a non-empty list of "{SECRET_PREFIX}<base64>" strings')
        secrets = []
    for index, secret in enumerate(secrets):
        problem = secret_problem(secret)
        if problem is not None:
            problems.append(f"{key}.secrets[{index}]: {problem}")
    types: set[NotificationType] = set()
    raw_types = table.get("types")
    if not isinstance(raw_types, list) or not raw_types:
        problems.append(f"{key}.types: required, a non-empty list of {', '.join(NotificationType)}")
    else:
        for kind in raw_types:
            if kind in NotificationType.__members__.values():
                types.add(NotificationType(kind))
            else:
                problems.append(f"{key}.types: unknown type {kind!r} (known: {', '.join(NotificationType)})")
    if len(problems) > before:
        return None
    assert isinstance(url, str)
    return Endpoint(name=name, url=url, secrets=tuple(secrets), types=frozenset(types))


def secret_problem(secret: str) -> str | None:
    """What is wrong with a Standard Webhooks secret, or None. Never echoes it."""
    if not secret.startswith(SECRET_PREFIX):
        return f"a secret starts with {SECRET_PREFIX!r} followed by base64"
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return f"not valid base64 after {SECRET_PREFIX!r}"
    low, high = _SECRET_BYTES
    if not low <= len(key) <= high:
        return f"the key must be {low} to {high} bytes (it is {len(key)})"
    return None
