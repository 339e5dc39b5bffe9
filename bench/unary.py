"""The unary paths against the service's own no-op, in one run.

    .venv/bin/python bench/unary.py --database-url URL   # 3 runs of 5 s each, c=64

Prints calls/s, p99 and server CPU per call (medians of --runs) of the
service's no-op (METERING_BENCH_NOOP: the same interceptor, authentication and
metrics), RecordUsage over 100 customers and CheckBalance, and their ratios to
the no-op. The bare grpc.aio no-op (no interceptor) is a row of bench/run.py.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import BALANCE, NOOP, RECORD, Scenario
from bench.run import SPREAD, TOKEN, create_customers, measure
from metering.domain.access import caller_entry, token_digest
from tests.support import ServiceProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database it may fill")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="metering-unary-")
    auth_file = Path(folder) / "callers.toml"
    auth_file.write_text(caller_entry("bench", ["recorder", "reader", "admin"], token_digests=[token_digest(TOKEN)]))
    env = {"METERING_BENCH_NOOP": "1", "METERING_AUTH_FILE": str(auth_file)}
    service = ServiceProcess(args.database_url, catalog=None, extra_env=env).start()
    tag = f"un{time.time_ns() % 10**8}"
    try:
        create_customers(service.target, tag)
        c = args.concurrency
        noop = measure(service, Scenario("no-op unary (RPC ceiling)", NOOP), c, args, f"{tag}n")
        rows = [
            measure(
                service,
                Scenario("RecordUsage, 100 customers", RECORD, customers=SPREAD, customer_tag=tag),
                c,
                args,
                f"{tag}r",
            ),
            measure(service, Scenario("CheckBalance", BALANCE, customers=SPREAD, customer_tag=tag), c, args, f"{tag}b"),
        ]
        print(f"\n-- against the service's no-op at c={c} (medians) --")
        noop_p99, noop_cpu = statistics.median(noop.p99_ms), statistics.median(noop.cpu_us_per_call)
        for row in rows:
            print(
                f"{row.name:<28} {row.median / noop.median:5.2f} of the no-op's calls/s   "
                f"p99 {statistics.median(row.p99_ms) / noop_p99:5.2f}x the no-op's   "
                f"cpu {statistics.median(row.cpu_us_per_call):,.0f} vs {noop_cpu:,.0f} us/call"
            )
    finally:
        code = service.stop()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nserver stopped (exit {code})")


if __name__ == "__main__":
    main()
