"""Authentication and role checks for every call, before the servicer runs.

A caller is found from its bearer token (`authorization: Bearer <token>`
metadata) or, under mTLS, from its client certificate's common name; the
method then needs one role (METHOD_ROLES). Health and reflection stay open so
that orchestrators and grpcurl work without credentials. The caller of the
running call is kept in a context variable for the meter restriction, which
can only be checked after the request has been validated (api.servicer).

A caller with limits in the auth file is then admitted through its gate
(metering.domain.rate_limits): over them, RESOURCE_EXHAUSTED RATE_LIMITED before the
servicer runs, so nothing is written. SIGHUP swaps the policy (`reload`): a
call already identified keeps the caller it was admitted as.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from metering.api.bench import NOOP_METHOD
from metering.domain.access import ANONYMOUS, AccessPolicy, Caller, Role
from metering.domain.errors import MeterNotAllowed, RateLimited, RoleRequired, Unauthenticated
from metering.domain.rate_limits import CallerGate, Gates

METERING_SERVICE_PREFIX = "/metering.v1.MeteringService/"

# The one table of who may call what; a MeteringService method missing here
# is refused to everyone but admins (tests check the table covers the service).
METHOD_ROLES: Mapping[str, Role] = {
    "RecordUsage": Role.RECORDER,
    "RecordUsageBatch": Role.RECORDER,
    "RecordUsageStream": Role.RECORDER,
    "ReserveUsage": Role.RECORDER,
    "CommitReservation": Role.RECORDER,
    "ReleaseReservation": Role.RECORDER,
    "VoidUsage": Role.RECORDER,
    "CheckBalance": Role.READER,
    "GetUsage": Role.READER,
    "ListUsageEvents": Role.READER,
    "EstimateBill": Role.READER,
    "GetCustomer": Role.READER,
    "ListCustomers": Role.READER,
    "GetCatalog": Role.READER,
    "ListGrants": Role.READER,
    "ListInvoices": Role.READER,
    "GetInvoice": Role.READER,
    "WatchNotifications": Role.READER,
    "UpsertCustomer": Role.ADMIN,
    "GrantCredits": Role.ADMIN,
    "IssueCreditNote": Role.ADMIN,
    "GrantWalletCredit": Role.ADMIN,
    "GetWallet": Role.READER,
}

# A held refusal is answered this long before the call's deadline, so that
# the client reads RATE_LIMITED rather than DEADLINE_EXCEEDED.
_DEADLINE_MARGIN_SECONDS = 0.05

# Services every client may call without credentials.
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("metering_caller", default=ANONYMOUS)


def require_meter(meter: str) -> None:
    """Refuse a meter outside the caller's restriction; "" means every meter."""
    caller = _current_caller.get()
    if caller.meters is not None and (not meter or meter not in caller.meters):
        raise MeterNotAllowed(caller.name, meter)


def is_open(method: str) -> bool:
    return method.startswith(OPEN_SERVICE_PREFIXES)


def required_role(method: str) -> Role | None:
    """The role `method` needs; None: any authenticated caller (the benchmark no-op)."""
    if method == NOOP_METHOD:
        return None
    if method.startswith(METERING_SERVICE_PREFIX):
        return METHOD_ROLES.get(method.removeprefix(METERING_SERVICE_PREFIX), Role.ADMIN)
    return Role.ADMIN


class Authenticator:
    """Who is calling and whether it may: finds the caller of each call (bearer token or client
    certificate), checks the method's role and admits it through the caller's rate limits, before
    the servicer runs. Its policy is swapped whole on SIGHUP; a call already admitted keeps its caller."""

    def __init__(
        self,
        policy: AccessPolicy | None,
        on_rate_limited: Callable[[str, str], None] = lambda caller, kind: None,
        *,
        max_hold: float = 0.0,
    ) -> None:
        self._policy = policy  # None: the service runs open (embedded default or explicit opt-in)
        self._max_hold = max_hold  # METERING_RATE_LIMIT_HOLD in seconds; 0: refuse at once
        self._gates = Gates()
        self._on_rate_limited = on_rate_limited  # (caller, "rate" | "concurrency"): a metric
        if policy is not None:
            self._gates.configure({c.name: c.limits for c in policy.callers}, time.monotonic())

    @property
    def policy(self) -> AccessPolicy | None:
        return self._policy

    def reload(self, policy: AccessPolicy) -> None:
        """Serve with a new policy from now on; calls in flight finish as the caller they were admitted as."""
        self._gates.configure({c.name: c.limits for c in policy.callers}, time.monotonic())
        self._policy = policy

    def admit(self, caller: Caller, *, hold: bool = True) -> CallerGate | None:
        """Let the call through the caller's limits, or raise RateLimited. With a
        gate returned, the call must `leave()` it when it ends. `hold=False`
        (a watch stream, whose length the client decides) spends a token but
        takes no slot of max_in_flight."""
        gate = self._gates.get(caller.name)
        if gate is None:
            return None
        refusal = gate.enter(time.monotonic(), hold=hold)
        if refusal is None:
            return gate if hold else None
        self._on_rate_limited(caller.name, refusal.kind.value)
        rate = refusal.limits.rate
        raise RateLimited(
            caller.name,
            refusal.kind.value,
            refusal.retry_after,
            requests_per_second=None if rate is None else rate.per_second,
            burst=None if rate is None else rate.burst,
            max_in_flight=refusal.limits.max_in_flight,
        )

    async def hold(self, refusal: RateLimited, time_remaining: float | None) -> RateLimited:
        """Answer a refusal only at its retry slot (at most METERING_RATE_LIMIT_HOLD
        and within the call's deadline), then say what is left of the wait.
        A client that resends refused calls at once is then paced at about its
        own rate, instead of costing an RPC per refusal in a loop; the wait
        costs no CPU. A client that waits as told loses nothing: it would
        have waited anyway."""
        held = min(refusal.retry_after, self._max_hold)
        if time_remaining is not None:
            held = min(held, time_remaining - _DEADLINE_MARGIN_SECONDS)
        if held <= 0:
            return refusal
        await asyncio.sleep(held)
        return refusal.waited(held)

    @staticmethod
    def authorize(caller: Caller, method: str) -> None:
        """Refuse a caller whose roles do not allow `method`; else make it the current caller."""
        role = required_role(method)
        if role is not None and role not in caller.roles:
            raise RoleRequired(caller.name, method.rsplit("/", 1)[-1], role.value)
        _current_caller.set(caller)

    def identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The caller of a gRPC call from its credentials; UNAUTHENTICATED without known ones."""
        if self._policy is None:
            return ANONYMOUS
        authorization = [str(value) for key, value in context.invocation_metadata() or () if key == "authorization"]
        if authorization:
            return self._bearer(self._policy, authorization)
        # grpcio puts the verified peer certificate's CN in the auth context.
        for common_name in context.auth_context().get("x509_common_name", []):
            caller = self._policy.caller_for_certificate(common_name.decode("utf-8", "replace"))
            if caller is not None:
                return caller
        raise Unauthenticated(missing=True)

    def identify_http(self, authorization: Sequence[str]) -> Caller:
        """The caller of an HTTP call from its `authorization` headers (the HTTP
        edge has no client certificates: mTLS is gRPC's); UNAUTHENTICATED without known ones."""
        if self._policy is None:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated(missing=True)
        return self._bearer(self._policy, authorization)

    @staticmethod
    def _bearer(policy: AccessPolicy, authorization: Sequence[str]) -> Caller:
        """The caller of one `Bearer <token>` value (one only, of a known token)."""
        scheme, _, token = authorization[0].partition(" ")
        caller = policy.caller_for_token(token.strip()) if scheme.lower() == "bearer" else None
        if caller is None or len(authorization) > 1:
            raise Unauthenticated(missing=False)
        return caller
