"""RecordUsage and CheckBalance over HTTP/JSON (Connect) against the same calls over gRPC, one service, one run.

    .venv/bin/python bench/connect.py --database-url URL   # 3 runs of 5 s each, c=64

gRPC: bench/loadgen.py (grpc.aio, --processes processes, c calls in flight).
HTTP: wrk (Debian's `wrk`: `apt-get install wrk`), c HTTP/1.1 keep-alive
connections over --processes threads, each call a Connect JSON POST made unique
by a Lua script (RecordUsage: a transaction id of its own). Both authenticate
with the same bearer token, against the same service, over the same 100
customers. Prints calls/s, p99 and the server's CPU per call (medians of
--runs), then HTTP's ratio to gRPC (target: calls/s >= 0.7). The server's CPU
per call is the figure the load generators cannot skew: on a 2-core machine
they take CPU from the service too, each its own amount.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import BALANCE, RECORD, Scenario, customer_id
from bench.run import SPREAD, TOKEN, Figure, create_customers, measure, server_cpu_seconds
from metering.domain.access import caller_entry, token_digest
from tests.support import ServiceProcess

# The Lua script of one wrk thread: `setup` numbers the threads, `request` builds each body.
WRK_SCRIPT = """
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
local seq = 0
request = function()
  seq = seq + 1
  local customer = string.format("%s", (id * 7919 + seq) % {customers})
  local body = string.format({body}, customer, id, seq)
  return wrk.format("POST", "{path}", {{
    ["content-type"] = "application/json",
    ["authorization"] = "Bearer {token}",
  }}, body)
end
"""
RECORD_BODY = '\'{{"customerId":"{prefix}%s","meterSlug":"ai_tokens","quantity":"1","transactionId":"{run}-%d-%d"}}\''
# Lua's string.format ignores the arguments a format does not use (the thread and sequence here).
BALANCE_BODY = '\'{{"customerId":"{prefix}%s","meterSlug":"ai_tokens"}}\''


@dataclass(frozen=True)
class HttpFigure:
    name: str
    per_second: list[float]
    p99_ms: list[float]
    cpu_us_per_call: list[float]
    failed: int

    def line(self) -> str:
        rates = ", ".join(f"{value:,.0f}" for value in self.per_second)
        return (
            f"{self.name:<34} {statistics.median(self.per_second):>8,.0f} /s ({rates})   "
            f"p99 {statistics.median(self.p99_ms):7.2f} ms   cpu {statistics.median(self.cpu_us_per_call):,.0f} us/call"
            f"{'' if not self.failed else f'   NOT 2xx: {self.failed}'}"
        )


def wrk_script(folder: Path, method: str, tag: str, run: str) -> Path:
    prefix = customer_id(tag, 0)[:-1]  # bench-TAG-
    body = (RECORD_BODY if method == RECORD else BALANCE_BODY).format(prefix=prefix, run=run)
    script = folder / f"{run}.lua"
    script.write_text(WRK_SCRIPT.format(customers=SPREAD, body=body, path=method, token=TOKEN))
    return script


def _duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def measure_http(
    service: ServiceProcess, name: str, method: str, tag: str, args: argparse.Namespace, folder: Path
) -> HttpFigure:
    assert service.process is not None
    per_second, p99, cpu = [], [], []
    failed = 0
    for index in range(args.runs):
        script = wrk_script(folder, method, tag, f"h{tag}{index}{time.time_ns() % 10**6}")
        before = server_cpu_seconds(service.process.pid)
        done = subprocess.run(
            [
                "wrk",
                f"-t{args.processes}",
                f"-c{args.concurrency}",
                f"-d{args.seconds}s",
                "--latency",
                "-s",
                str(script),
                service.http_url,
            ],
            capture_output=True,
            text=True,
            timeout=args.seconds + 60,
            check=True,
        )
        used = server_cpu_seconds(service.process.pid) - before
        output = done.stdout
        requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
        per_second.append(float(re.search(r"Requests/sec:\s+([0-9.]+)", output)[1]))  # type: ignore[index]
        p99.append(_duration_ms(re.search(r"^\s+99%\s+(\S+)$", output, re.MULTILINE)[1]))  # type: ignore[index]
        cpu.append(used / max(1, requests) * 1e6)
        found = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        failed += int(found[1]) if found else 0
    figure = HttpFigure(name, per_second, p99, cpu, failed)
    print(figure.line(), flush=True)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database it may fill")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes (wrk: threads)")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/connect.py needs wrk: apt-get install wrk")
    folder = Path(tempfile.mkdtemp(prefix="metering-http-"))
    auth_file = folder / "callers.toml"
    auth_file.write_text(caller_entry("bench", ["recorder", "reader", "admin"], token_digests=[token_digest(TOKEN)]))
    service = ServiceProcess(args.database_url, catalog=None, extra_env={"METERING_AUTH_FILE": str(auth_file)}).start()
    tag = f"ht{time.time_ns() % 10**8}"
    try:
        create_customers(service.target, tag)
        c = args.concurrency
        print(f"-- one service, c={c}, {args.runs} runs of {args.seconds:g} s; medians --")
        pairs: list[tuple[str, Figure, HttpFigure]] = []
        for name, method in (("RecordUsage, 100 customers", RECORD), ("CheckBalance", BALANCE)):
            scenario = Scenario(f"{name} gRPC", method, customers=SPREAD, customer_tag=tag)
            grpc_figure = measure(service, scenario, c, args, f"{tag}g{len(pairs)}")
            http_figure = measure_http(service, f"{name} HTTP/JSON", method, tag, args, folder)
            pairs.append((name, grpc_figure, http_figure))
        print(f"\n-- HTTP/JSON (Connect, wrk) against gRPC (grpc.aio load generator), c={c} (medians) --")
        for name, grpc_figure, http_figure in pairs:
            grpc_cpu = statistics.median(grpc_figure.cpu_us_per_call)
            http_cpu = statistics.median(http_figure.cpu_us_per_call)
            print(
                f"{name:<28} {statistics.median(http_figure.per_second) / grpc_figure.median:5.2f} of gRPC's calls/s   "
                f"p99 {statistics.median(http_figure.p99_ms) / statistics.median(grpc_figure.p99_ms):5.2f}x gRPC's   "
                f"server cpu {http_cpu:,.0f} vs {grpc_cpu:,.0f} us/call ({grpc_cpu / http_cpu:4.2f} of HTTP's cost)"
            )
    finally:
        code = service.stop()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nserver stopped (exit {code})")


if __name__ == "__main__":
    main()
