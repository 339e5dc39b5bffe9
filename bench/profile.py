"""Profile the server under load with py-spy and print the hottest functions.

.venv/bin/python bench/profile.py --database-url URL record   # or: noop, balance
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import BALANCE, BATCH, NOOP, RECORD, Scenario, run
from bench.run import SPREAD, create_customers
from tests.support import ServiceProcess

METHODS = {"noop": NOOP, "record": RECORD, "balance": BALANCE, "batch": BATCH}


def summarise(raw: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    print(f"{total} samples")
    print("-- most time in the function itself --")
    for frame, samples in own.most_common(top):
        print(f"{100 * samples / total:5.1f}%  {frame[:140]}")
    print("-- most time including callees --")
    for frame, samples in inclusive.most_common(top * 2):
        print(f"{100 * samples / total:5.1f}%  {frame[:140]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=sorted(METHODS))
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    service = ServiceProcess(args.database_url, catalog=None, extra_env={"METERING_BENCH_NOOP": "1"}).start()
    assert service.process is not None
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "profile.raw"
        try:
            create_customers(service.target, "profile")
            recorder = subprocess.Popen(
                [
                    spy,
                    "record",
                    "-p",
                    str(service.process.pid),
                    "-d",
                    str(int(args.seconds)),
                    "-r",
                    "250",
                    "--format",
                    "raw",
                    "-o",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            scenario = Scenario(
                args.method,
                METHODS[args.method],
                customers=SPREAD,
                customer_tag="profile",
                events_per_call=1000 if args.method == "batch" else 1,
            )
            result = run(
                service.target,
                scenario,
                concurrency=args.concurrency,
                seconds=args.seconds,
                processes=2,
                run_tag=f"profile-{time.time_ns()}",
            )
            recorder.wait(timeout=60)
            print(f"{args.method}: {result.events_per_second:,.0f} /s, errors {result.errors}")
        finally:
            service.stop()
        summarise(raw, args.top)


if __name__ == "__main__":
    main()
