"""Every statement of the write path is keyed by customer_id (docs/citus.md).

A service runs behind a proxy that logs the SQL it sends (tests/statement_log.py).
While the test drives every write RPC, and the closer finalizes one
customer's period (then credited), it records each statement; then each
one that names a distributed table is prepared on the database and its generic
plan (`plan_cache_mode = force_generic_plan`, `EXPLAIN (VERBOSE, FORMAT JSON)
EXECUTE`, so parameters stay parameters) is read: every scan of a distributed
table must be restricted by an equality on that table's customer_id, by its
own condition or by a join's. That is what Citus needs to route a statement to
the shards of its customers and to join co-located shards.

What it does not see (docs/citus.md, "The rule that makes it possible"): statements run by
triggers (notifications_position's notification_heads upsert, keyed by
NEW.customer_id, for a row inserted without a position: enqueue's own
statement upserts the heads since migration 0015, and is checked here) and
by foreign-key checks (every foreign key includes
customer_id: tests/integration/test_citus_schema.py); and whether a statement
keyed by an array of customers touches one shard or several (a batch of many
customers does: see the plan's "Batches across customers").
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from metering.domain.periods import add_months
from metering.v1 import (
    billing_pb2,
    customer_pb2,
    events_pb2,
    grants_pb2,
    ingest_pb2,
    invoices_pb2,
    metering_service_pb2_grpc,
    reservations_pb2,
    usage_pb2,
    wallets_pb2,
)
from tests.integration.test_citus_schema import NOT_DISTRIBUTED
from tests.statement_log import StatementLog, examine, tables_named, through, upstream_of
from tests.support import ServiceProcess, wait_for

# Slow tier: a service of its own, behind the proxy.
pytestmark = pytest.mark.slow

# The write path's RPCs run under the cheapest catalog that reaches every
# statement: each aggregation (UNIQUE_COUNT writes distinct values, LATEST
# its event), a hard limit with thresholds (notifications: the outbox), grants,
# holds, and a prepaid plan (the wallet's burn).
CATALOG = """
[meters.tokens]
aggregation = "sum"
unit = "token"
dimensions = ["region"]

[meters.users]
aggregation = "unique_count"
unit = "user"
property = "user_id"

[meters.storage]
aggregation = "latest"
unit = "GB"

[prices.tokens_per_unit]
meter = "tokens"
model = "per_unit"
currency = "USD"
unit_amount = "0.01"

[plans.limited]
currency = "USD"
[plans.limited.meters.tokens]
limit = "100"
enforcement = "hard"
price = "tokens_per_unit"
[plans.limited.meters.users]
limit = "3"
[plans.limited.meters.storage]
limit = "50"

[plans.prepaid]
prepaid = true
[plans.prepaid.meters.tokens]
price = "tokens_per_unit"
"""

# Statements that may run while the RPCs do, from the service's background
# work, not from the write path; each crosses customers on purpose and is in
# the plan's table of cross-shard statements. Matched by a fragment of text.
BACKGROUND = {
    # The closer's scan for due customers (ledger/invoicing.py due_customers).
    "closing_period_end <=": "the closer's scan: one per pass, every customer",
    "min(closing_period_end)": "the closer's backlog gauge",
    # Retention of the outbox (delivery/retention.py, ledger/outbox.py purge): every few seconds.
    "m.created_at < clock_timestamp()": "the outbox's retention: old notifications of every customer",
}


# Closing a period, quickly: a pass every 200 ms, 1 s after the period's end.
FAST_CLOSING = {"METERING_INVOICE_GRACE": "1s", "METERING_CLOSE_INTERVAL": "200ms"}


def _closing_customer(target: str) -> str:
    """A customer whose first period ended a day ago, with usage in it: the
    next closing pass finalizes its invoice."""
    customer = f"citus-close-{uuid.uuid4().hex[:8]}"
    anchor = add_months(datetime.now(UTC), -1) - timedelta(days=1)
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        request = customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="limited")
        request.billing_anchor_time.FromDatetime(anchor)
        stub.UpsertCustomer(request, timeout=10)
        event = usage_pb2.RecordUsageRequest(
            customer_id=customer, meter_slug="tokens", quantity="40", transaction_id="c1"
        )
        event.event_time.FromDatetime(anchor + timedelta(days=1))
        stub.RecordUsage(event, timeout=10)
    return customer


def _close_and_credit(target: str, customer: str) -> None:
    """The closer finalizes the customer's invoice (the service's background
    work, keyed by customer once it found the customer), then a credit note."""
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        listing = invoices_pb2.ListInvoicesRequest(customer_id=customer, status=billing_pb2.INVOICE_STATUS_FINALIZED)
        assert wait_for(lambda: len(stub.ListInvoices(listing, timeout=10).invoices) == 1, timeout=30, interval=0.2)
        [invoice] = stub.ListInvoices(listing, timeout=10).invoices
        stub.IssueCreditNote(
            invoices_pb2.IssueCreditNoteRequest(
                customer_id=customer,
                invoice_id=invoice.invoice_id,
                credit_note_id="n1",
                reason=invoices_pb2.CREDIT_NOTE_REASON_BILLING_ERROR,
                whole_invoice=True,
            ),
            timeout=10,
        )


def _write_path(target: str) -> None:
    """Every write RPC once or more, each answered OK (or refused by design where noted)."""
    run = uuid.uuid4().hex[:8]
    a, b, wallet = f"citus-a-{run}", f"citus-b-{run}", f"citus-w-{run}"
    anchor = datetime.now(UTC) - timedelta(days=3)
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)

        def upsert(customer: str, plan: str) -> None:
            request = customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug=plan)
            request.billing_anchor_time.FromDatetime(anchor)
            stub.UpsertCustomer(request, timeout=10)

        def usage(
            customer: str, meter: str, txn: str, quantity: str = "1", **properties: str
        ) -> usage_pb2.RecordUsageRequest:
            return usage_pb2.RecordUsageRequest(
                customer_id=customer, meter_slug=meter, quantity=quantity, transaction_id=txn, properties=properties
            )

        for customer, plan in ((a, "limited"), (b, "limited"), (wallet, "prepaid")):
            upsert(customer, plan)
        upsert(b, "limited")  # the same plan again: an update

        # One event, its replay, every aggregation; 85 of 100 crosses the 80% threshold (the outbox).
        stub.RecordUsage(usage(a, "tokens", "t1", "85", region="eu"), timeout=10)
        assert stub.RecordUsage(usage(a, "tokens", "t1", "85", region="eu"), timeout=10).duplicate
        stub.RecordUsage(usage(a, "users", "u1", user_id="alice"), timeout=10)
        stub.RecordUsage(usage(a, "storage", "s1", "7"), timeout=10)
        # Over the hard limit: refused, and announced (usage.limit_rejected).
        with pytest.raises(grpc.RpcError) as refused:
            stub.RecordUsage(usage(a, "tokens", "t2", "50"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # A batch of two customers, and a stream.
        batch = [usage(a, "users", "u2", user_id="bob"), usage(b, "tokens", "t1", "3"), usage(b, "storage", "s1", "1")]
        answer = stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=batch), timeout=10)
        assert [r.status.code for r in answer.results] == [0, 0, 0]
        stream = stub.RecordUsageStream(
            iter([ingest_pb2.RecordUsageStreamRequest(events=[usage(b, "tokens", f"st{i}") for i in range(3)])]),
            timeout=10,
        )
        assert stream.recorded_count == 3

        stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=a, meter_slug="tokens"), timeout=10)
        stub.VoidUsage(events_pb2.VoidUsageRequest(customer_id=b, transaction_id="t1", reason="test"), timeout=10)
        stub.VoidUsage(events_pb2.VoidUsageRequest(customer_id=a, transaction_id="u1", reason="test"), timeout=10)
        stub.GrantCredits(
            grants_pb2.GrantCreditsRequest(customer_id=b, meter_slug="tokens", quantity="10", grant_id="g1"),
            timeout=10,
        )
        for reservation in ("r1", "r2"):
            stub.ReserveUsage(
                reservations_pb2.ReserveUsageRequest(
                    customer_id=b, meter_slug="tokens", quantity="5", reservation_id=reservation
                ),
                timeout=10,
            )
        stub.CommitReservation(
            reservations_pb2.CommitReservationRequest(customer_id=b, reservation_id="r1", quantity="4"), timeout=10
        )
        stub.ReleaseReservation(
            reservations_pb2.ReleaseReservationRequest(customer_id=b, reservation_id="r2"), timeout=10
        )

        # Prepaid credit: the grant, then events that burn it.
        stub.GrantWalletCredit(
            wallets_pb2.GrantWalletCreditRequest(
                customer_id=wallet, grant_id="w1", amount=billing_pb2.Money(currency_code="USD", amount="5")
            ),
            timeout=10,
        )
        stub.RecordUsage(usage(wallet, "tokens", "w1", "20"), timeout=10)
        stub.RecordUsageBatch(
            ingest_pb2.RecordUsageBatchRequest(
                events=[usage(wallet, "tokens", "w2", "5"), usage(a, "storage", "s2", "9")]
            ),
            timeout=10,
        )


async def _tables(database_url: str) -> set[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
        )
        return {row["relname"] for row in rows}
    finally:
        await conn.close()


def test_every_statement_of_the_write_path_is_keyed_by_customer(
    make_database: Callable[[], str], tmp_path: Path
) -> None:
    database_url = make_database()
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    # The closing customer's usage lands before a service that closes periods quickly starts.
    setup = ServiceProcess(database_url, catalog=catalog).start()
    try:
        closing = _closing_customer(setup.target)
    finally:
        assert setup.stop() == 0
    with StatementLog(*upstream_of(database_url)) as log:
        service = ServiceProcess(through(database_url, log.port), catalog=catalog, extra_env=FAST_CLOSING).start()
        try:
            with log.recorded() as statements:
                _write_path(service.target)
                _close_and_credit(service.target, closing)
        finally:
            assert service.stop() == 0
    distributed = asyncio.run(_tables(database_url)) - set(NOT_DISTRIBUTED)
    assert "usage_events" in distributed
    touched = [s for s in statements if tables_named(s, distributed)]
    background = [s for s in touched if any(fragment in s for fragment in BACKGROUND)]
    write_path = [s for s in touched if s not in background]
    # The scenario reached every table the write path writes.
    reached = set().union(*(tables_named(s, distributed) for s in write_path))
    assert {
        "customers",
        "customer_plan_history",
        "usage_events",
        "usage_voids",
        "meter_counters",
        "meter_unique_values",
        "usage_rollups",
        "usage_rollup_values",
        "grants",
        "reservations",
        "notifications",
        "wallets",
        "credit_grants",
        "wallet_spend",
        "invoices",
        "credit_notes",
    } <= reached, sorted(reached)

    results = asyncio.run(examine(database_url, write_path, distributed))
    unkeyed = {re.sub(r"\s+", " ", s)[:300]: scans for s, scans in results.items() if scans}
    assert unkeyed == {}, json.dumps(unkeyed, indent=2)
    assert len(results) >= 20, f"only {len(results)} statements examined"
