"""Authentication and role checks for every call, before the servicer runs.

A caller is found from its bearer token (`authorization: Bearer <token>`
metadata) or, under mTLS, from its client certificate's common name; the
method then needs one role (METHOD_ROLES). Health and reflection stay open so
that orchestrators and grpcurl work without credentials. The caller of the
running call is kept in a context variable for the meter restriction, which
can only be checked after the request has been validated (api.servicer).
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

import grpc

from metering.access import ANONYMOUS, AccessPolicy, Caller, Role
from metering.api.bench import NOOP_METHOD
from metering.errors import MeterNotAllowed, RoleRequired, Unauthenticated

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
    "ListGrants": Role.READER,
    "ListInvoices": Role.READER,
    "GetInvoice": Role.READER,
    "WatchNotifications": Role.READER,
    "UpsertCustomer": Role.ADMIN,
    "GrantCredits": Role.ADMIN,
}

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
    def __init__(self, policy: AccessPolicy | None) -> None:
        self._policy = policy  # None: the service runs open (embedded default or explicit opt-in)

    @staticmethod
    def authorize(caller: Caller, method: str) -> None:
        """Refuse a caller whose roles do not allow `method`; else make it the current caller."""
        role = required_role(method)
        if role is not None and role not in caller.roles:
            raise RoleRequired(caller.name, method.rsplit("/", 1)[-1], role.value)
        _current_caller.set(caller)

    def identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The caller of this call from its credentials; UNAUTHENTICATED without known ones."""
        if self._policy is None:
            return ANONYMOUS
        authorization = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
        if authorization:
            scheme, _, token = str(authorization[0]).partition(" ")
            caller = self._policy.caller_for_token(token.strip()) if scheme.lower() == "bearer" else None
            if caller is None or len(authorization) > 1:
                raise Unauthenticated(missing=False)
            return caller
        # grpcio puts the verified peer certificate's CN in the auth context.
        for common_name in context.auth_context().get("x509_common_name", []):
            caller = self._policy.caller_for_certificate(common_name.decode("utf-8", "replace"))
            if caller is not None:
                return caller
        raise Unauthenticated(missing=True)
