"""The HTTP edge of the session's service, over real sockets with httpx: every unary
RPC over Connect JSON, binary Connect, gRPC-Web, HTTP/2 by prior knowledge, both
kinds of streaming, the plain-HTTP conventions (402, Idempotency-Key), /healthz,
CORS and the request metrics' protocol label. Authentication and rate limiting
need a service of their own: tests/integration/test_http_auth.py."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from metering.v1 import ingest_pb2, usage_pb2
from tests.http_edge import (
    SERVICE_PATH,
    call,
    details,
    end_of_stream,
    envelope,
    envelopes,
    grpc_web_status,
    grpc_web_trailers,
    ok,
    refusal_info,
)
from tests.support import ServiceProcess, metric_value

RECORD = f"{SERVICE_PATH}/RecordUsage"


@pytest.fixture(scope="module")
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.http_url, timeout=10) as client:
        yield client


def tid() -> str:
    return uuid.uuid4().hex


def record(http: httpx.Client, customer: str, quantity: str = "1", **fields: object) -> httpx.Response:
    body = {"customerId": customer, "meterSlug": "tokens", "quantity": quantity, **fields}
    return call(http, "", "RecordUsage", body)


def test_every_unary_rpc_answers_over_connect_json(
    http: httpx.Client, new_customer: Callable[..., str], service: ServiceProcess
) -> None:
    customer = f"cust-{tid()[:16]}"
    anchor = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")  # no period ended yet
    created = ok(
        call(http, "", "UpsertCustomer", {"customerId": customer, "planSlug": "limited", "billingAnchorTime": anchor})
    )
    assert created["created"] is True and created["customer"]["planSlug"] == "limited"
    assert ok(call(http, "", "GetCustomer", {"customer_id": customer}))["customer"]["customerId"] == customer
    listed = ok(call(http, "", "ListCustomers", {"planSlug": "limited", "pageSize": 1000}))
    assert customer in [c["customerId"] for c in listed["customers"]]
    catalog = ok(call(http, "", "GetCatalog", {}))
    assert "tokens" in [meter["slug"] for meter in catalog["meters"]] and len(catalog["revision"]) == 64

    first = tid()
    recorded = ok(record(http, customer, "5", transactionId=first, properties={"region": "eu"}))
    assert recorded["event"]["quantity"] == "5" and recorded["balance"]["used"] == "5"
    assert recorded.get("duplicate", False) is False

    batch = ok(
        call(
            http,
            "",
            "RecordUsageBatch",
            {"events": [{"customerId": customer, "meterSlug": "tokens", "quantity": "2", "transactionId": tid()}]},
        )
    )
    assert batch["results"][0]["response"]["event"]["quantity"] == "2"

    grant = ok(
        call(
            http,
            "",
            "GrantCredits",
            {"customerId": customer, "meterSlug": "tokens", "quantity": "10", "grantId": tid()},
        )
    )
    assert grant["grant"]["quantity"] == "10"
    assert len(ok(call(http, "", "ListGrants", {"customerId": customer}))["grants"]) == 1

    hold = ok(
        call(
            http,
            "",
            "ReserveUsage",
            {"customerId": customer, "meterSlug": "tokens", "quantity": "4", "reservationId": tid()},
        )
    )
    reservation = hold["reservation"]["reservationId"]
    assert hold["balance"]["reserved"] == "4"
    committed = ok(
        call(http, "", "CommitReservation", {"customerId": customer, "reservationId": reservation, "quantity": "3"})
    )
    assert committed["event"]["transactionId"] == reservation
    other = ok(
        call(
            http,
            "",
            "ReserveUsage",
            {"customerId": customer, "meterSlug": "tokens", "quantity": "1", "reservationId": tid()},
        )
    )
    released = ok(
        call(
            http,
            "",
            "ReleaseReservation",
            {"customerId": customer, "reservationId": other["reservation"]["reservationId"]},
        )
    )
    assert released["reservation"]["status"] == "RESERVATION_STATUS_RELEASED"

    voided = ok(call(http, "", "VoidUsage", {"customerId": customer, "transactionId": first, "reason": "test"}))
    assert voided["event"]["transactionId"] == first

    balance = ok(call(http, "", "CheckBalance", {"customerId": customer, "meterSlug": "tokens"}))
    assert balance["balances"][0]["used"] == "5"  # 2 + 3, the 5 voided
    now = datetime.now(UTC)
    usage = ok(
        call(
            http,
            "",
            "GetUsage",
            {
                "customerId": customer,
                "meterSlugs": ["tokens"],
                "startTime": (now - timedelta(days=1)).isoformat().replace("+00:00", "Z"),
                "endTime": (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                "windowSize": "WINDOW_SIZE_DAY",
            },
        )
    )
    assert "rows" in usage
    events = ok(call(http, "", "ListUsageEvents", {"customerId": customer}))
    assert {event["transactionId"] for event in events["events"]} >= {reservation}
    bill = ok(call(http, "", "EstimateBill", {"customerId": customer}))
    assert bill["customerId"] == customer
    assert ok(call(http, "", "ListInvoices", {"customerId": customer})).get("invoices", []) == []
    missing = call(http, "", "GetInvoice", {"invoiceId": str(uuid.uuid4())})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert refusal_info(missing).reason == "INVOICE_NOT_FOUND"


def test_binary_connect_and_http2_by_prior_knowledge(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug="tokens", quantity="3", transaction_id=tid()
    )
    with httpx.Client(http1=False, http2=True, timeout=10) as h2:
        answer = h2.post(
            f"{service.http_url}{RECORD}",
            content=request.SerializeToString(),
            headers={"content-type": "application/proto"},
        )
    assert answer.http_version == "HTTP/2"
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/proto"
    assert usage_pb2.RecordUsageResponse.FromString(answer.content).balance.used == "3"


def test_grpc_web_carries_the_answer_and_the_refusal_in_its_frames(
    http: httpx.Client, new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug="tokens", quantity="99", transaction_id=tid()
    )
    answer = http.post(RECORD, content=envelope(request), headers=headers)
    [(_, message), (flags, trailer)] = list(envelopes(answer.content))
    assert answer.status_code == 200 and flags == 0x80
    assert usage_pb2.RecordUsageResponse.FromString(message).balance.available == "1"
    assert grpc_web_trailers(trailer)["grpc-status"] == "0"

    over = usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity="2", transaction_id=tid())
    refused = http.post(RECORD, content=envelope(over), headers=headers)
    assert refused.status_code == 200  # gRPC-Web's status is in its trailers, whatever the refusal
    [(flags, trailer)] = list(envelopes(refused.content))
    trailers = grpc_web_trailers(trailer)
    assert trailers["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
    status = grpc_web_status(trailers)
    assert [d.type_url.rsplit(".", 1)[-1] for d in status.details] == ["ErrorInfo", "QuotaFailure"]


def test_over_the_limit_is_402_with_the_same_details_as_grpc(
    http: httpx.Client, new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    assert record(http, customer, "90", transactionId=tid()).status_code == 200
    refused = record(http, customer, "20", transactionId=tid())
    assert refused.status_code == 402
    assert refused.json()["code"] == "resource_exhausted"
    found = details(refused)
    info = found["ErrorInfo"]
    assert info.reason == "LIMIT_EXCEEDED"  # type: ignore[attr-defined]
    assert dict(info.metadata) | {"period_end": ""} == {  # type: ignore[attr-defined]
        "meter": "tokens",
        "plan": "limited",
        "limit": "100",
        "available": "10",
        "requested": "20",
        "period_end": "",
    }
    assert found["QuotaFailure"].violations[0].subject == "meter:tokens"  # type: ignore[attr-defined]
    # For people reading the body: each detail's `debug` JSON.
    debug = refused.json()["details"][0]["debug"]
    assert debug["reason"] == "LIMIT_EXCEEDED" and debug["metadata"]["requested"] == "20"
    assert "retry-after" not in refused.headers  # a limit is not a wait


def test_the_idempotency_key_header_is_the_transaction_id(http: httpx.Client, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    key = tid()
    first = ok(
        call(
            http,
            "",
            "RecordUsage",
            {"customerId": customer, "meterSlug": "tokens", "quantity": "1"},
            {"Idempotency-Key": key},
        )
    )
    assert first["event"]["transactionId"] == key and not first.get("duplicate", False)
    # The same id in the body and the header: fine, and a replay is a duplicate.
    body = {"customerId": customer, "meterSlug": "tokens", "quantity": "1", "transactionId": key}
    same = ok(call(http, "", "RecordUsage", body, {"Idempotency-Key": key}))
    assert same["duplicate"] is True and same["event"]["eventId"] == first["event"]["eventId"]
    replay = ok(
        call(
            http,
            "",
            "RecordUsage",
            {"customerId": customer, "meterSlug": "tokens", "quantity": "1"},
            {"Idempotency-Key": key},
        )
    )
    assert replay["duplicate"] is True

    different = call(
        http,
        "",
        "RecordUsage",
        {"customerId": customer, "meterSlug": "tokens", "quantity": "1", "transactionId": tid()},
        {"Idempotency-Key": key},
    )
    assert different.status_code == 400 and different.json()["code"] == "invalid_argument"
    [violation] = details(different)["BadRequest"].field_violations  # type: ignore[attr-defined]
    assert violation.field == "transaction_id" and "Idempotency-Key" in violation.description
    # Nothing was written by the refused call.
    events = ok(call(http, "", "ListUsageEvents", {"customerId": customer}))["events"]
    assert [event["transactionId"] for event in events] == [key]

    # The key is checked as the body's id would be.
    invalid = call(
        http, "", "RecordUsage", {"customerId": customer, "meterSlug": "tokens"}, {"Idempotency-Key": "has space"}
    )
    assert invalid.status_code == 400
    assert details(invalid)["BadRequest"].field_violations[0].field == "transaction_id"  # type: ignore[attr-defined]

    # ReserveUsage and GrantCredits take it too.
    hold = ok(
        call(
            http,
            "",
            "ReserveUsage",
            {"customerId": customer, "meterSlug": "tokens", "quantity": "1"},
            {"Idempotency-Key": key + "-r"},
        )
    )
    assert hold["reservation"]["reservationId"] == key + "-r"
    grant = ok(
        call(
            http,
            "",
            "GrantCredits",
            {"customerId": customer, "meterSlug": "tokens", "quantity": "1"},
            {"Idempotency-Key": key + "-g"},
        )
    )
    assert grant["grant"]["grantId"] == key + "-g"


def test_a_misspelled_json_field_is_refused_not_dropped(http: httpx.Client, new_customer: Callable[..., str]) -> None:
    answer = call(
        http, "", "RecordUsage", {"customerId": new_customer(), "meterSlug": "tokens", "transactionID": tid()}
    )
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_argument"


def test_client_streaming_records_every_message_over_http2(
    service: ServiceProcess, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="open")
    messages = [
        ingest_pb2.RecordUsageStreamRequest(
            events=[
                usage_pb2.RecordUsageRequest(
                    customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=tid()
                )
            ]
        )
        for _ in range(3)
    ]
    with httpx.Client(http1=False, http2=True, timeout=10) as h2:
        answer = h2.post(
            f"{service.http_url}{SERVICE_PATH}/RecordUsageStream",
            content=b"".join(envelope(m) for m in messages),
            headers={"content-type": "application/connect+proto", "connect-protocol-version": "1"},
        )
    assert answer.status_code == 200
    [(flags, summary), (end_flags, end)] = list(envelopes(answer.content))
    assert (flags, end_flags) == (0, 0x02) and end_of_stream(end) == {}
    assert ingest_pb2.RecordUsageStreamResponse.FromString(summary).recorded_count == 3


def test_server_streaming_watches_notifications(
    service: ServiceProcess, http: httpx.Client, new_customer: Callable[..., str]
) -> None:
    # A customer's first refusal in a period writes a notification (one per meter and period).
    request = json.dumps({"types": ["NOTIFICATION_TYPE_USAGE_LIMIT_REJECTED"]}).encode()
    customers: set[str] = set()
    received: list[dict[str, Any]] = []
    done = threading.Event()

    def watch() -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST",
                f"{service.http_url}{SERVICE_PATH}/WatchNotifications",
                content=envelope(request),
                headers={"content-type": "application/connect+json", "connect-timeout-ms": "20000"},
            ) as stream,
        ):
            buffer = b""
            for chunk in stream.iter_bytes():
                buffer += chunk
                while len(buffer) >= 5 and len(buffer) >= 5 + int.from_bytes(buffer[1:5], "big"):
                    size = int.from_bytes(buffer[1:5], "big")
                    flags, payload, buffer = buffer[0], buffer[5 : 5 + size], buffer[5 + size :]
                    if flags == 0 and json.loads(payload)["notification"]["customerId"] in customers:
                        received.append(json.loads(payload))
                        done.set()
                        return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # The watch starts from the notifications committed after it began: refuse
    # new customers' events until one of them reaches it.
    for _ in range(40):
        customer = new_customer(plan="zero")
        customers.add(customer)
        assert record(http, customer, "1", transactionId=tid()).status_code == 402
        if done.wait(0.25):
            break
    assert done.wait(5), "no notification reached the Connect stream"
    watcher.join(5)
    notification = received[0]["notification"]
    assert notification["customerId"] in customers
    assert notification["type"] == "NOTIFICATION_TYPE_USAGE_LIMIT_REJECTED"
    assert notification["limitRejected"]["meterSlug"] == "tokens"


def test_healthz_says_serving(http: httpx.Client) -> None:
    answer = http.get("/healthz")
    assert (answer.status_code, answer.text) == (200, "SERVING\n")


def test_browsers_are_refused_without_configured_origins(http: httpx.Client) -> None:
    preflight = http.options(
        RECORD, headers={"origin": "https://app.example.com", "access-control-request-method": "POST"}
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers


def test_connect_calls_are_counted_with_their_protocol(
    service: ServiceProcess, http: httpx.Client, new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    labels = {"method": RECORD, "caller": "anonymous"}

    def count(code: str, protocol: str) -> float:
        return metric_value(service.scrape(), "metering_grpc_requests_total", code=code, protocol=protocol, **labels)

    before = {(c, p): count(c, p) for c in ("OK", "INVALID_ARGUMENT") for p in ("connect", "grpc-web")}
    assert record(http, customer, "1", transactionId=tid()).status_code == 200
    assert record(http, customer, "-1", transactionId=tid()).status_code == 400
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=tid()
    )
    http.post(RECORD, content=envelope(request), headers={"content-type": "application/grpc-web+proto"})
    assert count("OK", "connect") - before[("OK", "connect")] == 1
    assert count("INVALID_ARGUMENT", "connect") - before[("INVALID_ARGUMENT", "connect")] == 1
    assert count("OK", "grpc-web") - before[("OK", "grpc-web")] == 1
    text = service.scrape()
    assert metric_value(text, "metering_grpc_request_duration_seconds_count", method=RECORD, protocol="connect") >= 2
