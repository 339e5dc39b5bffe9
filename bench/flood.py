"""Fair sharing: a second caller's latency while one caller floods the service.

    .venv/bin/python bench/flood.py                      # embedded PostgreSQL (~2 min)
    .venv/bin/python bench/flood.py --database-url URL
    .venv/bin/python bench/flood.py --smoke              # seconds: checks that it runs
    .venv/bin/python bench/flood.py --short-deadlines    # 96 tasks, 0.3 s deadlines, limited to 20/s

One server, authentication on, two callers. `steady` sends RecordUsage with
--steady-concurrency calls in flight and has no limits; `flooder` sends
RecordUsage with --flood-concurrency calls in flight, from a process of its
own, under its limits (--flood-rate per second, burst --flood-burst,
--flood-in-flight at once). Four phases, each --runs times:

  unloaded            steady alone
  flood, ignoring     steady while the flooder floods and resends every refused
                      call at once (RetryInfo unread: the worst case)
  flood, backing off  the same, but each of the flooder's loops waits the
                      refusal's grpc-retry-pushback-ms (= RetryInfo) before it
                      sends again, as a gRPC retry policy does
  flood, no limits    the ignoring flood after a SIGHUP reload without the
                      flooder's limits (what the limits protect against)

--short-deadlines reproduces the flood of issue 23: 96 tasks whose calls
each have a 0.3 s deadline, against a flooder limited to 20/s (burst 20, no
in-flight cap), resending at once; its refusals are held (METERING_RATE_LIMIT_HOLD)
within their deadline, so it sends about 390 calls/s. Its phases: unloaded,
the flood, and the flood alone, for the server's CPU it costs (in cores).

Reported: steady's p50/p99 in each phase and the ratio of its p99 under the
flood to its unloaded p99 (goal: within 2x), and what the flooder got
(admitted and refused calls per second). Figures are medians of the runs
with [min-max]. The limits are per process (README, Security).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.support` and `bench.loadgen`

from bench.loadgen import RECORD, LoadResult, Scenario, cpu_seconds, customer_id, run
from bench.run import machine_state
from metering.api.errors import PUSHBACK_KEY
from metering.domain.access import caller_entry, new_token, token_digest
from metering.runtime.embedded import start_embedded
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, metric_value

IGNORING, BACKING_OFF, NO_LIMITS = "flood, ignoring", "flood, backing off", "flood, no limits"
FLOODS = (IGNORING, BACKING_OFF, NO_LIMITS)
PLAN = "pro"  # ai_tokens: hard limit 20,000,000 a month: enforcement on, never reached
CUSTOMERS = 20


def auth_file_text(tokens: dict[str, str], args: argparse.Namespace, *, limits: bool) -> str:
    text = caller_entry("steady", ["recorder", "reader", "admin"], token_digests=[token_digest(tokens["steady"])])
    text += caller_entry("flooder", ["recorder"], token_digests=[token_digest(tokens["flooder"])])
    if limits:
        text += f"requests_per_second = {args.flood_rate}\nburst = {args.flood_burst}\n"
        if args.flood_in_flight:
            text += f"max_in_flight = {args.flood_in_flight}\n"
    return text


def create_customers(target: str, token: str, tag: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        for index in range(CUSTOMERS):
            stub.UpsertCustomer(
                customer_pb2.UpsertCustomerRequest(customer_id=customer_id(tag, index), plan_slug=PLAN),
                timeout=30,
                metadata=(("authorization", f"Bearer {token}"),),
            )


def steady_alone(target: str, token: str, args: argparse.Namespace, tag: str) -> LoadResult:
    scenario = Scenario("steady", RECORD, customers=CUSTOMERS, customer_tag=tag)
    return run(
        target,
        scenario,
        concurrency=args.steady_concurrency,
        seconds=args.seconds,
        processes=1,
        run_tag=f"s-{uuid.uuid4().hex[:8]}",
        token=token,
    )


@dataclass(frozen=True)
class FloodResult:
    seconds: float
    admitted: int
    refused: int
    other_errors: dict[str, int]


async def _flood(
    target: str,
    token: str,
    tag: str,
    concurrency: int,
    seconds: float,
    back_off: bool,
    call_timeout: float,
    ready: Any,
) -> FloodResult:
    metadata = (("authorization", f"Bearer {token}"),)
    identity: Callable[[bytes], bytes] = lambda raw: raw  # noqa: E731 - responses stay undecoded
    run_tag = uuid.uuid4().hex[:8]
    admitted = refused = 0
    other: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=60)
        call = channel.unary_unary(RECORD, request_serializer=identity, response_deserializer=identity)
        ready.set()
        deadline = time.monotonic() + seconds

        async def loop(worker: int) -> None:
            nonlocal admitted, refused
            seq = 0
            while time.monotonic() < deadline:
                request = usage_pb2.RecordUsageRequest(
                    customer_id=customer_id(tag, (worker + seq) % CUSTOMERS),
                    meter_slug="ai_tokens",
                    quantity="1",
                    transaction_id=f"flood-{run_tag}-{worker}-{seq}",
                )
                seq += 1
                try:
                    await call(request.SerializeToString(), timeout=call_timeout, metadata=metadata)
                    admitted += 1
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        other[error.code().name] = other.get(error.code().name, 0) + 1
                        continue
                    refused += 1
                    if back_off:
                        # grpcio's stubs type metadata as objects; they are (key, value) pairs.
                        trailer = cast("list[tuple[str, str]]", list(error.trailing_metadata() or ()))
                        pushback = [value for key, value in trailer if key == PUSHBACK_KEY]
                        await asyncio.sleep(int(pushback[0]) / 1000 if pushback else 0.05)

        await asyncio.gather(*(loop(worker) for worker in range(concurrency)))
    return FloodResult(seconds, admitted, refused, other)


def _flood_process(job: tuple[str, str, str, int, float, bool, float], ready: Any, results: Any) -> None:
    results.put(asyncio.run(_flood(*job, ready)))


def under_flood(
    target: str, tokens: dict[str, str], args: argparse.Namespace, tag: str, *, back_off: bool
) -> tuple[LoadResult, FloodResult]:
    """Steady's run inside the flood's: the flood starts first and ends last."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    job = (
        target,
        tokens["flooder"],
        tag,
        args.flood_concurrency,
        args.seconds + 2 * args.lead,
        back_off,
        args.flood_deadline,
    )
    flooder = context.Process(target=_flood_process, args=(job, ready, results))
    flooder.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the flooder did not connect")
        time.sleep(args.lead)  # the flood is on before steady starts
        steady = steady_alone(target, tokens["steady"], args, tag)
        flood: FloodResult = results.get(timeout=args.seconds + 2 * args.lead + 120)
    finally:
        flooder.join(timeout=10)
        if flooder.is_alive():
            flooder.kill()
    return steady, flood


def flood_alone(
    target: str, tokens: dict[str, str], args: argparse.Namespace, tag: str, pid: int
) -> tuple[FloodResult, float]:
    """The flood with nothing else running: what it got, and the server's CPU over it (cores)."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    seconds = args.seconds + 2 * args.lead
    job = (target, tokens["flooder"], tag, args.flood_concurrency, seconds, False, args.flood_deadline)
    flooder = context.Process(target=_flood_process, args=(job, ready, results))
    flooder.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the flooder did not connect")
        before, started = cpu_seconds(pid), time.monotonic()
        flood: FloodResult = results.get(timeout=seconds + 120)
        cores = (cpu_seconds(pid) - before) / (time.monotonic() - started)
    finally:
        flooder.join(timeout=10)
        if flooder.is_alive():
            flooder.kill()
    return flood, cores


def execute_short(url: str, args: argparse.Namespace) -> None:
    """--short-deadlines: steady alone, under the flood, and the flood alone."""
    tokens = {"steady": new_token(), "flooder": new_token()}
    folder = tempfile.mkdtemp(prefix="metering-flood-")
    auth_file = Path(folder) / "callers.toml"
    auth_file.write_text(auth_file_text(tokens, args, limits=True))
    service = ServiceProcess(url, catalog=None, extra_env={"METERING_AUTH_FILE": str(auth_file)}).start()
    assert service.process is not None
    pid = service.process.pid
    tag = uuid.uuid4().hex[:8]
    alone: list[LoadResult] = []
    flooded: list[tuple[LoadResult, FloodResult]] = []
    floods: list[tuple[FloodResult, float]] = []
    cpu_alone: list[float] = []
    try:
        create_customers(service.target, tokens["steady"], tag)
        steady_alone(service.target, tokens["steady"], args, tag)  # warm-up, not reported
        for _ in range(args.runs):
            before = cpu_seconds(pid)
            alone.append(steady_alone(service.target, tokens["steady"], args, tag))
            cpu_alone.append((cpu_seconds(pid) - before) / args.seconds)
            flooded.append(under_flood(service.target, tokens, args, tag, back_off=False))
            floods.append(flood_alone(service.target, tokens, args, tag, pid))
    finally:
        code = service.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{'phase':<18} {'steady p50 ms':>24} {'steady p99 ms':>24} {'steady calls/s':>24}  steady errors")
    for name, results in (("unloaded", alone), ("flood", [s for s, _ in flooded])):
        errors = sum(sum(r.errors.values()) for r in results)
        print(
            f"{name:<18} {spread([r.p50_ms for r in results]):>24} {spread([r.p99_ms for r in results]):>24} "
            f"{spread([r.calls_per_second for r in results]):>24}  {errors}"
        )
    print(f"\n{'flooder':<18} {'admitted/s':>24} {'refused/s':>24} {'other/s':>24}  other")
    for name, got in (("under steady", [f for _, f in flooded]), ("alone", [f for f, _ in floods])):
        other: dict[str, int] = {}
        for f in got:
            for key, count in f.other_errors.items():
                other[key] = other.get(key, 0) + count
        print(
            f"{name:<18} {spread([f.admitted / f.seconds for f in got]):>24} "
            f"{spread([f.refused / f.seconds for f in got]):>24} "
            f"{spread([sum(f.other_errors.values()) / f.seconds for f in got]):>24}  {other}"
        )
    print(f"\nserver CPU, steady alone:  {spread(cpu_alone)} cores")
    print(f"server CPU, the flood alone: {spread([c for _, c in floods])} cores")
    ratio = statistics.median(s.p99_ms for s, _ in flooded) / statistics.median(r.p99_ms for r in alone)
    print(f"steady p99 under the flood / unloaded: {ratio:.2f}  (goal <= 2.00: {'met' if ratio <= 2 else 'missed'})")
    print(f"\nserver stopped (exit {code})")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} [{min(values):.2f}-{max(values):.2f}]"


def reload_auth(service: ServiceProcess, auth_file: Path, text: str) -> None:
    before = metric_value(service.scrape(), "metering_config_reloads_total", file="auth", outcome="applied")
    auth_file.write_text(text)
    assert service.process is not None
    service.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while metric_value(service.scrape(), "metering_config_reloads_total", file="auth", outcome="applied") <= before:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not reload its auth file")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary embedded server)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each steady run")
    parser.add_argument("--lead", type=float, default=2.0, help="seconds the flood runs before and after steady's")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steady-concurrency", type=int, default=4)
    parser.add_argument("--flood-concurrency", type=int, default=64)
    parser.add_argument("--flood-rate", type=float, default=100.0, help="the flooder's requests_per_second")
    parser.add_argument("--flood-burst", type=int, default=50)
    parser.add_argument("--flood-in-flight", type=int, default=4, help="0: no cap")
    parser.add_argument("--flood-deadline", type=float, default=30.0, help="seconds: each flooder call's deadline")
    parser.add_argument(
        "--short-deadlines",
        action="store_true",
        help="issue 23's flood: 96 tasks, 0.3 s deadlines, 20/s burst 20, no in-flight cap; flood CPU",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    if args.short_deadlines:
        args.flood_concurrency, args.flood_deadline = 96, 0.3
        args.flood_rate, args.flood_burst, args.flood_in_flight = 20.0, 20, 0
    if args.smoke:
        args.seconds, args.lead, args.runs, args.flood_concurrency = 0.5, 0.5, 1, 8
    print(f"machine before the run: {machine_state()}")
    print(
        f"settings: {args.runs} runs of {args.seconds:g} s; steady c={args.steady_concurrency}, no limits; "
        f"flooder c={args.flood_concurrency} from a process of its own, limits "
        f"{args.flood_rate:g}/s burst {args.flood_burst} in flight {args.flood_in_flight}; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    run_all = execute_short if args.short_deadlines else execute
    if args.database_url:
        run_all(args.database_url, args)
        return
    with tempfile.TemporaryDirectory() as folder:
        embedded = start_embedded(f"{folder}/pg", delete_on_stop=True)
        try:
            run_all(embedded.uri(), args)
        finally:
            embedded.stop()


def execute(url: str, args: argparse.Namespace) -> None:
    tokens = {"steady": new_token(), "flooder": new_token()}
    folder = tempfile.mkdtemp(prefix="metering-flood-")
    auth_file = Path(folder) / "callers.toml"
    auth_file.write_text(auth_file_text(tokens, args, limits=True))
    service = ServiceProcess(url, catalog=None, extra_env={"METERING_AUTH_FILE": str(auth_file)}).start()
    tag = uuid.uuid4().hex[:8]
    try:
        create_customers(service.target, tokens["steady"], tag)
        steady_alone(service.target, tokens["steady"], args, tag)  # warm-up, not reported
        phases: dict[str, list[tuple[LoadResult, FloodResult | None]]] = {
            "unloaded": [],
            IGNORING: [],
            BACKING_OFF: [],
        }
        for _ in range(args.runs):
            phases["unloaded"].append((steady_alone(service.target, tokens["steady"], args, tag), None))
            phases[IGNORING].append(under_flood(service.target, tokens, args, tag, back_off=False))
            phases[BACKING_OFF].append(under_flood(service.target, tokens, args, tag, back_off=True))
        scraped = service.scrape()
        reload_auth(service, auth_file, auth_file_text(tokens, args, limits=False))
        phases[NO_LIMITS] = [under_flood(service.target, tokens, args, tag, back_off=False) for _ in range(args.runs)]
    finally:
        code = service.stop()
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\n{'phase':<18} {'steady p50 ms':>24} {'steady p99 ms':>24} {'steady calls/s':>24}  steady errors")
    for name, results in phases.items():
        steady = [s for s, _ in results]
        errors = sum(sum(s.errors.values()) for s in steady)
        print(
            f"{name:<18} {spread([s.p50_ms for s in steady]):>24} {spread([s.p99_ms for s in steady]):>24} "
            f"{spread([s.calls_per_second for s in steady]):>24}  {errors}"
        )
    print(f"\n{'phase':<18} {'flooder admitted/s':>24} {'flooder refused/s':>24}  other errors")
    for name in FLOODS:
        floods = [f for _, f in phases[name] if f is not None]
        admitted = [f.admitted / f.seconds for f in floods]
        refused = [f.refused / f.seconds for f in floods]
        other: dict[str, int] = {}
        for f in floods:
            for key, count in f.other_errors.items():
                other[key] = other.get(key, 0) + count
        print(f"{name:<18} {spread(admitted):>24} {spread(refused):>24}  {other}")
    counted = {
        reason: metric_value(scraped, "metering_rate_limited_total", caller="flooder", reason=reason)
        for reason in ("rate", "concurrency")
    }
    print(f"metering_rate_limited_total{{caller=flooder}} before the reload: {counted}")

    unloaded = statistics.median(s.p99_ms for s, _ in phases["unloaded"])
    for name in FLOODS:
        flooded = statistics.median(s.p99_ms for s, _ in phases[name])
        verdict = "" if name == NO_LIMITS else f"  (goal <= 2.00: {'met' if flooded <= 2 * unloaded else 'missed'})"
        print(f"steady p99 under {name!r} / unloaded: {flooded / unloaded:.2f}{verdict}")
    print(f"\nserver stopped (exit {code})")


if __name__ == "__main__":
    main()
