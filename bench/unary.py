"""The unary paths against the service's own no-op and a bare grpc.aio no-op, in one run.

    .venv/bin/python bench/unary.py --database-url URL                  # 3 runs of 5 s each, c=64
    .venv/bin/python bench/unary.py --database-url URL --baseline DIR   # this code against DIR's, alternating

Prints calls/s, p99 and server CPU per call (medians of --runs) of the bare
grpc.aio no-op (bench/bare_noop.py: no interceptor), the service's no-op
(METERING_BENCH_NOOP: the same interceptor, authentication and metrics),
RecordUsage over 100 customers and CheckBalance, and their ratios to both
no-ops.

With --baseline DIR (a `src` folder of another checkout, e.g. made with
`git archive main src | tar -x -C DIR`), a second service runs DIR's code
(PYTHONPATH) on the same database, and every run measures each row on both
services in turn (A then B, then B then A the next run), so that the two are
compared under the same load of the machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bare_noop import READY
from bench.loadgen import BALANCE, NOOP, RECORD, Scenario
from bench.run import SPREAD, TOKEN, Figure, create_customers, machine_state, measure_at
from metering.domain.access import caller_entry, token_digest
from tests.support import ServiceProcess

ROWS = ("no-op", "RecordUsage", "CheckBalance")


def scenarios(tag: str) -> dict[str, Scenario]:
    return {
        "no-op": Scenario("no-op unary (RPC ceiling)", NOOP),
        "RecordUsage": Scenario("RecordUsage, 100 customers", RECORD, customers=SPREAD, customer_tag=tag),
        "CheckBalance": Scenario("CheckBalance", BALANCE, customers=SPREAD, customer_tag=tag),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database it may fill")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--baseline", type=Path, help="a `src` folder whose code runs as the second service")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for this code's service")
    parser.add_argument("--baseline-env", action="append", default=[], help="NAME=VALUE for the baseline's")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="the rows to measure")
    args = parser.parse_args()
    print(f"machine before the run: {machine_state()}")
    folder = tempfile.mkdtemp(prefix="metering-unary-")
    auth_file = Path(folder) / "callers.toml"
    auth_file.write_text(caller_entry("bench", ["recorder", "reader", "admin"], token_digests=[token_digest(TOKEN)]))
    env = {"METERING_BENCH_NOOP": "1", "METERING_AUTH_FILE": str(auth_file)}
    services: dict[str, ServiceProcess] = {}
    bare = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "bare_noop.py")], stdout=subprocess.PIPE, text=True
    )
    tag = f"un{time.time_ns() % 10**8}"
    one_run = argparse.Namespace(**{**vars(args), "runs": 1})
    figures: dict[tuple[str, str], list[Figure]] = {}
    try:
        assert bare.stdout is not None
        line = bare.stdout.readline()
        if not line.startswith(READY):
            raise RuntimeError(f"the bare no-op server did not start: {line!r}")
        bare_target = line.split()[-1]
        services["this"] = ServiceProcess(args.database_url, catalog=None, extra_env={**env, **_pairs(args.env)})
        services["this"].start()
        if args.baseline is not None:
            base_env = {**env, "PYTHONPATH": str(args.baseline.resolve()), **_pairs(args.baseline_env)}
            services["baseline"] = ServiceProcess(args.database_url, catalog=None, extra_env=base_env).start()
        create_customers(services["this"].target, tag)
        rows = scenarios(tag)
        c = args.concurrency
        for index in range(args.runs):
            order = list(services) if index % 2 == 0 else list(reversed(services))
            print(f"\n-- run {index + 1}: bare, then {', '.join(order)} --", flush=True)
            figures.setdefault(("bare", "no-op"), []).append(
                measure_at(bare_target, bare.pid, Scenario("bare grpc.aio no-op", NOOP), c, one_run, "bare", token="")
            )
            for name in order:
                service = services[name]
                assert service.process is not None
                for row in args.rows:
                    figure = measure_at(
                        service.target, service.process.pid, rows[row], c, one_run, f"{tag}{name[0]}{index}{row[0]}"
                    )
                    figures.setdefault((name, row), []).append(figure)
        report(figures, list(services), c, args.rows)
    finally:
        codes = {name: service.stop() for name, service in services.items()}
        bare.terminate()
        bare.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nservers stopped (exit {codes})")
        print(f"machine after the run: {machine_state()}")


def _pairs(values: list[str]) -> dict[str, str]:
    return dict(value.split("=", 1) for value in values)


def _median(figures: list[Figure], field: str) -> float:
    values: list[float] = [value for figure in figures for value in getattr(figure, field)]
    return statistics.median(values)


def report(figures: dict[tuple[str, str], list[Figure]], services: list[str], c: int, rows: list[str]) -> None:
    bare = figures["bare", "no-op"]
    bare_rate, bare_p99, bare_cpu = (
        _median(bare, "per_second"),
        _median(bare, "p99_ms"),
        _median(bare, "cpu_us_per_call"),
    )
    print(
        f"\n-- medians at c={c}; bare grpc.aio no-op {bare_rate:,.0f} calls/s, p99 {bare_p99:.1f} ms, "
        f"{bare_cpu:,.0f} us/call --"
    )
    print(
        f"{'service':<10} {'row':<13} {'calls/s':>9} {'/bare':>6} {'/no-op':>7} {'p99 ms':>7} "
        f"{'p99/bare':>9} {'us/call':>8}"
    )
    for name in services:
        noop_rate = _median(figures[name, "no-op"], "per_second") if "no-op" in rows else float("nan")
        for row in rows:
            got = figures[name, row]
            rate, p99, cpu = _median(got, "per_second"), _median(got, "p99_ms"), _median(got, "cpu_us_per_call")
            print(
                f"{name:<10} {row:<13} {rate:>9,.0f} {rate / bare_rate:>6.2f} {rate / noop_rate:>7.2f} "
                f"{p99:>7.1f} {p99 / bare_p99:>9.2f} {cpu:>8,.0f}"
            )
    if len(services) == 2:
        print("\n-- this / baseline (medians) --")
        for row in rows:
            this, base = figures["this", row], figures["baseline", row]
            print(
                f"{row:<13} calls/s {_median(this, 'per_second') / _median(base, 'per_second'):5.2f}x   "
                f"cpu/call {_median(this, 'cpu_us_per_call') / _median(base, 'cpu_us_per_call'):5.2f}x   "
                f"p99 {_median(this, 'p99_ms') / _median(base, 'p99_ms'):5.2f}x"
            )


if __name__ == "__main__":
    main()
