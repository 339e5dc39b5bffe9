"""Watch cursors are signed: the shared service refuses every single-character
change of a cursor it issued, and resumes exactly from the cursor itself."""

from __future__ import annotations

import asyncio
import base64
import string
from collections.abc import Callable

import grpc
import pytest

from metering.domain.notifications import Position
from metering.v1 import metering_service_pb2_grpc, notifications_pb2
from tests.support import ServiceProcess, page_tokens_of, record, run_sql, violations

Stub = metering_service_pb2_grpc.MeteringServiceStub
# What a cursor could be mistyped into: base64url's alphabet, standard base64's, padding.
ALPHABET = string.ascii_letters + string.digits + "-_+/="


def first_notifications(stub: Stub, customer: str, cursor: str, count: int) -> list[notifications_pb2.Notification]:
    request = notifications_pb2.WatchNotificationsRequest(cursor=cursor, customer_id=customer)
    call = stub.WatchNotifications(request, timeout=30)
    seen: list[notifications_pb2.Notification] = []
    for message in call:
        seen.append(message.notification)
        if len(seen) == count:
            call.cancel()  # type: ignore[no-untyped-call]
            break
    return seen


def outbox(database_url: str, customer: str) -> list[tuple[str, Position]]:
    rows = run_sql(
        database_url,
        "SELECT notification_id::text AS id, txid::text::bigint AS txid, seq FROM notifications "
        "WHERE customer_id = $1 ORDER BY txid, seq",
        customer,
    )
    return [(row["id"], Position(row["txid"], row["seq"])) for row in rows]


@pytest.fixture
def issued(stub: Stub, new_customer: Callable[..., str], database_url: str) -> tuple[str, str, list[str]]:
    """A customer with three notifications (tokens at 80% and 100%, then a
    refusal), the cursor the service issued for the first, and their ids."""
    customer = new_customer()
    record(stub, customer, "t1", "100")
    with pytest.raises(grpc.RpcError):
        record(stub, customer, "t2", "1")
    ids = [notification_id for notification_id, _ in outbox(database_url, customer)]
    assert len(ids) == 3
    # The service's stream, from just before the first (a position signed with its key).
    before = page_tokens_of(database_url).cursor(Position(outbox(database_url, customer)[0][1].txid - 1, 0))
    [first] = first_notifications(stub, customer, before, 1)
    assert first.id == ids[0]
    return customer, first.cursor, ids


def test_a_cursor_resumes_right_after_its_notification(stub: Stub, issued: tuple[str, str, list[str]]) -> None:
    customer, cursor, ids = issued
    assert cursor.startswith("n2_")
    assert [n.id for n in first_notifications(stub, customer, cursor, 2)] == ids[1:]


def test_every_single_character_change_of_a_real_cursor_is_refused(
    service: ServiceProcess, issued: tuple[str, str, list[str]]
) -> None:
    _, cursor, _ = issued
    mutations = [
        cursor[:index] + replacement + cursor[index + 1 :]
        for index, original in enumerate(cursor)
        for replacement in ALPHABET
        if replacement != original
    ]
    mutations += [cursor[:index] + cursor[index + 1 :] for index in range(len(cursor))]  # one dropped

    async def refusals() -> list[grpc.aio.AioRpcError]:
        async with grpc.aio.insecure_channel(service.target) as aio:
            stub = Stub(aio)
            limit = asyncio.Semaphore(32)

            async def watch(mutated: str) -> grpc.aio.AioRpcError:
                async with limit:
                    call = stub.WatchNotifications(notifications_pb2.WatchNotificationsRequest(cursor=mutated))
                    try:
                        async for _ in call:
                            raise AssertionError(f"a changed cursor was accepted: {mutated}")
                    except grpc.aio.AioRpcError as error:
                        return error
                    raise AssertionError(f"a changed cursor ended without an answer: {mutated}")

            return await asyncio.gather(*(watch(m) for m in mutations))

    errors = asyncio.run(refusals())
    assert len(errors) == len(mutations) == len(cursor) * len(ALPHABET)  # each position: 66 changes, 1 drop
    for error in errors:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violation] = violations(error)
        assert violation.field == "cursor"


def test_an_unsigned_cursor_of_the_previous_version_still_resumes(
    stub: Stub, issued: tuple[str, str, list[str]], database_url: str
) -> None:
    customer, _, ids = issued
    _, position = outbox(database_url, customer)[0]
    legacy = "n1_" + base64.urlsafe_b64encode(f"{position.txid}.{position.seq}".encode()).decode().rstrip("=")
    resumed = first_notifications(stub, customer, legacy, 2)
    assert [n.id for n in resumed] == ids[1:]
    assert all(n.cursor.startswith("n2_") for n in resumed)  # and from then on it holds signed ones
