"""The `metering` command for people: tables, --json, errors in plain words,
and a resumable, idempotent import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import ServiceProcess, audit, run_sql


@pytest.fixture
def metering(service: ServiceProcess) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "METERING_TARGET": service.target}
        return subprocess.run(
            [sys.executable, "-m", "metering", *args], env=env, capture_output=True, text=True, timeout=120
        )

    return run


def test_record_balance_usage_bill_and_grants_as_tables(
    metering: Callable[..., subprocess.CompletedProcess[str]], new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    first = metering("record", customer, "tokens", "30", "--transaction-id", "t1", "--property", "model=m1")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("recorded: 30 of tokens at price tokens_premium, transaction t1")
    assert "tokens: used 30 of 100" in first.stdout
    again = metering("record", customer, "tokens", "30", "--transaction-id", "t1", "--property", "model=m1")
    assert again.stdout.startswith("already recorded (duplicate): 30 of tokens")

    balance = metering("balance", customer, "tokens", "--requested", "80")
    lines = balance.stdout.splitlines()
    assert "on plan limited" in lines[0] and "the requested quantity does NOT fit" in lines[0]
    assert lines[1].split() == [
        "meter",
        "used",
        "limit",
        "granted",
        "reserved",
        "available",
        "used",
        "%",
        "enforcement",
        "resets",
    ]
    assert lines[3].split()[:8] == ["tokens", "30", "100", "0", "0", "70", "30.00%", "hard"]

    usage = metering("usage", customer, "tokens", "--group-by", "model")
    assert usage.stdout.splitlines()[0].split() == ["meter", "from", "to", "model", "value"]
    assert usage.stdout.splitlines()[2].split()[-2:] == ["m1", "30"]

    bill = metering("bill", customer)
    assert bill.returncode == 0, bill.stderr
    assert bill.stdout.splitlines()[1].split() == [
        "meter",
        "price",
        "model",
        "quantity",
        "included",
        "billable",
        "amount",
    ]
    assert any(line.split() == ["total", "0.04", "USD"] for line in bill.stdout.splitlines()), bill.stdout

    assert metering("grant", customer, "tokens", "50", "--grant-id", "promo").stdout.startswith(
        "granted: 50 tokens as promo"
    )
    grants = metering("grants", customer)
    assert grants.stdout.splitlines()[2].split()[:4] == ["promo", "tokens", "50", "50"]


def test_refusals_in_plain_words_and_json_for_scripts(
    metering: Callable[..., subprocess.CompletedProcess[str]], new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    over = metering("record", customer, "tokens", "500")
    assert over.returncode == 1
    assert over.stderr.startswith("RESOURCE_EXHAUSTED: meter 'tokens' has 100 token available")
    assert "reason: LIMIT_EXCEEDED (available=100, limit=100, meter=tokens" in over.stderr
    assert "quota meter:tokens:" in over.stderr
    bad = metering("record", customer, "tokens", "1.2.3")
    assert "field quantity:" in bad.stderr
    as_json = json.loads(metering("record", customer, "tokens", "500", "--json").stdout)
    assert as_json["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert as_json["error"]["details"]["ErrorInfo"]["metadata"]["available"] == "100"
    ok = json.loads(metering("record", customer, "tokens", "7", "--transaction-id", "j", "--json").stdout)
    assert ok["event"]["quantity"] == "7" and ok["balance"]["used"] == "7"


def _event(customer: str, txn: str, quantity: str) -> str:
    return json.dumps({"customer_id": customer, "meter_slug": "tokens", "quantity": quantity, "transaction_id": txn})


def test_import_is_batched_idempotent_and_resumes_from_its_checkpoint(
    metering: Callable[..., subprocess.CompletedProcess[str]],
    new_customer: Callable[..., str],
    tmp_path: Path,
    database_url: str,
) -> None:
    roomy, limited = new_customer("open"), new_customer()
    lines = [_event(roomy, f"e{i}", "1.5") for i in range(600)]
    lines[10] = "{not json"
    lines[20] = _event(roomy, "e19", "1.5")  # the same event twice: a duplicate, not a second row
    lines += [_event(limited, f"l{i}", "30") for i in range(4)]  # the 4th passes the limit of 100
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")

    first = metering("import", str(source), "--batch-size", "250")
    assert first.returncode == 1, first.stderr  # completed, with rejected events
    assert "604 lines, 601 recorded, 1 duplicates, 2 rejected" in first.stdout
    assert "events/s" in first.stdout
    rejects = [json.loads(line) for line in (tmp_path / "events.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["code"], r["reason"]) for r in rejects] == [
        (11, "INVALID_ARGUMENT", ""),
        (604, "RESOURCE_EXHAUSTED", "LIMIT_EXCEEDED"),
    ]

    # More lines arrive; the import resumes after line 604 instead of starting over.
    with source.open("a") as file:
        file.write("\n".join(_event(roomy, f"late{i}", "2") for i in range(50)) + "\n")
    second = metering("import", str(source), "--json")
    assert "resuming" in second.stderr and "at line 605" in second.stderr
    summary = json.loads(second.stdout)
    assert (summary["line"], summary["recorded"], summary["duplicates"], summary["rejected"]) == (654, 651, 1, 2)

    # From scratch again: every event is already in the ledger.
    third = metering("import", str(source), "--restart", "--json")
    replay = json.loads(third.stdout)
    assert (replay["recorded"], replay["duplicates"], replay["rejected"]) == (0, 652, 2)
    count = "SELECT count(*) FROM usage_events WHERE customer_id = ANY($1::text[])"
    assert run_sql(database_url, count, [roomy, limited])[0][0] == 651
    assert audit(database_url, [roomy, limited]).ok


def test_an_import_that_cannot_reach_the_service_stops_resumably(
    metering: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(_event("nobody", "x", "1") + "\n")
    result = metering("import", str(source), "--target", "127.0.0.1:9", "--max-retries", "1")
    assert result.returncode == 3
    assert "UNAVAILABLE" in result.stderr
    assert "run the same command again to resume" in result.stderr
