"""What one unary call costs the service, counted rather than timed: event-loop
callbacks and Python function calls per call, this code against a baseline.

    .venv/bin/python bench/call_cost.py --database-url URL [--baseline DIR]

How it counts: the service starts with a `sitecustomize` module (on its
PYTHONPATH) that wraps asyncio's `Handle._run`, through which the event loop
runs every callback (a task's step, a future's done-callback, a reader, a
timer), and that on SIGUSR1 installs a `sys.setprofile` hook counting
"call" (Python functions) and "c_call" (C functions called from Python)
events of the main thread; SIGUSR2 writes the counts to a file. The driver
sends --calls calls one at a time (c=1) between the two signals, for the
service's no-op, RecordUsage (a new transaction id each, 100 customers) and
CheckBalance, and prints the counts divided by the calls; the bare grpc.aio
no-op (bench/bare_noop.py) is counted the same way first, as the floor. At c=1 the writer
takes each RecordUsage alone. Counts, not times: the machine's load does not
change them (background tasks add a few callbacks per second).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bare_noop import READY
from bench.loadgen import BALANCE, NOOP, RECORD, customer_id
from bench.run import SPREAD, TOKEN, create_customers
from metering.domain.access import caller_entry, token_digest
from metering.v1 import usage_pb2
from tests.support import ServiceProcess

SITECUSTOMIZE = """
import os
if os.environ.get("BENCH_COUNT_FILE"):
    import asyncio.events, json, signal, sys
    _counts = {"loop_callbacks": 0, "python_calls": 0, "c_calls": 0}
    _run = asyncio.events.Handle._run
    def _counted_run(self):
        _counts["loop_callbacks"] += 1
        return _run(self)
    asyncio.events.Handle._run = _counted_run
    _by_function = {}
    _detail = bool(os.environ.get("BENCH_COUNT_DETAIL"))
    def _profile(frame, event, arg):
        if event == "call":
            _counts["python_calls"] += 1
            if _detail:
                code = frame.f_code
                key = f"{code.co_filename.rsplit('/site-packages/', 1)[-1].rsplit('/src/', 1)[-1]}:{code.co_name}"
                if os.environ.get("BENCH_COUNT_CALLERS"):
                    back = frame.f_back
                    for _ in range(3):
                        if back is None:
                            break
                        key += f" <- {back.f_code.co_filename.rsplit('/', 1)[-1]}:{back.f_code.co_name}"
                        back = back.f_back
                _by_function[key] = _by_function.get(key, 0) + 1
        elif event == "c_call":
            _counts["c_calls"] += 1
            if _detail:
                key = "C " + getattr(arg, "__qualname__", repr(arg))
                _by_function[key] = _by_function.get(key, 0) + 1
    def _start(signum, frame):
        for key in _counts:
            _counts[key] = 0
        _by_function.clear()
        sys.setprofile(_profile)
    def _stop(signum, frame):
        sys.setprofile(None)
        with open(os.environ["BENCH_COUNT_FILE"], "w") as out:
            json.dump({**_counts, "by_function": _by_function}, out)
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
"""


def counted(
    process: subprocess.Popen[str] | subprocess.Popen[bytes],
    target: str,
    count_file: Path,
    method: str,
    requests: list[bytes],
    *,
    token: str = TOKEN,
) -> dict[str, float]:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, None, None)
        for request in requests[:50]:  # warm-up: caches, pool connections, code paths
            call(request, timeout=10, metadata=metadata)
        count_file.unlink(missing_ok=True)
        process.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        for request in requests[50:]:
            call(request, timeout=10, metadata=metadata)
        process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not count_file.exists() or not count_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the service wrote no counts")
            time.sleep(0.05)
        time.sleep(0.1)
        counts = json.loads(count_file.read_text())
    calls = len(requests) - 50
    detail = sorted(counts.pop("by_function").items(), key=lambda item: -item[1])
    if detail:
        print(f"\n{method}: the most called functions per call")
        for function, times in detail[: int(os.environ.get("BENCH_COUNT_TOP", "40"))]:
            print(f"  {times / calls:7.2f}  {function}")
    return {key: value / calls for key, value in counts.items()}


def _bare(folder: Path, requests: list[bytes], *, detail: bool) -> dict[str, float]:
    """The bare grpc.aio no-op (bench/bare_noop.py: no interceptor, no credentials), counted the same way."""
    count_file = folder / "counts-bare.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(folder / "site"),
        "BENCH_COUNT_FILE": str(count_file),
        **({"BENCH_COUNT_DETAIL": "1"} if detail else {}),
    }
    bare = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "bare_noop.py")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert bare.stdout is not None
        line = bare.stdout.readline()
        if not line.startswith(READY):
            raise RuntimeError(f"the bare no-op server did not start: {line!r}")
        return counted(bare, line.split()[-1], count_file, NOOP, requests, token="")
    finally:
        bare.terminate()
        bare.wait(timeout=30)
        print("(above: bare)")


def records(tag: str, variant: str, n: int) -> list[bytes]:
    return [
        usage_pb2.RecordUsageRequest(
            customer_id=customer_id(tag, i % SPREAD),
            meter_slug="ai_tokens",
            quantity="1",
            transaction_id=f"{tag}-{variant}-{i}",
        ).SerializeToString()
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database it may fill")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--baseline", type=Path, help="a `src` folder whose code runs as the second service")
    parser.add_argument("--detail", action="store_true", help="also print the most called functions per call")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="metering-cost-"))
    (folder / "site").mkdir()
    (folder / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    auth_file = folder / "callers.toml"
    auth_file.write_text(caller_entry("bench", ["recorder", "reader", "admin"], token_digests=[token_digest(TOKEN)]))
    tag = f"cc{time.time_ns() % 10**8}"
    n = args.calls + 50
    methods = {
        "no-op": (NOOP, [b""] * n),
        "RecordUsage": (RECORD, records(tag, "a", n)),
        "CheckBalance": (
            BALANCE,
            [
                usage_pb2.CheckBalanceRequest(
                    customer_id=customer_id(tag, i % SPREAD), meter_slug="ai_tokens"
                ).SerializeToString()
                for i in range(n)
            ],
        ),
    }
    variants = {"this": str(folder / "site")}
    if args.baseline is not None:
        variants["baseline"] = f"{folder / 'site'}{os.pathsep}{args.baseline.resolve()}"
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        results["bare"] = {"no-op": _bare(folder, methods["no-op"][1], detail=args.detail)}
        for name, path in variants.items():
            count_file = folder / f"counts-{name}.json"
            env = {
                "METERING_BENCH_NOOP": "1",
                "METERING_AUTH_FILE": str(auth_file),
                "PYTHONPATH": path,
                "BENCH_COUNT_FILE": str(count_file),
                **({"BENCH_COUNT_DETAIL": "1"} if args.detail else {}),
            }
            service = ServiceProcess(args.database_url, catalog=None, extra_env=env).start()
            try:
                if name == "this":
                    create_customers(service.target, tag)
                assert service.process is not None
                results[name] = {
                    row: counted(service.process, service.target, count_file, method, requests)
                    for row, (method, requests) in methods.items()
                }
                if name == "this":  # the baseline records the same transaction ids: replays, not new events
                    methods["RecordUsage"] = (RECORD, records(tag, "b", n))
            finally:
                service.stop()
                print(f"(above: {name})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nper call, c=1, {args.calls} calls each (counts, not times)")
    print(f"{'service':<10} {'row':<13} {'loop callbacks':>15} {'Python calls':>13} {'C calls':>9}")
    for name, rows in results.items():
        for row, counts in rows.items():
            print(
                f"{name:<10} {row:<13} {counts['loop_callbacks']:>15.1f} {counts['python_calls']:>13.1f} "
                f"{counts['c_calls']:>9.1f}"
            )


if __name__ == "__main__":
    main()
