"""The admission both edges share (metering.api.admission): what a call holds
once admitted or refused, what leave() gives back, and how calls are counted.
No database, no server: the credentials are read by a plain function."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from prometheus_client import CollectorRegistry

from metering.api.admission import UNAUTHENTICATED, Admission, Call
from metering.api.auth import Authenticator
from metering.api.drain import Drain
from metering.domain.access import AccessPolicy, Caller, Role, TokenCredential, token_digest
from metering.domain.errors import RateLimited, RoleRequired, ShuttingDown, Unauthenticated
from metering.domain.rate_limits import CallerLimits
from metering.telemetry.metrics import GRPC, Metrics

RECORD = "/metering.v1.MeteringService/RecordUsage"
BALANCE = "/metering.v1.MeteringService/CheckBalance"
READER = Caller("reader", frozenset({Role.READER}))
CAPPED = Caller("capped", frozenset({Role.RECORDER}), limits=CallerLimits(max_in_flight=1))
log = logging.getLogger("test.admission")


def policy(*callers: Caller) -> AccessPolicy:
    return AccessPolicy({token_digest(c.name): TokenCredential(c) for c in callers}, {})


@pytest.fixture
def gate() -> Admission:
    """Two callers: a reader, and a recorder with one call in flight at most."""
    return Admission(Metrics(CollectorRegistry()), Authenticator(policy(READER, CAPPED)), Drain())


def by_token(policy_in_force: AccessPolicy, token: str) -> Caller:
    """The edges read a token from metadata or headers; here the source is the token itself."""
    caller = policy_in_force.caller_for_token(token)
    if caller is None:
        raise Unauthenticated(missing=not token)
    return caller


def enter(gate: Admission, call: Call, method: str, token: str, **flags: bool) -> None:
    policy_in_force = gate.authenticator.policy
    assert policy_in_force is not None
    asyncio.run(gate.enter(call, method, lambda source: by_token(policy_in_force, source), token, **flags))


def test_an_admitted_call_holds_a_drain_slot_and_its_gate_until_it_leaves(gate: Admission) -> None:
    call = Call(0.0)
    enter(gate, call, RECORD, "capped")
    assert (call.caller, call.entered, call.gate is not None) == ("capped", True, True)
    assert gate.drain.in_flight == 1
    second = Call(0.0)
    with pytest.raises(RateLimited):  # max_in_flight 1: the slot is taken
        enter(gate, second, RECORD, "capped")
    gate.leave(second)  # a refused call gives back what it took: the drain's slot
    assert gate.drain.in_flight == 1
    gate.leave(call)
    assert gate.drain.in_flight == 0
    enter(gate, third := Call(0.0), RECORD, "capped")  # the caller's slot is free again
    gate.leave(third)
    gate.leave(third)  # twice is harmless
    assert gate.drain.in_flight == 0


def test_a_refusal_names_the_caller_once_it_is_known(gate: Admission) -> None:
    unknown = Call(0.0)
    with pytest.raises(Unauthenticated):
        enter(gate, unknown, BALANCE, "nobody")
    assert unknown.caller == UNAUTHENTICATED and unknown.gate is None
    wrong_role = Call(0.0)
    with pytest.raises(RoleRequired):
        enter(gate, wrong_role, RECORD, "reader")
    assert wrong_role.caller == "reader" and wrong_role.gate is None
    for call in (unknown, wrong_role):
        gate.leave(call)
    assert gate.drain.in_flight == 0


def test_streams_are_not_counted_in_flight_and_take_no_slot(gate: Admission) -> None:
    call = Call(0.0)
    enter(gate, call, RECORD, "capped", counted=False, hold=False)
    assert (call.entered, call.gate) == (False, None)
    enter(gate, other := Call(0.0), RECORD, "capped")  # the unary call still has the caller's one slot
    gate.leave(other)
    gate.leave(call)


def test_once_the_drain_closes_a_call_is_refused_holding_nothing(gate: Admission) -> None:
    gate.drain.close()
    call = Call(0.0)
    with pytest.raises(ShuttingDown):
        enter(gate, call, BALANCE, "reader")
    assert (call.caller, call.entered, call.gate) == (UNAUTHENTICATED, False, None)


def test_only_a_rate_limit_refusal_is_held(gate: Admission) -> None:
    refused = RateLimited("capped", "rate", 0.5, requests_per_second=1.0, burst=1.0, max_in_flight=None)
    other = Unauthenticated(missing=True)
    # METERING_RATE_LIMIT_HOLD is 0 here: the refusal is answered at once, as it came.
    assert asyncio.run(gate.refusal(refused, lambda: None)) is refused
    assert asyncio.run(gate.refusal(other, lambda: pytest.fail("not asked"))) is other


def test_calls_are_counted_by_method_code_caller_and_protocol(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())
    shared = Admission(metrics, Authenticator(None))
    account = shared.accounting(BALANCE, GRPC, log)
    assert shared.accounting(BALANCE, GRPC, log) is account  # built once
    account(grpc.StatusCode.OK, "reader", 0.0)
    account(grpc.StatusCode.OK, "reader", 0.0)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        account(grpc.StatusCode.INTERNAL, "reader", 0.0)
    registry = metrics.registry

    def requests(code: str) -> float | None:
        labels = {"method": BALANCE, "code": code, "caller": "reader", "protocol": GRPC}
        return registry.get_sample_value("metering_grpc_requests_total", labels)

    assert requests("OK") == 2 and requests("INTERNAL") == 1
    assert (
        registry.get_sample_value("metering_grpc_request_duration_seconds_count", {"method": BALANCE, "protocol": GRPC})
        == 3
    )
    assert [r.getMessage() for r in caplog.records] == [f"{BALANCE} failed: INTERNAL"]
    untimed = shared.accounting("/s/Watch", GRPC, log, timed=False)
    untimed(grpc.StatusCode.OK, "reader", 0.0)
    assert (
        registry.get_sample_value(
            "metering_grpc_request_duration_seconds_count", {"method": "/s/Watch", "protocol": GRPC}
        )
        is None
    )
