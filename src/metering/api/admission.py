"""The admission of a call and its accounting, the same on both edges.

Every call of ours, on the gRPC edge (api.interceptor) and on the HTTP edge
(api.http.edge), unary or streaming, passes the same sequence before its body
runs, in this order:

1. the drain's gate (api.drain): once shutdown drains, refused UNAVAILABLE
   (SHUTTING_DOWN); a unary or client-streaming call is counted in flight;
2. the caller, from the call's credentials (api.auth: a bearer token, or a
   client certificate on gRPC): UNAUTHENTICATED without known ones;
3. the method's role: PERMISSION_DENIED without it; the caller becomes the
   current caller (the meter restriction is checked against it later);
4. the caller's rate and in-flight limits (metering.domain.rate_limits):
   RESOURCE_EXHAUSTED RATE_LIMITED, answered at its retry slot at the latest
   (METERING_RATE_LIMIT_HOLD, `Admission.refusal`).

All of it reads only the call's metadata or headers: a refused call costs no
decoding of its body (the gRPC edge decodes the request itself after this).
When the call ends, `leave` gives back what it held (the in-flight slot of the
drain and of its caller's gate), and `Accounting` counts it: the request
counter by method, code, caller and protocol, the latency histogram (unary
calls), and one log line for a failed call (metering.telemetry.logs).

What differs between the edges stays in them: where the credentials are read,
how a refusal is written on the wire (a gRPC status or a Connect error), and
the HTTP edge's Idempotency-Key header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import grpc

from metering.api.auth import Authenticator
from metering.api.drain import Drain
from metering.domain.access import Caller
from metering.domain.errors import RateLimited
from metering.domain.rate_limits import CallerGate
from metering.telemetry.logs import failed_call
from metering.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from prometheus_client import Counter

# The caller label of a call refused before it was identified.
UNAUTHENTICATED = "unauthenticated"
_OK = grpc.StatusCode.OK

_Source = TypeVar("_Source")  # what an edge reads a caller from: a gRPC context, HTTP headers


class Call:
    """One call on its way through admission: when it started, who it is (its
    caller label, once identified) and what it holds until it ends."""

    __slots__ = ("caller", "entered", "gate", "started")

    def __init__(self, started: float, caller: str = UNAUTHENTICATED) -> None:
        self.started = started  # time.perf_counter()
        self.caller = caller
        self.gate: CallerGate | None = None  # the caller's limits, left when the call ends
        self.entered = False  # counted in flight by the drain


class Accounting:
    """The metrics and log of one method on one protocol: an answered call costs
    a dict lookup and two metric updates (the OK counter of each caller is
    bound once), nothing built."""

    def __init__(self, metrics: Metrics, method: str, protocol: str, *, timed: bool, log: logging.Logger) -> None:
        self._metrics = metrics
        self._log = log  # each edge logs under its own name
        self._method = method
        self._protocol = protocol
        # A streaming call is not timed: its duration is the life of a watch
        # or a stream, which the client decides, not a latency.
        self._latency = metrics.child(metrics.latency, method, protocol) if timed else None
        self._answered: dict[str, Counter] = {}

    def __call__(self, code: grpc.StatusCode, caller: str, started: float) -> None:
        """Count a call that ended with `code` (and log it when it failed)."""
        metrics = self._metrics
        elapsed = time.perf_counter() - started
        if code is _OK:
            child = self._answered.get(caller)
            if child is None:
                child = self._answered[caller] = metrics.child(
                    metrics.requests, self._method, _OK.name, caller, self._protocol
                )
            child.inc()
        else:
            metrics.child(metrics.requests, self._method, code.name, caller, self._protocol).inc()
            failed_call(self._log, self._method, code, caller, elapsed, self._protocol)
        if self._latency is not None:
            self._latency.observe(elapsed)


class Admission:
    """The gate every call of ours passes on either edge (see the module's doc): the drain, the
    caller's credentials, the method's role and the caller's limits; and how calls are counted."""

    def __init__(self, metrics: Metrics, authenticator: Authenticator, drain: Drain | None = None) -> None:
        self._metrics = metrics
        self._authenticator = authenticator
        self._drain = Drain() if drain is None else drain  # shared by both edges
        self._accounting: dict[tuple[str, str, bool, str], Accounting] = {}

    @property
    def drain(self) -> Drain:
        return self._drain

    @property
    def authenticator(self) -> Authenticator:
        return self._authenticator

    def accounting(self, method: str, protocol: str, log: logging.Logger, *, timed: bool = True) -> Accounting:
        """The accounting of `method` on `protocol`, its failed calls logged on
        `log`; built once (methods, protocols and loggers are bounded)."""
        key = (method, protocol, timed, log.name)
        found = self._accounting.get(key)
        if found is None:
            found = self._accounting[key] = Accounting(self._metrics, method, protocol, timed=timed, log=log)
        return found

    async def enter(
        self,
        call: Call,
        method: str,
        identify: Callable[[_Source], Caller],
        source: _Source,
        *,
        counted: bool = True,
        hold: bool = True,
    ) -> None:
        """Admit `call` to `method`, or raise the domain error that refuses it.
        `identify(source)` finds the caller from the call's credentials.
        `counted`: the call counts in flight for the drain (not a stream the
        client may keep open for as long as it likes); `hold`: it takes a slot of
        its caller's in-flight limit (not a watch). Whatever the call holds when
        this returns or raises is given back by `leave`."""
        call.entered = await self._drain.enter(counted=counted)
        caller = identify(source)
        call.caller = caller.name
        authenticator = self._authenticator
        authenticator.authorize(caller, method)
        call.gate = authenticator.admit(caller, hold=hold)

    def leave(self, call: Call) -> None:
        """The call has ended (answered, refused or cancelled): give back its slots."""
        if call.gate is not None:
            call.gate.leave()
            call.gate = None
        if call.entered:
            self._drain.leave()
            call.entered = False

    async def refusal(self, exc: Exception, seconds_left: Callable[[], float | None]) -> Exception:
        """What answers a call that raised `exc`: a rate-limit refusal is held
        until its retry slot (at most METERING_RATE_LIMIT_HOLD, within the
        call's deadline, `seconds_left()`), then says what is left of the wait."""
        if isinstance(exc, RateLimited):
            return await self._authenticator.hold(exc, seconds_left())
        return exc
