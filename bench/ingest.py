"""The ingest path alone: RecordUsageBatch x1000 and the stream against raw COPY, in one run.

    .venv/bin/python bench/ingest.py --database-url URL             # 3 runs of 5 s each
    .venv/bin/python bench/ingest.py --database-url URL --profile   # and a py-spy profile of each

Prints events/s and server CPU per event (medians of --runs, with min and max)
for each scenario, raw COPY of the same rows into usage_events as the storage
ceiling, and each scenario's ratio to it. The server runs as bench/run.py runs
it: authentication on, synchronous commit, limits enforced (plan `pro`).
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

from bench.loadgen import BATCH, STREAM, Scenario, run
from bench.profile import summarise
from bench.run import SPREAD, TOKEN, Figure, copy_ceiling, create_customers, measure
from metering.domain.access import caller_entry, token_digest
from tests.support import ServiceProcess


def scenarios(tag: str) -> list[tuple[Scenario, int]]:
    """Each scenario with its concurrency (bench/run.py's)."""
    return [
        (Scenario("RecordUsageBatch x1000", BATCH, customers=SPREAD, events_per_call=1000, customer_tag=tag), 2),
        (
            Scenario(
                "RecordUsageStream 10x100",
                STREAM,
                customers=SPREAD,
                events_per_call=100,
                stream_messages=10,
                customer_tag=tag,
            ),
            4,
        ),
    ]


def events_per_call(scenario: Scenario) -> int:
    return scenario.events_per_call * max(1, scenario.stream_messages)


def profile(service: ServiceProcess, scenario: Scenario, concurrency: int, seconds: float, top: int) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    assert service.process is not None
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "profile.raw"
        command = [spy, "record", "-p", str(service.process.pid), "-d", str(int(seconds)), "-r", "250"]
        command.extend(["--format", "raw", "-o", str(raw), "--nonblocking"])
        recorder = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result = run(
            service.target,
            scenario,
            token=TOKEN,
            concurrency=concurrency,
            seconds=seconds,
            processes=2,
            run_tag=f"spy-{time.time_ns()}",
        )
        recorder.wait(timeout=60)
        print(f"\n-- py-spy: {scenario.name} c={concurrency}: {result.events_per_second:,.0f} events/s --")
        summarise(raw, top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database it may fill")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--copy-rows", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true", help="then one py-spy profiled run of each scenario")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="metering-ingest-")
    auth_file = Path(folder) / "callers.toml"
    auth_file.write_text(caller_entry("bench", ["recorder", "reader", "admin"], token_digests=[token_digest(TOKEN)]))
    service = ServiceProcess(args.database_url, catalog=None, extra_env={"METERING_AUTH_FILE": str(auth_file)})
    service.start()
    tag = f"ing{time.time_ns() % 10**8}"
    try:
        create_customers(service.target, tag)
        figures: list[tuple[Scenario, Figure]] = []
        for scenario, concurrency in scenarios(tag):
            figures.append((scenario, measure(service, scenario, concurrency, args, f"{tag}{len(figures)}")))
        copy = copy_ceiling(args.database_url, args, tag)
        print("\n-- per event (medians) --")
        for scenario, figure in figures:
            cpu = statistics.median(figure.cpu_us_per_call) / events_per_call(scenario)
            database = statistics.median(figure.db_us_per_event)
            print(
                f"{scenario.name:<28} {figure.median:>9,.0f} events/s  {cpu:6.1f} us server CPU per event  "
                f"{database:6.1f} us PostgreSQL CPU per event  "
                f"{figure.median / copy.median:5.2f} of raw COPY ({copy.median:,.0f} rows/s)"
            )
        if args.profile:
            for scenario, concurrency in scenarios(tag):
                profile(service, scenario, concurrency, args.seconds, args.top)
    finally:
        code = service.stop()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nserver stopped (exit {code})")


if __name__ == "__main__":
    main()
