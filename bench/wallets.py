"""Wallets on the ingest path: RecordUsageBatch for customers with a wallet and a graduated
price, against the same load for customers without a wallet, in one run.

    .venv/bin/python bench/wallets.py --database-url URL            # 5 rounds of 5 s each

Both loads run against one server, on one plan whose meter has a graduated price, no
included units and no limit (so every event has a cost); the only difference is that
the customers of the wallet load were each given a grant large enough never to run out,
so every event is charged to it (its marginal cost computed, the wallet row locked,
the burns, the priced quantity and the grant's remaining credit written). The two loads
alternate round by round, on a shared and noisy machine, and the ratio is of their
medians (target >= 0.85).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import BATCH, Scenario, customer_id
from bench.run import SPREAD, TOKEN, Figure, measure
from metering.domain.access import caller_entry, token_digest
from metering.v1 import billing_pb2, customer_pb2, metering_service_pb2_grpc, wallets_pb2
from tests.support import ServiceProcess

CATALOG = """
[meters.ai_tokens]
aggregation = "sum"
unit = "token"

[prices.ai_tokens_graduated]
meter = "ai_tokens"
model = "graduated"
currency = "USD"
tiers = [
  { up_to = "1000", unit_amount = "0.002" },
  { up_to = "100000", unit_amount = "0.0015", flat_amount = "0.10" },
  { unit_amount = "0.001" },
]

[plans.metered]
[plans.metered.meters.ai_tokens]
price = "ai_tokens_graduated"
"""


def create_customers(target: str, tag: str, *, wallet: bool) -> None:
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        for index in range(SPREAD):
            customer = customer_id(tag, index)
            stub.UpsertCustomer(
                customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="metered"),
                timeout=10,
                metadata=metadata,
            )
            if wallet:
                stub.GrantWalletCredit(
                    wallets_pb2.GrantWalletCreditRequest(
                        customer_id=customer,
                        grant_id="bench",
                        amount=billing_pb2.Money(currency_code="USD", amount="1000000"),
                    ),
                    timeout=10,
                    metadata=metadata,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database it may fill")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two loads")
    parser.add_argument("--events-per-call", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    args = parser.parse_args()
    args.runs = 1  # measure() runs: one per round, the rounds alternate
    folder = tempfile.mkdtemp(prefix="metering-wallets-")
    auth_file = Path(folder) / "callers.toml"
    auth_file.write_text(caller_entry("bench", ["recorder", "reader", "admin"], token_digests=[token_digest(TOKEN)]))
    catalog = Path(folder) / "catalog.toml"
    catalog.write_text(CATALOG)
    service = ServiceProcess(args.database_url, catalog=catalog, extra_env={"METERING_AUTH_FILE": str(auth_file)})
    service.start()
    tag = f"wal{time.time_ns() % 10**8}"
    loads = {
        "without a wallet": Scenario(
            "RecordUsageBatch, no wallet",
            BATCH,
            customers=SPREAD,
            events_per_call=args.events_per_call,
            customer_tag=f"{tag}n",
        ),
        "with a wallet": Scenario(
            "RecordUsageBatch, wallet",
            BATCH,
            customers=SPREAD,
            events_per_call=args.events_per_call,
            customer_tag=f"{tag}w",
        ),
    }
    try:
        create_customers(service.target, f"{tag}n", wallet=False)
        create_customers(service.target, f"{tag}w", wallet=True)
        figures: dict[str, list[Figure]] = {name: [] for name in loads}
        for round_ in range(args.rounds):
            order = list(loads) if round_ % 2 == 0 else list(reversed(loads))
            for name in order:
                figures[name].append(measure(service, loads[name], args.concurrency, args, f"{tag}{round_}{name[0]}"))
        medians = {name: statistics.median(f.median for f in runs) for name, runs in figures.items()}
        print(
            f"\n-- RecordUsageBatch x{args.events_per_call}, concurrency {args.concurrency}, "
            f"{args.rounds} alternating rounds of {args.seconds:g} s, {SPREAD} customers each --"
        )
        for name, runs in figures.items():
            values = ", ".join(f"{f.median:,.0f}" for f in runs)
            print(f"{name:<18} median {medians[name]:>9,.0f} events/s  (rounds: {values})")
        ratio = medians["with a wallet"] / medians["without a wallet"]
        print(f"ratio with/without a wallet: {ratio:.2f} (target >= 0.85)")
    finally:
        code = service.stop()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nserver stopped (exit {code})")


if __name__ == "__main__":
    main()
