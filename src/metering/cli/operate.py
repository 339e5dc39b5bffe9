"""Commands that run or operate the service itself: serve, migrate, audit,
check-catalog, token, healthcheck, webhooks, reload."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import datetime

import grpc

from metering.cli.connection import connection, connection_arguments
from metering.cli.parsing import Subparsers, add_command, subcommands
from metering.config.catalog import load_catalog
from metering.config.settings import ConfigError, Settings


def add_commands(commands: Subparsers) -> None:
    serve = add_command(
        commands,
        "serve",
        "run the gRPC service (settings from METERING_* variables)",
        _serve,
        examples=[
            "metering serve",
            "METERING_WORKERS=auto METERING_DATABASE_URL=postgresql://db/metering metering serve",
        ],
        statuses="  0  stopped (SIGTERM)\n  1  a worker or a background task failed\n  2  a bad setting or file",
    )
    # Set by the supervisor of METERING_WORKERS > 1 for each process it starts (metering.runtime.supervisor).
    serve.add_argument("--worker", type=int, metavar="INDEX", help=argparse.SUPPRESS)

    add_command(
        commands,
        "migrate",
        "apply database migrations and exit",
        _migrate,
        examples=["METERING_DATABASE_URL=postgresql://db/metering metering migrate"],
        statuses="  0  the database is up to date\n  2  a bad setting",
    )

    audit = add_command(
        commands,
        "audit",
        "recompute every counter from the ledger's events and report differences (exit 1 if any)",
        _audit,
        examples=["metering audit", "metering audit --customer acme --customer globex"],
        statuses="  0  the ledger is consistent\n  1  differences found (listed)\n  2  a bad setting",
    )
    audit.add_argument("--customer", action="append", default=None, metavar="ID", help="only these customers")

    check = add_command(
        commands,
        "check-catalog",
        "validate a catalog file and print what it defines",
        _check_catalog,
        examples=["metering check-catalog catalog.toml", "METERING_CATALOG=catalog.toml metering check-catalog"],
        statuses="  0  the catalog is valid\n  2  it is not (every problem is listed)",
    )
    check.add_argument("path", nargs="?", help="catalog TOML (default: METERING_CATALOG, else the sample)")

    healthcheck = add_command(
        commands,
        "healthcheck",
        "exit 0 if the local service answers SERVING to a gRPC health check (for HEALTHCHECK)",
        _healthcheck,
        examples=["metering healthcheck", "metering healthcheck --target 10.0.0.7:50051"],
        statuses="  0  SERVING\n  1  anything else, or no answer",
    )
    healthcheck.add_argument("--target", help="host:port (default: 127.0.0.1 and METERING_GRPC_PORT)")
    connection_arguments(healthcheck, target=False)

    reload = add_command(
        commands,
        "reload",
        "make the running service re-read METERING_CATALOG, METERING_AUTH_FILE and METERING_WEBHOOKS_FILE "
        "(sends it SIGHUP)",
        _reload,
        examples=["metering reload", "metering reload --pid 4242"],
        statuses="  0  SIGHUP sent (the service's log says what it applied)\n  2  no such process or pid file",
    )
    reload.add_argument("--pid", type=int, help="the service's process id (default: read from METERING_PID_FILE)")

    webhooks = add_command(commands, "webhooks", "operate webhook delivery (METERING_WEBHOOKS_FILE)", None)
    webhook_commands = subcommands(webhooks, "webhooks_command")
    replay = add_command(
        webhook_commands,
        "replay",
        "send an endpoint's dead letters again (a fresh schedule of attempts)",
        _webhooks_replay,
        examples=["metering webhooks replay --endpoint billing-app --since 2026-11-20T00:00:00Z"],
        statuses="  0  queued again\n  2  a bad setting or an unknown endpoint",
    )
    replay.add_argument("--endpoint", required=True, metavar="NAME", help="the endpoint's name in the file")
    replay.add_argument(
        "--since", metavar="TIME", help="only notifications written at or after this RFC 3339 time (default: all)"
    )

    token = add_command(commands, "token", "make caller tokens for METERING_AUTH_FILE", None)
    token_commands = subcommands(token, "token_command")
    new_token = add_command(
        token_commands,
        "new",
        "print a new random token (give it to the caller) and its METERING_AUTH_FILE entry",
        _token_new,
        examples=["metering token new billing-app --role recorder --role reader >> auth.toml"],
        statuses="  0  done\n  2  bad arguments",
    )
    new_token.add_argument("name", help="the caller's name (in metrics and errors)")
    new_token.add_argument("--role", action="append", required=True, choices=["recorder", "reader", "admin"])
    new_token.add_argument("--meter", action="append", default=[], help="restrict the token to these meters")
    add_command(
        token_commands,
        "digest",
        "print the SHA-256 digest of the token read from stdin",
        _token_digest,
        examples=['echo "$METERING_TOKEN" | metering token digest'],
        statuses="  0  done",
    )


def _serve(args: argparse.Namespace) -> int:
    from metering.runtime.serve import BackgroundFailed, configure_logging, event_loop_factory, serve
    from metering.runtime.supervisor import WorkerFailed, die_with_parent, supervise

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    # Every serving process runs on METERING_EVENT_LOOP's loop; a supervisor only waits.
    loop_factory = event_loop_factory(settings.event_loop)
    try:
        if args.worker is not None:
            die_with_parent()
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(serve(settings, worker=args.worker))
        elif settings.workers > 1:
            asyncio.run(supervise(settings))
        else:  # one process serves by itself: no supervisor in between
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(serve(settings))
    except (WorkerFailed, BackgroundFailed) as exc:
        print(f"metering: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from metering.runtime.database import open_database, run_migrations
    from metering.runtime.serve import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    database = open_database(settings)
    try:
        applied = asyncio.run(run_migrations(settings, database.url))
    finally:
        database.close()
    print("applied: " + ", ".join(applied) if applied else "the database is up to date")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from metering.runtime.database import audit, open_database
    from metering.runtime.serve import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    catalog = load_catalog(settings.catalog_path)
    database = open_database(settings)
    try:
        report = asyncio.run(audit(settings, database.url, catalog, args.customer))
    finally:
        database.close()
    print(
        f"customers {report.customers}, events {report.events} ({report.voided} voided), counters {report.counters}; "
        f"duplicate transaction ids {report.duplicate_transaction_ids}, counter mismatches {len(report.mismatches)}, "
        f"unique-value mismatches {report.unique_value_mismatches}, events of unknown meters "
        f"{report.unknown_meter_events}, committed reservations without event {report.dangling_commits}, "
        f"events or counters without their customer {report.orphan_rows}; "
        f"rollup buckets {report.rollups}, rollup mismatches {len(report.rollup_mismatches)}; "
        f"credit notes {report.credit_notes}, credited above invoiced {len(report.credit_overruns)}, "
        f"credit note amounts unlike their lines {report.credit_note_amount_mismatches}"
    )
    for m in report.mismatches:
        print(
            f"  MISMATCH {m.customer_id} {m.meter_slug} period {m.period_start.isoformat()}: counter "
            f"{m.stored_used} ({m.stored_events} events), events say {m.expected_used} ({m.expected_events} events)"
        )
    for r in report.rollup_mismatches:
        value = f" value {r.value!r}" if r.value is not None else ""
        print(
            f"  ROLLUP MISMATCH {r.customer_id} {r.meter_slug} hour {r.hour.isoformat()} price {r.price_slug} "
            f"dimensions {r.dimensions}{value}: the bucket differs from its events"
        )
    for c in report.credit_overruns:
        line = f"line {c.meter_slug} at {c.price_slug}" if c.meter_slug else "total"
        print(
            f"  CREDIT OVERRUN {c.customer_id} invoice {c.invoice_id} {line}: credited {c.credited}, "
            f"invoiced {c.invoiced if c.invoiced is not None else 'nothing'}"
        )
    print("ledger consistent" if report.ok else "LEDGER INCONSISTENT")
    return 0 if report.ok else 1


def _check_catalog(args: argparse.Namespace) -> int:
    path = args.path or Settings.from_env().catalog_path
    catalog = load_catalog(path)
    print(f"catalog {catalog.source} is valid:")
    print(f"  meters: {', '.join(catalog.meters)}")
    print(f"  prices: {', '.join(catalog.prices)}")
    for plan in catalog.plans.values():
        terms = ", ".join(
            f"{t.meter} ({'unlimited' if t.limit is None else f'{t.enforcement.value} limit {t.limit}'} "
            f"per {t.reset.value})"
            for t in plan.meters.values()
        )
        print(f"  plan {plan.slug}: {terms}")
    return 0


def _reload(args: argparse.Namespace) -> int:
    pid = args.pid
    if pid is None:
        path = Settings.from_env().pid_file
        if path is None:
            raise ConfigError("metering reload: give --pid, or set METERING_PID_FILE as for `metering serve`")
        try:
            with open(path, encoding="ascii") as file:
                pid = int(file.read().strip())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"METERING_PID_FILE={path!r}: no process id in it ({exc}); is the service running?"
            ) from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ConfigError(f"no process {pid}: is the service running?") from None
    except PermissionError:
        raise ConfigError(f"process {pid} belongs to another user: run this as the service's user") from None
    print(
        f"sent SIGHUP to process {pid}: it re-reads its catalog, auth and webhooks files; its log (and "
        "metering_config_reloads_total) says whether each was applied or refused"
    )
    return 0


def _webhooks_replay(args: argparse.Namespace) -> int:
    from metering.config.endpoints import load_endpoints
    from metering.runtime.database import open_database, replay_dead_letters
    from metering.runtime.serve import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    if settings.webhooks_file is not None:
        names = [endpoint.name for endpoint in load_endpoints(settings.webhooks_file)]
        if args.endpoint not in names:
            raise ConfigError(f"--endpoint {args.endpoint!r}: not in METERING_WEBHOOKS_FILE (it has {names})")
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise ConfigError(
                f"--since {args.since!r}: expected an RFC 3339 time such as 2026-01-31T00:00:00Z"
            ) from None
        if since.tzinfo is None:
            raise ConfigError(f"--since {args.since!r}: give the time zone (Z or an offset)")
    database = open_database(settings)
    try:
        replayed = asyncio.run(replay_dead_letters(settings, database.url, args.endpoint, since))
    finally:
        database.close()
    print(f"endpoint {args.endpoint}: {replayed} dead letters queued again")
    return 0


def _token_new(args: argparse.Namespace) -> int:
    from metering.domain.access import caller_entry, new_token, token_digest

    token = new_token()
    print(f"token (give it to {args.name}; it is not stored anywhere): {token}", file=sys.stderr)
    entry = caller_entry(args.name, set(args.role), token_digests=[token_digest(token)], meters=args.meter)
    print(entry, end="")
    return 0


def _token_digest(args: argparse.Namespace) -> int:
    from metering.domain.access import token_digest

    print(token_digest(sys.stdin.readline().strip()))
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = args.target or f"127.0.0.1:{Settings.from_env().grpc_port}"
    with connection(args, target).sync_channel() as open_channel:
        try:
            response = health_pb2_grpc.HealthStub(open_channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}", file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(name)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1
