"""The access model: callers, their roles and credentials, and the policy that
finds a caller from a token digest or a certificate's common name. Pure: the
file that declares them is read and checked by config/access.py."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from metering.domain.errors import TokenExpired
from metering.domain.rate_limits import CallerLimits

TOKEN_PREFIX = "mtr_"  # noqa: S105 - a marker that makes leaked tokens easy to scan for


class Role(StrEnum):
    RECORDER = "recorder"  # writes usage: record, reserve, commit, release, void
    READER = "reader"  # reads balances, usage, events, bills, invoices, customers, grants
    ADMIN = "admin"  # manages customers, plans and grants


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    roles: frozenset[Role]
    meters: frozenset[str] | None = None  # None: every meter
    limits: CallerLimits = field(default_factory=CallerLimits)  # none by default

    def may_use(self, meter: str) -> bool:
        return self.meters is None or meter in self.meters


# The caller of a service that runs without authentication.
ANONYMOUS = Caller("anonymous", frozenset(Role))


@dataclass(frozen=True, slots=True)
class TokenCredential:
    caller: Caller
    expires_at: datetime | None = None  # aware; None: never
    expires_epoch: float = math.inf  # the same instant, compared on every call


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    by_token_digest: Mapping[str, TokenCredential]
    by_certificate_cn: Mapping[str, Caller]

    @property
    def callers(self) -> list[Caller]:
        tokens = [credential.caller for credential in self.by_token_digest.values()]
        unique = {c.name: c for c in [*tokens, *self.by_certificate_cn.values()]}
        return sorted(unique.values(), key=lambda c: c.name)

    def caller_for_token(self, token: str, now: float | None = None) -> Caller | None:
        """The caller of a token (None: unknown); TokenExpired past its expiry (`now`: epoch seconds)."""
        credential = self.by_token_digest.get(token_digest(token))
        if credential is None:
            return None
        expires_at = credential.expires_at
        if expires_at is not None and credential.expires_epoch <= (time.time() if now is None else now):
            raise TokenExpired(credential.caller.name, expires_at)
        return credential.caller

    def caller_for_certificate(self, common_name: str) -> Caller | None:
        return self.by_certificate_cn.get(common_name)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def caller_entry(
    name: str,
    roles: Collection[str],
    *,
    token_digests: Collection[str] = (),
    certificate_cn: str | None = None,
    meters: Collection[str] | None = None,
) -> str:
    """One caller's table of an access file (what `metering token new` prints)."""
    # JSON strings and lists of strings are valid TOML.
    lines = [f"[callers.{name}]", f"roles = {json.dumps(sorted(roles))}"]
    if token_digests:
        lines.append(f"token_sha256 = {json.dumps(list(token_digests))}")
    if certificate_cn is not None:
        lines.append(f"certificate_cn = {json.dumps(certificate_cn)}")
    if meters:
        lines.append(f"meters = {json.dumps(list(meters))}")
    return "\n".join(lines) + "\n"
