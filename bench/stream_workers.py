"""The stream on 1 and 2 worker processes, this code against a baseline, in one run.

    .venv/bin/python bench/stream_workers.py --database-url URL [--baseline DIR]

RecordUsageStream of 10 messages of 100 events (c=4 streams from 2 load
processes, as bench/run.py's stream row) on METERING_WORKERS=1 and =2, each
run measuring every service in turn (the order reversed every other run).
Prints events/s and server CPU per event (summed over a supervisor's
workers), medians of --runs, and the 2-worker / 1-worker ratios.
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

from bench.loadgen import STREAM, Scenario
from bench.run import SPREAD, TOKEN, Figure, create_customers, machine_state, measure_at
from metering.domain.access import caller_entry, token_digest
from tests.support import ServiceProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database it may fill")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=4, help="streams at once")
    parser.add_argument("--baseline", type=Path, help="a `src` folder whose code runs as the second pair")
    args = parser.parse_args()
    print(f"machine before the run: {machine_state()}")
    folder = tempfile.mkdtemp(prefix="metering-stream-")
    auth_file = Path(folder) / "callers.toml"
    auth_file.write_text(caller_entry("bench", ["recorder", "reader", "admin"], token_digests=[token_digest(TOKEN)]))
    codes = {"this": {}} if args.baseline is None else {"this": {}, "baseline": {"PYTHONPATH": str(args.baseline)}}
    services: dict[str, ServiceProcess] = {}
    figures: dict[str, list[Figure]] = {}
    tag = f"sw{time.time_ns() % 10**8}"
    one_run = argparse.Namespace(**{**vars(args), "runs": 1})
    try:
        for code, env in codes.items():
            for workers in (1, 2):
                extra = {"METERING_AUTH_FILE": str(auth_file), "METERING_WORKERS": str(workers), **env}
                services[f"{code}, {workers} worker{'s' if workers > 1 else ''}"] = ServiceProcess(
                    args.database_url, catalog=None, extra_env=extra
                ).start()
        create_customers(next(iter(services.values())).target, tag)
        scenario = Scenario(
            "RecordUsageStream 10x100",
            STREAM,
            customers=SPREAD,
            events_per_call=100,
            stream_messages=10,
            customer_tag=tag,
        )
        for index in range(args.runs):
            order = list(services) if index % 2 == 0 else list(reversed(services))
            for name in order:
                service = services[name]
                assert service.process is not None
                print(f"[{name}] ", end="", flush=True)
                figures.setdefault(name, []).append(
                    measure_at(
                        service.target,
                        service.process.pid,
                        scenario,
                        args.concurrency,
                        one_run,
                        f"{tag}{index}{name[:2]}{name[-9]}",
                    )
                )
        print(f"\n-- medians of {args.runs} runs, c={args.concurrency} streams --")
        rate = {name: statistics.median(f.per_second[0] for f in got) for name, got in figures.items()}
        for name, got in figures.items():
            cpu = statistics.median(f.cpu_us_per_event[0] for f in got)
            print(f"{name:<22} {rate[name]:>9,.0f} events/s   {cpu:6.1f} us of server CPU per event")
        for code in codes:
            print(f"{code}: 2 workers / 1 worker = {rate[f'{code}, 2 workers'] / rate[f'{code}, 1 worker']:.2f}")
    finally:
        stopped = {name: service.stop() for name, service in services.items()}
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nservers stopped (exit {stopped})")
        print(f"machine after the run: {machine_state()}")


if __name__ == "__main__":
    main()
