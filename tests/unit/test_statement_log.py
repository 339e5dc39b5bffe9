"""The write-path check's pure parts (tests/statement_log.py): reading a
statement out of a frontend message, and finding the scans of distributed
tables that no condition keys by customer_id in an EXPLAIN (VERBOSE) plan."""

from __future__ import annotations

import struct
from typing import Any

from tests.statement_log import statement_of, tables_named, through, unkeyed_scans, upstream_of

DISTRIBUTED = frozenset({"usage_events", "usage_voids", "customers", "grants"})


def _scan(relation: str, alias: str, node: str = "Seq Scan", **conditions: Any) -> dict[str, Any]:
    return {"Node Type": node, "Relation Name": relation, "Alias": alias, **conditions}


def test_parse_and_query_messages_give_their_statement_and_others_none() -> None:
    parse = b"stmt_1\0SELECT 1 FROM customers WHERE customer_id = $1\0" + struct.pack("!h", 0)
    assert statement_of(b"P", parse) == "SELECT 1 FROM customers WHERE customer_id = $1"
    assert statement_of(b"P", b"\0SELECT 2\0\0\0") == "SELECT 2"  # the unnamed statement
    assert statement_of(b"Q", b"BEGIN;\0") == "BEGIN;"
    assert statement_of(b"B", b"\0stmt_1\0\0\0") is None


def test_tables_are_named_by_whole_words() -> None:
    assert tables_named("SELECT * FROM usage_events e", DISTRIBUTED) == {"usage_events"}
    assert tables_named("SELECT * FROM usage_events_archive", DISTRIBUTED) == set()


def test_a_scan_keyed_by_its_own_condition_passes() -> None:
    plan = _scan("customers", "customers", "Index Scan", **{"Index Cond": "(customers.customer_id = $1)"})
    assert unkeyed_scans(plan, DISTRIBUTED) == []
    plan = _scan("customers", "c", **{"Filter": "(c.customer_id = ANY ($1))"})
    assert unkeyed_scans(plan, DISTRIBUTED) == []


def test_a_scan_keyed_only_by_the_join_above_it_passes() -> None:
    plan = {
        "Node Type": "Hash Join",
        "Hash Cond": "((v.customer_id = e.customer_id) AND (v.event_id = e.event_id))",
        "Plans": [
            _scan("usage_voids", "v"),
            {"Node Type": "Hash", "Plans": [_scan("usage_events", "e", **{"Filter": "(e.customer_id = $1)"})]},
        ],
    }
    assert unkeyed_scans(plan, DISTRIBUTED) == []


def test_a_bitmap_scan_is_keyed_by_its_index_condition() -> None:
    plan = _scan("grants", "g", "Bitmap Heap Scan", **{"Recheck Cond": "(g.meter_slug = $2)"})
    plan["Plans"] = [{"Node Type": "Bitmap Index Scan", "Index Cond": "((g.customer_id = $1) AND (g.meter_slug = $2))"}]
    assert unkeyed_scans(plan, DISTRIBUTED) == []


def test_scans_that_cross_customers_are_named() -> None:
    # A condition on another column, an inequality, and a join on a column that is not the customer.
    assert unkeyed_scans(_scan("customers", "c", **{"Filter": "(c.closing_period_end <= $1)"}), DISTRIBUTED) == [
        "customers (c): Seq Scan"
    ]
    assert unkeyed_scans(_scan("customers", "c", **{"Filter": "(c.customer_id <> $1)"}), DISTRIBUTED) == [
        "customers (c): Seq Scan"
    ]
    join = {
        "Node Type": "Hash Join",
        "Hash Cond": "(v.event_id = e.event_id)",
        "Plans": [_scan("usage_voids", "v"), _scan("usage_events", "e", **{"Filter": "(e.customer_id = $1)"})],
    }
    assert unkeyed_scans(join, DISTRIBUTED) == ["usage_voids (v): Seq Scan"]


def test_a_subplan_is_not_keyed_by_the_joins_of_its_caller() -> None:
    plan = {
        "Node Type": "Hash Join",
        "Hash Cond": "(g.customer_id = k.customer_id)",
        "Plans": [
            {"Node Type": "Function Scan", "Alias": "k"},
            _scan("grants", "g", Plans=[{**_scan("usage_events", "g"), "Parent Relationship": "SubPlan"}]),
        ],
    }
    assert unkeyed_scans(plan, DISTRIBUTED) == ["usage_events (g): Seq Scan"]


def test_tables_that_are_not_distributed_and_the_modify_node_are_not_scans_to_key() -> None:
    plan = {
        "Node Type": "ModifyTable",
        "Relation Name": "usage_events",
        "Alias": "usage_events",
        "Plans": [_scan("rollup_layouts", "rollup_layouts")],
    }
    assert unkeyed_scans(plan, DISTRIBUTED) == []


def test_the_proxy_reaches_a_tcp_or_a_unix_socket_server_and_the_service_reaches_the_proxy() -> None:
    assert upstream_of("postgresql://postgres@127.0.0.1:5433/db") == ("127.0.0.1", 5433)
    assert upstream_of("postgresql://postgres:@/db?host=/run/pg-x") == ("/run/pg-x", 5432)
    assert through("postgresql://postgres:@/db?host=/run/pg-x", 4000) == (
        "postgresql://postgres@127.0.0.1:4000/db?sslmode=disable"
    )
    assert through("postgresql://app@db1:5432/metering?sslmode=require&application_name=x", 4000) == (
        "postgresql://app@127.0.0.1:4000/metering?application_name=x&sslmode=disable"
    )
