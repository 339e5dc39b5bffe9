"""The outbox end to end: real PostgreSQL, real `metering serve` processes, a
real HTTP receiver on 127.0.0.1 (tests/receiver.py).

Each test has a database of its own, so the notifications it sees are its own.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from standardwebhooks.webhooks import Webhook

from metering.domain.notifications import Position
from metering.v1 import customer_pb2, events_pb2, metering_service_pb2_grpc, notifications_pb2, reservations_pb2
from tests.receiver import Received, webhook_receiver
from tests.support import ServiceProcess, calls_across, page_tokens_of, run_sql, usage_request, wait_for

# Slow tier: services of their own delivering to webhook receivers.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
THRESHOLD = "usage.threshold_crossed"
REJECTED = "usage.limit_rejected"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def webhooks_file(tmp_path: Path, name: str, url: str, secrets: list[str], types: list[str]) -> Path:
    path = tmp_path / f"webhooks-{name}.toml"
    quoted = ", ".join(f'"{s}"' for s in secrets)
    kinds = ", ".join(f'"{t}"' for t in types)
    path.write_text(f'[endpoints.{name}]\nurl = "{url}"\nsecrets = [{quoted}]\ntypes = [{kinds}]\n')
    return path


@pytest.fixture
def database(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture
def services() -> Iterator[list[ServiceProcess]]:
    """Processes a test starts; all stopped at its end (those it killed already are)."""
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


def start(services: list[ServiceProcess], database: str, **env: str) -> ServiceProcess:
    process = ServiceProcess(database, extra_env={"METERING_NOTIFICATION_POLL": "200ms", **env}).start()
    services.append(process)
    return process


def customer(target: str, plan: str = "limited") -> str:
    customer_id = f"out-{uuid.uuid4().hex[:12]}"
    with grpc.insecure_channel(target) as channel:
        Stub(channel).UpsertCustomer(
            customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug=plan), timeout=10
        )
    return customer_id


def record(target: str, customer_id: str, transaction_id: str, quantity: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        try:
            Stub(channel).RecordUsage(usage_request(customer_id, transaction_id, quantity), timeout=30)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def notifications(database: str, customer_id: str) -> list[tuple[str, str]]:
    """(type, dedupe key) of the customer's notifications, in outbox order."""
    rows = run_sql(
        database,
        "SELECT type, dedupe_key FROM notifications WHERE customer_id = $1 ORDER BY txid, seq",
        customer_id,
    )
    return [(row["type"], row["dedupe_key"]) for row in rows]


def thresholds(database: str, customer_id: str) -> list[str]:
    rows = run_sql(
        database,
        "SELECT payload->>'threshold_percent' AS t FROM notifications "
        "WHERE customer_id = $1 AND type = $2 ORDER BY txid, seq",
        customer_id,
        THRESHOLD,
    )
    return [row["t"] for row in rows]


# -- written once, with the change, or not at all ------------------------------------


def test_64_writers_on_two_replicas_announce_each_threshold_once(database: str, services: list[ServiceProcess]) -> None:
    replicas = [start(services, database), start(services, database)]
    customer_id = customer(replicas[0].target)
    # 64 concurrent writers of 2 tokens each against a hard limit of 100: 50
    # fit, 14 are refused; usage passes 80% and 100% once, somewhere in there.
    requests = [usage_request(customer_id, f"w{i}", "2") for i in range(64)]
    codes = calls_across(replicas, "RecordUsage", requests)
    accepted = [f"w{i}" for i, code in enumerate(codes) if code == grpc.StatusCode.OK]
    assert len(accepted) == 50
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 14
    assert sorted(thresholds(database, customer_id)) == ["100", "80"]
    kinds = [kind for kind, _ in notifications(database, customer_id)]
    assert sorted(kinds) == [REJECTED, THRESHOLD, THRESHOLD]
    # A second wave, and a void back under 80% and over it again: nothing new.
    codes = calls_across(replicas, "RecordUsage", [usage_request(customer_id, f"x{i}", "2") for i in range(64)])
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    with grpc.insecure_channel(replicas[1].target) as channel:
        stub = Stub(channel)
        for transaction_id in accepted[:15]:  # 100 - 30 = 70%
            request = events_pb2.VoidUsageRequest(customer_id=customer_id, transaction_id=transaction_id, reason="test")
            stub.VoidUsage(request, timeout=10)
    assert record(replicas[0].target, customer_id, "again", "20") == grpc.StatusCode.OK  # 90%
    assert len(notifications(database, customer_id)) == 3
    for replica in replicas:
        text = replica.scrape()
        assert "metering_notifications_written_total" in text


def test_a_refused_or_rolled_back_write_announces_nothing(database: str, services: list[ServiceProcess]) -> None:
    service = start(services, database)
    refused = customer(service.target)
    # Refused by the hard limit (100): only the refusal is announced, once a period.
    assert record(service.target, refused, "big", "150") == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert record(service.target, refused, "big2", "101") == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [kind for kind, _ in notifications(database, refused)] == [REJECTED]
    # Refused before any decision (unknown customer): nothing at all.
    assert record(service.target, "no-such-customer", "t", "90") == grpc.StatusCode.NOT_FOUND
    assert notifications(database, "no-such-customer") == []

    # Rolled back: the transaction that wrote the 80% notification fails at
    # its commit (a deferred constraint trigger installed for this customer).
    rolled = customer(service.target)
    run_sql(
        database,
        f"""
        CREATE FUNCTION test_fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.customer_id = '{rolled}' THEN RAISE EXCEPTION 'test: this commit fails'; END IF;
            RETURN NULL;
        END $$
        """,
    )
    run_sql(
        database,
        "CREATE CONSTRAINT TRIGGER test_fail_commit AFTER INSERT ON notifications "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_commit()",
    )
    try:
        assert record(service.target, rolled, "t1", "90") == grpc.StatusCode.INTERNAL
        assert notifications(database, rolled) == []
        assert run_sql(database, "SELECT 1 FROM usage_events WHERE customer_id = $1", rolled) == []
    finally:
        run_sql(database, "DROP TRIGGER test_fail_commit ON notifications")
        run_sql(database, "DROP FUNCTION test_fail_commit()")
    # The client's retry with the same transaction id writes both, once.
    assert record(service.target, rolled, "t1", "90") == grpc.StatusCode.OK
    assert thresholds(database, rolled) == ["80"]


def test_a_reservation_commit_announces_the_thresholds_it_crosses(
    database: str, services: list[ServiceProcess]
) -> None:
    service = start(services, database)
    customer_id = customer(service.target)
    with grpc.insecure_channel(service.target) as channel:
        stub = Stub(channel)
        stub.ReserveUsage(
            reservations_pb2.ReserveUsageRequest(
                customer_id=customer_id, reservation_id="r1", meter_slug="tokens", quantity="100"
            ),
            timeout=10,
        )
        assert thresholds(database, customer_id) == []  # a hold is not usage
        stub.CommitReservation(
            reservations_pb2.CommitReservationRequest(customer_id=customer_id, reservation_id="r1", quantity="85"),
            timeout=10,
        )
        assert thresholds(database, customer_id) == ["80"]
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReserveUsage(
                reservations_pb2.ReserveUsageRequest(
                    customer_id=customer_id, reservation_id="r2", meter_slug="tokens", quantity="50"
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [kind for kind, _ in notifications(database, customer_id)] == [THRESHOLD, REJECTED]


# -- webhooks --------------------------------------------------------------------------


def verified(received: Received, secret: str) -> dict[str, object]:
    """The body, once the standardwebhooks library accepted its signature."""
    payload = Webhook(secret).verify(received.body, received.headers)
    assert isinstance(payload, dict)
    return payload


def test_webhooks_retry_until_2xx_signed_and_in_order_per_customer(
    database: str, services: list[ServiceProcess], tmp_path: Path
) -> None:
    old_secret, new_secret_ = new_secret(), new_secret()
    failing: set[str] = set()
    failures: dict[str, int] = {}

    def answer(headers: dict[str, str], body: bytes, before: int) -> int:
        # The failing customer's notifications fail their first two attempts.
        customer_id = str(json.loads(body)["customerId"])
        if customer_id in failing and failures.get(headers["webhook-id"], 0) < 2:
            failures[headers["webhook-id"]] = failures.get(headers["webhook-id"], 0) + 1
            return 503
        return 204

    with webhook_receiver(answer) as receiver:
        path = webhooks_file(tmp_path, "billing", receiver.url, [old_secret, new_secret_], [THRESHOLD])
        service = start(
            services,
            database,
            METERING_WEBHOOKS_FILE=str(path),
            METERING_WEBHOOK_RETRY_SCHEDULE="0s,1s,1s,1s",
        )
        time.sleep(1.0)  # the endpoint's cursor is created ("from now") by its first lease
        slow, fast = customer(service.target), customer(service.target)
        failing.add(slow)
        assert record(service.target, slow, "s1", "85") == grpc.StatusCode.OK  # 80%
        assert record(service.target, slow, "s2", "15") == grpc.StatusCode.OK  # 100%
        assert record(service.target, fast, "f1", "100") == grpc.StatusCode.OK  # 80% and 100% at once
        assert receiver.wait(lambda r: len(r.delivered()) == 4, timeout=60), receiver.requests

        delivered = receiver.delivered()
        for received in delivered:
            # Either secret verifies (one signature each, while they rotate).
            assert verified(received, old_secret) == verified(received, new_secret_)
            assert received.notification["id"] == received.webhook_id
            assert received.notification["type"] == THRESHOLD  # the dotted name, as the webhooks file spells it
        by_customer = {
            c: [
                r.notification["thresholdCrossed"]["thresholdPercent"]
                for r in delivered
                if r.notification["customerId"] == c
            ]
            for c in (slow, fast)
        }
        assert by_customer == {slow: ["80", "100"], fast: ["80", "100"]}
        # The slow customer's 80% failed twice before it was delivered, and its
        # 100% was not sent before that; the fast customer was not held back.
        slow_attempts = [r for r in receiver.requests if r.notification["customerId"] == slow]
        assert [(r.notification["thresholdCrossed"]["thresholdPercent"], r.status) for r in slow_attempts] == [
            ("80", 503),
            ("80", 503),
            ("80", 204),
            ("100", 503),
            ("100", 503),
            ("100", 204),
        ]
        first_fast = next(i for i, r in enumerate(receiver.requests) if r.notification["customerId"] == fast)
        last_slow = max(i for i, r in enumerate(receiver.requests) if r.notification["customerId"] == slow)
        assert first_fast < last_slow
        assert wait_for(lambda: not run_sql(database, "SELECT 1 FROM webhook_deliveries"), timeout=10)
        text = service.scrape()
        assert 'metering_webhook_attempts_total{endpoint="billing",outcome="refused"} 4.0' in text
        assert 'metering_webhook_attempts_total{endpoint="billing",outcome="delivered"} 4.0' in text


def test_dead_letters_are_counted_and_replayed(database: str, services: list[ServiceProcess], tmp_path: Path) -> None:
    secret = new_secret()
    up = threading.Event()
    with webhook_receiver(lambda headers, body, before: 200 if up.is_set() else 500) as receiver:
        path = webhooks_file(tmp_path, "crm", receiver.url, [secret], [THRESHOLD, REJECTED])
        env = {"METERING_WEBHOOKS_FILE": str(path), "METERING_WEBHOOK_RETRY_SCHEDULE": "0s,200ms"}
        service = start(services, database, **env)
        time.sleep(1.0)
        customer_id = customer(service.target)
        assert record(service.target, customer_id, "t1", "90") == grpc.StatusCode.OK
        assert wait_for(lambda: run_sql(database, "SELECT 1 FROM webhook_deliveries WHERE status = 'dead'"), 30)
        assert len(receiver.requests) == 2
        assert 'metering_webhook_dead_letters_total{endpoint="crm"} 1.0' in service.scrape()
        up.set()
        replay = subprocess.run(
            [sys.executable, "-m", "metering", "webhooks", "replay", "--endpoint", "crm"],
            env={**os.environ, "METERING_DATABASE_URL": database, "METERING_WEBHOOKS_FILE": str(path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert replay.returncode == 0, replay.stderr
        assert "1 dead letters queued again" in replay.stdout
        assert receiver.wait(lambda r: len(r.delivered()) == 1, timeout=30)
        ids = {r.webhook_id for r in receiver.requests}
        assert len(ids) == 1  # the same notification, the same webhook-id
        verified(receiver.delivered()[0], secret)


def test_a_killed_replicas_delivery_is_resumed_with_the_same_id(
    database: str, services: list[ServiceProcess], tmp_path: Path
) -> None:
    secret = new_secret()
    release = threading.Event()

    def answer(headers: dict[str, str], body: bytes, before: int) -> int:
        if before == 0:
            release.wait(30)  # the first attempt stalls while its replica is killed
        return 200

    with webhook_receiver(answer) as receiver:
        path = webhooks_file(tmp_path, "ledger", receiver.url, [secret], [THRESHOLD])
        env = {"METERING_WEBHOOKS_FILE": str(path), "METERING_WEBHOOK_LEASE": "2s"}
        first = start(services, database, **env)
        time.sleep(1.0)
        customer_id = customer(first.target)
        assert record(first.target, customer_id, "t1", "90") == grpc.StatusCode.OK
        assert receiver.wait(lambda r: len(r.arrivals) == 1, timeout=30)
        assert first.process is not None
        first.process.kill()  # SIGKILL mid-delivery: no answer read, nothing marked
        first.process.wait(10)
        release.set()
        start(services, database, **env)  # takes the endpoint over once the lease lapses
        assert receiver.wait(lambda r: len(r.delivered()) >= 1 and len(r.arrivals) >= 2, timeout=60)
        ids = {r.webhook_id for r in receiver.arrivals}
        stored = run_sql(database, "SELECT notification_id FROM notifications WHERE customer_id = $1", customer_id)
        assert ids == {str(stored[0]["notification_id"])}
        for received in receiver.requests:
            verified(received, secret)
        assert wait_for(lambda: not run_sql(database, "SELECT 1 FROM webhook_deliveries"), timeout=10)


def test_a_bad_webhooks_file_refuses_start_up(database: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[endpoints.a]\nurl = "ftp://example.com/x"\nsecrets = ["nope"]\ntypes = ["usage.nothing"]\n'
        '[endpoints.b]\nurl = "https://example.com/x"\nsecrets = ["whsec_'
        + base64.b64encode(b"k" * 32).decode()
        + '"]\n'
    )
    process = ServiceProcess(database, extra_env={"METERING_WEBHOOKS_FILE": str(path)})
    with pytest.raises(RuntimeError) as refused:
        process.start(timeout=30)
    output = str(refused.value)
    for key in ("endpoints.a.url", "endpoints.a.secrets[0]", "endpoints.a.types", "endpoints.b.types"):
        assert key in output


def test_retention_deletes_what_every_endpoint_received(database: str, services: list[ServiceProcess]) -> None:
    service = start(services, database, METERING_NOTIFICATION_RETENTION="1s")
    customer_id = customer(service.target)
    assert record(service.target, customer_id, "t1", "90") == grpc.StatusCode.OK
    assert notifications(database, customer_id)
    assert wait_for(lambda: not notifications(database, customer_id), timeout=30)


# -- the watch stream ------------------------------------------------------------------


def watch(target: str, cursor: str, count: int, **filters: object) -> list[notifications_pb2.Notification]:
    """The first `count` notifications of a watch from `cursor`, then disconnect."""
    seen: list[notifications_pb2.Notification] = []
    with grpc.insecure_channel(target) as channel:
        request = notifications_pb2.WatchNotificationsRequest(cursor=cursor, **filters)  # type: ignore[arg-type]
        call = Stub(channel).WatchNotifications(request, timeout=60)
        for message in call:
            seen.append(message.notification)
            if len(seen) == count:
                call.cancel()  # type: ignore[no-untyped-call]
                break
    return seen


def test_a_watch_resumed_from_its_cursor_sees_everything_once_across_a_restart(
    database: str, services: list[ServiceProcess]
) -> None:
    first, second = start(services, database), start(services, database)
    # A notification of another customer: its cursor is where the watch starts.
    setup = customer(first.target)
    assert record(first.target, setup, "t1", "90") == grpc.StatusCode.OK
    stored = run_sql(database, "SELECT txid::text AS txid, seq FROM notifications WHERE customer_id = $1", setup)
    start_cursor = page_tokens_of(database).cursor(Position(int(stored[0]["txid"]), stored[0]["seq"]))

    customers = [customer(first.target) for _ in range(6)]
    for index, customer_id in enumerate(customers):
        target = (first, second)[index % 2].target
        assert record(target, customer_id, "t1", "100") == grpc.StatusCode.OK  # 80% and 100%
    seen = watch(first.target, start_cursor, 5)
    first.stop()  # a replica restarts while the consumer is away
    more = [customer(second.target) for _ in range(3)]
    for customer_id in more:
        assert record(second.target, customer_id, "t1", "100") == grpc.StatusCode.OK
    restarted = start(services, database)
    seen += watch(restarted.target, seen[-1].cursor, 12 + 6 - 5)

    ours = customers + more
    rows = run_sql(
        database,
        "SELECT notification_id::text AS id FROM notifications WHERE customer_id = ANY($1::text[]) ORDER BY txid, seq",
        ours,
    )
    assert [n.id for n in seen] == [row["id"] for row in rows]
    assert len({n.id for n in seen}) == 18
    # Filters: one customer, one type.
    only = watch(
        second.target,
        start_cursor,
        1,
        customer_id=more[0],
        types=[notifications_pb2.NOTIFICATION_TYPE_USAGE_THRESHOLD_CROSSED],
    )
    assert only[0].customer_id == more[0]
    assert only[0].threshold_crossed.threshold_percent == "80"


def test_a_watch_from_now_sees_new_notifications_and_refuses_a_bad_cursor(
    database: str, services: list[ServiceProcess]
) -> None:
    service = start(services, database)
    customer_id = customer(service.target)
    result: list[notifications_pb2.Notification] = []
    watcher = threading.Thread(target=lambda: result.extend(watch(service.target, "", 2, customer_id=customer_id)))
    watcher.start()
    time.sleep(1.0)  # the watch has started: "now" is before the write below
    assert record(service.target, customer_id, "t1", "100") == grpc.StatusCode.OK
    watcher.join(30)
    assert [n.threshold_crossed.threshold_percent for n in result] == ["80", "100"]
    assert all(n.cursor for n in result)
    with grpc.insecure_channel(service.target) as channel:
        call = Stub(channel).WatchNotifications(
            notifications_pb2.WatchNotificationsRequest(cursor="garbage"), timeout=10
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(call))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
