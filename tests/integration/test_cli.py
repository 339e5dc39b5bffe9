"""The `metering` command for people: tables, --json, errors in plain words,
and a resumable, idempotent import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from metering.domain.notifications import Position
from tests.support import ServiceProcess, audit, page_tokens_of, run_sql


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


# -- the conventions (issue 22): options anywhere, exit statuses, --json, paging, --price, CSV -----


def test_options_after_positionals_and_the_exit_status_of_each_kind_of_answer(
    metering: Callable[..., subprocess.CompletedProcess[str]], new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    fits = metering("balance", customer, "--json", "tokens", "--requested", "100")
    assert fits.returncode == 0, fits.stderr
    answer = json.loads(fits.stdout)
    assert answer["requested_allowed"] is True
    assert answer["balances"][0]["used"] == "0" and answer["balances"][0]["reserved"] == "0"

    too_much = metering("balance", customer, "tokens", "--requested", "101")
    assert too_much.returncode == 1
    assert "the requested quantity does NOT fit" in too_much.stdout
    assert too_much.stderr.strip() == (
        "the requested quantity does not fit: tokens has 100 token available (limit 100, 0 used, 0 reserved)"
    )

    assert metering("record", customer, "tokens", "101").returncode == 1  # a limit: refused
    assert metering("balance", "no-such-customer").returncode == 1  # not found: refused
    malformed = metering("record", customer, "tokens", "-5")  # the service's INVALID_ARGUMENT
    assert malformed.returncode == 2 and "field quantity" in malformed.stderr
    assert metering("events", customer, "--page-size", "many").returncode == 2  # argparse
    assert metering("usage", customer, "tokens", "--time-zone", "Mars/Olympus").returncode == 2
    unreachable = metering("balance", customer, "--target", "127.0.0.1:9")
    assert unreachable.returncode == 3 and unreachable.stderr.startswith("UNAVAILABLE")


def test_json_keeps_empty_lists(
    metering: Callable[..., subprocess.CompletedProcess[str]], new_customer: Callable[..., str]
) -> None:
    customer = new_customer(anchor=datetime.now(UTC).isoformat())  # no period has ended: no invoice
    assert json.loads(metering("events", customer, "--json").stdout) == {"events": [], "next_page_token": ""}
    assert json.loads(metering("grants", "--json", customer).stdout) == {"grants": []}
    invoices = json.loads(metering("invoices", customer, "--json").stdout)
    assert invoices == {"invoices": [], "next_page_token": ""}


def test_events_page_by_token_or_all_within_a_time_range(
    metering: Callable[..., subprocess.CompletedProcess[str]], new_customer: Callable[..., str]
) -> None:
    customer = new_customer("open")
    for hour in range(5):
        stamp = f"2026-03-02T{10 + hour:02d}:00:00Z"
        done = metering("record", customer, "tokens", "1", "--transaction-id", f"h{hour}", "--event-time", stamp)
        assert done.returncode == 0, done.stderr

    first = metering("events", customer, "--page-size", "2")
    assert [line.split()[2] for line in first.stdout.splitlines()[2:4]] == ["h4", "h3"]  # newest first
    token = first.stdout.splitlines()[-1].removeprefix("(more: add --page-token ").removesuffix(", or --all)")
    second = json.loads(metering("events", customer, "--page-size", "2", "--page-token", token, "--json").stdout)
    assert [e["transaction_id"] for e in second["events"]] == ["h2", "h1"] and second["next_page_token"]

    every = json.loads(metering("events", customer, "--all", "--page-size", "2", "--json").stdout)
    assert [e["transaction_id"] for e in every["events"]] == ["h4", "h3", "h2", "h1", "h0"]
    assert every["next_page_token"] == ""
    window = metering(
        "events", customer, "--start", "2026-03-02T11:00:00Z", "--end", "2026-03-02T13:00:00Z", "--all", "--json"
    )
    assert [e["transaction_id"] for e in json.loads(window.stdout)["events"]] == ["h2", "h1"]
    assert "(more" not in metering("events", customer, "--all").stdout


def test_record_by_price(
    metering: Callable[..., subprocess.CompletedProcess[str]], new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    done = metering("record", customer, "--price", "tokens_per_unit", "4", "--transaction-id", "p1", "--json")
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)["event"]
    assert (event["meter_slug"], event["price_slug"], event["quantity"]) == ("tokens", "tokens_per_unit", "4")
    both = metering("record", customer, "tokens", "4", "--price", "tokens_per_unit")
    assert both.returncode == 2 and "not two values" in both.stderr


def test_import_reads_csv_with_a_header_and_refuses_csv_without_one(
    metering: Callable[..., subprocess.CompletedProcess[str]],
    new_customer: Callable[..., str],
    tmp_path: Path,
    database_url: str,
) -> None:
    customer = new_customer("open")
    usage = tmp_path / "usage.csv"
    usage.write_text(
        "customer_id,meter_slug,quantity,transaction_id,event_time,properties.region\n"
        f"{customer},tokens,2,c1,2026-03-02T10:00:00Z,eu\n"
        f"{customer},tokens,3,c2,2026-03-02T11:00:00Z,\n"
        f"{customer},tokens,3\n"
        f"{customer},tokens,3,c1,2026-03-02T10:00:00Z,eu\n"  # c1 again, another payload: a conflict
    )
    result = metering("import", str(usage), "--json")
    assert result.returncode == 1, result.stderr  # done, with rejected lines
    summary = json.loads(result.stdout)
    assert (summary["line"], summary["recorded"], summary["rejected"]) == (5, 2, 2)
    rejects = [json.loads(line) for line in (tmp_path / "usage.csv.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["code"], r["reason"]) for r in rejects] == [
        (4, "INVALID_ARGUMENT", ""),
        (5, "ALREADY_EXISTS", "TRANSACTION_ID_CONFLICT"),
    ]
    rows = run_sql(
        database_url,
        "SELECT transaction_id, quantity::text, properties FROM usage_events WHERE customer_id = $1 "
        "ORDER BY transaction_id",
        customer,
    )
    assert [(r["transaction_id"], r["quantity"], json.loads(r["properties"])) for r in rows] == [
        ("c1", "2", {"region": "eu"}),
        ("c2", "3", {}),
    ]

    headless = tmp_path / "headless.csv"
    other = new_customer("open")
    headless.write_text(f"{other},tokens,2,d1\n{other},tokens,3,d2\n")
    refused = metering("import", str(headless))
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"metering import: {headless} looks like CSV, but its first line is not a header")
    assert "customer_id,meter_slug,quantity,transaction_id" in refused.stderr
    assert not (tmp_path / "headless.csv.rejects.jsonl").exists()
    assert run_sql(database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", other)[0][0] == 0
    missing = metering("import", str(tmp_path / "nowhere.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def _watch(service: ServiceProcess, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "METERING_TARGET": service.target}
    return subprocess.Popen(
        [sys.executable, "-m", "metering", "watch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_watch_tails_the_notifications_and_ends_cleanly_on_ctrl_c(
    metering: Callable[..., subprocess.CompletedProcess[str]],
    new_customer: Callable[..., str],
    service: ServiceProcess,
    database_url: str,
) -> None:
    customer = new_customer()
    assert metering("record", customer, "tokens", "90").returncode == 0  # crosses 80%
    assert metering("record", customer, "tokens", "20", "--transaction-id", "over").returncode == 1  # refused
    stored = run_sql(
        database_url, "SELECT txid::text AS txid, seq FROM notifications WHERE customer_id = $1 ORDER BY txid", customer
    )
    # Resume right after it (a cursor signed as the service signs them).
    after_threshold = page_tokens_of(database_url).cursor(Position(int(stored[0]["txid"]), stored[0]["seq"]))

    as_json = _watch(service, "--from", after_threshold, "--customer", customer, "--json")
    assert as_json.stdout is not None
    notification = json.loads(as_json.stdout.readline())
    as_json.send_signal(signal.SIGINT)
    out, err = as_json.communicate(timeout=30)
    assert as_json.returncode == 0, err
    assert notification["type"] == "NOTIFICATION_TYPE_USAGE_LIMIT_REJECTED"
    assert notification["limit_rejected"]["transaction_id"] == "over"
    assert notification["limit_rejected"]["available"] == "10"
    assert err == f"stopped; resume with: metering watch --from {notification['cursor']}\n"
    assert out == ""

    as_text = _watch(service, "--customer", customer, "--from", after_threshold, "--type", "usage.limit_rejected")
    assert as_text.stdout is not None
    line = as_text.stdout.readline()
    as_text.terminate()  # SIGTERM ends it as cleanly
    as_text.communicate(timeout=30)
    assert as_text.returncode == 0
    assert f"  usage.limit_rejected  {customer}  tokens refused 20 token: 10 available of 100" in line
    assert line.rstrip().endswith(f"cursor {notification['cursor']}")


def test_watch_refuses_a_malformed_cursor(metering: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    refused = metering("watch", "--from", "garbage")
    assert refused.returncode == 2
    assert refused.stderr.startswith("INVALID_ARGUMENT")


def test_customers_page_and_filter_by_plan_and_the_catalog_prints_every_term(
    metering: Callable[..., subprocess.CompletedProcess[str]], new_customer: Callable[..., str]
) -> None:
    mine = {new_customer("soft") for _ in range(3)}
    listed = json.loads(metering("customers", "--plan", "soft", "--all", "--page-size", "2", "--json").stdout)
    ids = [c["customer_id"] for c in listed["customers"]]
    assert mine <= set(ids) and ids == sorted(ids, key=str.encode) and listed["next_page_token"] == ""
    assert {c["plan_slug"] for c in listed["customers"]} == {"soft"}
    first = metering("customers", "--plan", "soft", "--page-size", "1")
    assert first.returncode == 0 and first.stdout.splitlines()[0].split()[:2] == ["customer", "plan"]
    assert "(more: add --page-token" in first.stdout
    bad = metering("customers", "--plan", "Not A Plan")
    assert bad.returncode == 2 and "plan_slug" in bad.stderr

    text = metering("catalog")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("catalog revision ")
    assert "plan limited (limited, USD)" in text.stdout
    tokens_on_limited = next(
        line for line in text.stdout.splitlines() if line.startswith("tokens ") and "premium" in line
    )
    assert tokens_on_limited.split()[:5] == ["tokens", "tokens_premium", "100", "10", "month"]
    catalog = json.loads(metering("catalog", "--json").stdout)
    assert [m["slug"] for m in catalog["meters"]][:2] == ["calls", "tokens"]
    assert {"tokens_no_charge", "tokens_eur"} <= {p["slug"] for p in catalog["prices"]}


def test_topup_wallet_what_if_bill_and_credit_note_refusals(
    metering: Callable[..., subprocess.CompletedProcess[str]], new_customer: Callable[..., str]
) -> None:
    customer = new_customer()  # on plan `limited`: tokens at tokens_premium (0.002 USD) after 10 included
    granted = metering("topup", customer, "2.50", "USD", "--grant-id", "g1", "--reason", "order 1042")
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip() == "granted: 2.50 USD of paid credit as g1; 2.50 USD available"
    again = metering("topup", customer, "2.50", "USD", "--grant-id", "g1", "--reason", "order 1042")
    assert again.stdout.startswith("already granted (duplicate): 2.50 USD")
    promo = metering("topup", customer, "1", "USD", "--promotional", "--priority", "-1", "--meter", "tokens")
    assert promo.returncode == 0, promo.stderr

    assert metering("record", customer, "tokens", "60", "--transaction-id", "w1").returncode == 0
    wallet = json.loads(metering("wallet", customer, "--json").stdout)["wallet"]
    # 50 billable tokens at 0.002 = 0.10, burned from the promotional grant first (priority -1).
    assert wallet["available"] == {"currency_code": "USD", "amount": "3.40"}
    assert [(g["category"], g["remaining"]["amount"]) for g in wallet["grants"]] == [
        ("CREDIT_CATEGORY_PROMOTIONAL", "0.90"),
        ("CREDIT_CATEGORY_PAID", "2.50"),
    ]
    table = metering("wallet", customer)
    assert table.stdout.startswith(f"customer {customer}: 3.40 USD available (usage beyond the credit is billed")

    bill = metering("bill", customer, "--what-if", "open")
    assert bill.returncode == 0, bill.stderr
    assert "wallet credit applied:" in bill.stdout and "what if on plan open:" in bill.stdout
    what_if = json.loads(metering("bill", customer, "--what-if", "open", "--json").stdout)["what_if"]
    assert what_if["plan_slug"] == "open"
    unknown_plan = metering("bill", customer, "--what-if", "no_such_plan")
    assert unknown_plan.returncode == 1 and "no_such_plan" in unknown_plan.stderr

    # Credit notes go against finalized invoices only (tests/integration/test_credit_notes.py issues them).
    unknown = metering("credit-note", customer, str(uuid.uuid4()), "--whole", "--reason", "goodwill")
    assert unknown.returncode == 1 and "INVOICE_NOT_FOUND" in unknown.stderr, unknown.stderr
    malformed = metering("credit-note", customer, "not-a-uuid", "--whole", "--reason", "goodwill")
    assert malformed.returncode == 2 and "invoice_id" in malformed.stderr
    neither = metering("credit-note", customer, "some-invoice", "--reason", "goodwill")
    assert neither.returncode == 2 and "one of the arguments --whole --line is required" in neither.stderr
