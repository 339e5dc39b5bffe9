"""The `metering` command: serve, migrate, check-catalog, and a client for humans."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from metering.catalog import CatalogError, load_catalog
from metering.config import ConfigError, Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (ConfigError, CatalogError) as exc:
        print(f"metering: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metering", description="Usage-metering gRPC service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC service (settings from METERING_* variables)")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.set_defaults(run=_migrate)

    audit = commands.add_parser(
        "audit", help="recompute every counter from the ledger's events and report differences (exit 1 if any)"
    )
    audit.add_argument("--customer", action="append", default=None, metavar="ID", help="only these customers")
    audit.set_defaults(run=_audit)

    check = commands.add_parser("check-catalog", help="validate a catalog file and print what it defines")
    check.add_argument("path", nargs="?", help="catalog TOML (default: METERING_CATALOG, else the sample)")
    check.set_defaults(run=_check_catalog)

    healthcheck = commands.add_parser(
        "healthcheck", help="exit 0 if the local service answers SERVING to a gRPC health check (for HEALTHCHECK)"
    )
    healthcheck.add_argument("--target", help="host:port (default: 127.0.0.1 and METERING_GRPC_PORT)")
    _connection_arguments(healthcheck)
    healthcheck.set_defaults(run=_healthcheck)

    token = commands.add_parser("token", help="make caller tokens for METERING_AUTH_FILE")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    new_token = token_commands.add_parser(
        "new", help="print a new random token (give it to the caller) and its METERING_AUTH_FILE entry"
    )
    new_token.add_argument("name", help="the caller's name (in metrics and errors)")
    new_token.add_argument("--role", action="append", required=True, choices=["recorder", "reader", "admin"])
    new_token.add_argument("--meter", action="append", default=[], help="restrict the token to these meters")
    new_token.set_defaults(run=_token_new)
    digest = token_commands.add_parser("digest", help="print the SHA-256 digest of the token read from stdin")
    digest.set_defaults(run=_token_digest)

    client = commands.add_parser("client", help="call a running service and print the answer as JSON")
    client.add_argument("--target", default="127.0.0.1:50051", help="host:port of the service")
    _connection_arguments(client)
    calls = client.add_subparsers(dest="call", required=True)

    customer = calls.add_parser("upsert-customer", help="create a customer or change its plan")
    customer.add_argument("customer_id")
    customer.add_argument("plan_slug")
    customer.set_defaults(run=_client_upsert_customer)

    record = calls.add_parser("record", help="record one usage event")
    record.add_argument("customer_id")
    record.add_argument("meter_slug")
    record.add_argument("quantity", nargs="?", default="", help="decimal string; empty for counting meters")
    record.add_argument("--transaction-id", help="idempotency key (default: a new UUID)")
    record.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    record.add_argument("--allow-overage", action="store_true", help="record past a hard limit")
    record.set_defaults(run=_client_record)

    balance = calls.add_parser("balance", help="show a customer's balances")
    balance.add_argument("customer_id")
    balance.add_argument("meter_slug", nargs="?", default="")
    balance.add_argument("--requested", default="", help="quantity about to be used")
    balance.set_defaults(run=_client_balance)

    usage = calls.add_parser("usage", help="aggregated usage of one or more meters (first page)")
    usage.add_argument("customer_id")
    usage.add_argument("meter_slugs", nargs="+")
    usage.add_argument("--window", choices=["hour", "day", "month"], help="window size (default: the whole range)")
    usage.add_argument("--time-zone", default="", help="IANA time zone for day and month windows")
    usage.add_argument("--group-by", action="append", default=[], metavar="PROPERTY")
    usage.add_argument("--start", help="RFC 3339 start (default: the current period)")
    usage.add_argument("--end", help="RFC 3339 end (default: now)")
    usage.set_defaults(run=_client_usage)

    events = calls.add_parser("events", help="a customer's raw events, newest first (first page)")
    events.add_argument("customer_id")
    events.add_argument("meter_slug", nargs="?", default="")
    events.add_argument("--page-size", type=int, default=20)
    events.set_defaults(run=_client_events)

    grant = calls.add_parser("grant", help="grant units of a meter (credits)")
    grant.add_argument("customer_id")
    grant.add_argument("meter_slug")
    grant.add_argument("quantity")
    grant.add_argument("--grant-id", help="idempotency key (default: a new UUID)")
    grant.add_argument("--until-period-end", action="store_true", help="expire at the end of the current period")
    grant.add_argument("--reason", default="")
    grant.set_defaults(run=_client_grant)

    grants = calls.add_parser("grants", help="a customer's grants and what is left of each")
    grants.add_argument("customer_id")
    grants.add_argument("--all", action="store_true", help="include expired grants")
    grants.set_defaults(run=_client_grants)

    reserve = calls.add_parser("reserve", help="hold units of a sum meter before expensive work")
    reserve.add_argument("customer_id")
    reserve.add_argument("meter_slug")
    reserve.add_argument("quantity")
    reserve.add_argument("reservation_id")
    reserve.add_argument("--ttl", type=float, default=300.0, help="seconds to hold (default 300)")
    reserve.set_defaults(run=_client_reserve)

    commit = calls.add_parser("commit", help="record the actual usage of a reservation")
    commit.add_argument("customer_id")
    commit.add_argument("reservation_id")
    commit.add_argument("quantity", nargs="?", default="", help="at most the reserved quantity (default: all)")
    commit.set_defaults(run=_client_commit)

    release = calls.add_parser("release", help="free a reservation without recording usage")
    release.add_argument("customer_id")
    release.add_argument("reservation_id")
    release.set_defaults(run=_client_release)

    void = calls.add_parser("void", help="void a recorded event (a compensating ledger entry)")
    void.add_argument("customer_id")
    void.add_argument("transaction_id")
    void.add_argument("reason")
    void.set_defaults(run=_client_void)

    bill = calls.add_parser("bill", help="estimate the bill of the current (or a past) period")
    bill.add_argument("customer_id")
    bill.add_argument("--period-time", help="RFC 3339 instant inside the period (default: now)")
    bill.set_defaults(run=_client_bill)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from metering.app import configure_logging, serve

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from metering.app import configure_logging, open_database, run_migrations

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    database = open_database(settings)
    try:
        applied = asyncio.run(run_migrations(settings, database.url))
    finally:
        database.close()
    print("applied: " + ", ".join(applied) if applied else "the database is up to date")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from metering.app import audit, configure_logging, open_database

    settings = Settings.from_env()
    configure_logging(settings.log_level)
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
        f"{report.unknown_meter_events}, committed reservations without event {report.dangling_commits}"
    )
    for m in report.mismatches:
        print(
            f"  MISMATCH {m.customer_id} {m.meter_slug} period {m.period_start.isoformat()}: counter "
            f"{m.stored_used} ({m.stored_events} events), events say {m.expected_used} ({m.expected_events} events)"
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


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--token", default=env("METERING_TOKEN"), help="bearer token (default: METERING_TOKEN)")
    parser.add_argument(
        "--tls-ca",
        default=env("METERING_CLIENT_TLS_CA"),
        help="PEM CA that signed the server's certificate; turns TLS on (default: METERING_CLIENT_TLS_CA)",
    )
    parser.add_argument("--tls-cert", default=env("METERING_CLIENT_TLS_CERT"), help="PEM client certificate for mTLS")
    parser.add_argument("--tls-key", default=env("METERING_CLIENT_TLS_KEY"), help="PEM key of --tls-cert")
    parser.add_argument(
        "--tls-server-name", default=env("METERING_CLIENT_TLS_SERVER_NAME"), help="name the server certificate names"
    )


def _channel(args: argparse.Namespace, target: str) -> grpc.Channel:
    """A channel with the connection arguments: plaintext unless a CA is given."""
    if not args.tls_ca:
        return grpc.insecure_channel(target)

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as file:
            return file.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca), private_key=read(args.tls_key), certificate_chain=read(args.tls_cert)
    )
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def _token_new(args: argparse.Namespace) -> int:
    from metering.access import new_token, token_digest

    token = new_token()
    print(f"token (give it to {args.name}; it is not stored anywhere): {token}", file=sys.stderr)
    print(f"[callers.{args.name}]")
    # JSON lists of strings are valid TOML.
    print(f"roles = {json.dumps(sorted(set(args.role)))}")
    print(f"token_sha256 = {json.dumps([token_digest(token)])}")
    if args.meter:
        print(f"meters = {json.dumps(args.meter)}")
    return 0


def _token_digest(args: argparse.Namespace) -> int:
    from metering.access import token_digest

    print(token_digest(sys.stdin.readline().strip()))
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = args.target or f"127.0.0.1:{Settings.from_env().grpc_port}"
    with _channel(args, target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}", file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(name)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _call(args: argparse.Namespace, method: str, request: Message) -> int:
    from metering.v1 import metering_service_pb2_grpc

    with _channel(args, args.target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        try:
            response = getattr(stub, method)(request, timeout=10, metadata=_metadata(args))
        except grpc.RpcError as error:
            _print_error(error)
            return 1
    print(json_format.MessageToJson(response, preserving_proto_field_name=True))
    return 0


def _print_error(error: grpc.RpcError) -> None:
    assert isinstance(error, grpc.Call)
    print(f"{error.code().name}: {error.details()}", file=sys.stderr)
    from metering.api.errors import read_details

    for name, message in (read_details(error) or {}).items():
        body = json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)
        print(f"  {name}: {body}", file=sys.stderr)


def _client_upsert_customer(args: argparse.Namespace) -> int:
    from metering.v1 import customer_pb2

    return _call(
        args,
        "UpsertCustomer",
        customer_pb2.UpsertCustomerRequest(customer_id=args.customer_id, plan_slug=args.plan_slug),
    )


def _client_record(args: argparse.Namespace) -> int:
    from metering.v1 import usage_pb2

    properties = dict(item.split("=", 1) for item in args.property)
    request = usage_pb2.RecordUsageRequest(
        customer_id=args.customer_id,
        meter_slug=args.meter_slug,
        quantity=args.quantity,
        transaction_id=args.transaction_id or str(uuid.uuid4()),
        properties=properties,
        enforcement_mode=(
            usage_pb2.ENFORCEMENT_MODE_ALLOW_OVERAGE if args.allow_overage else usage_pb2.ENFORCEMENT_MODE_ENFORCE_LIMIT
        ),
    )
    return _call(args, "RecordUsage", request)


def _client_usage(args: argparse.Namespace) -> int:
    from metering.v1 import usage_pb2

    windows = {
        "hour": usage_pb2.WINDOW_SIZE_HOUR,
        "day": usage_pb2.WINDOW_SIZE_DAY,
        "month": usage_pb2.WINDOW_SIZE_MONTH,
    }
    request = usage_pb2.GetUsageRequest(
        customer_id=args.customer_id,
        meter_slugs=args.meter_slugs,
        window_size=windows[args.window] if args.window else usage_pb2.WINDOW_SIZE_UNSPECIFIED,
        time_zone=args.time_zone,
        group_by=args.group_by,
    )
    if args.start:
        request.start_time.FromJsonString(args.start)
    if args.end:
        request.end_time.FromJsonString(args.end)
    return _call(args, "GetUsage", request)


def _client_events(args: argparse.Namespace) -> int:
    from metering.v1 import events_pb2

    request = events_pb2.ListUsageEventsRequest(
        customer_id=args.customer_id, meter_slug=args.meter_slug, page_size=args.page_size
    )
    return _call(args, "ListUsageEvents", request)


def _client_bill(args: argparse.Namespace) -> int:
    from metering.v1 import billing_pb2

    request = billing_pb2.EstimateBillRequest(customer_id=args.customer_id)
    if args.period_time:
        request.period_time.FromJsonString(args.period_time)
    return _call(args, "EstimateBill", request)


def _client_grant(args: argparse.Namespace) -> int:
    from metering.v1 import grants_pb2

    request = grants_pb2.GrantCreditsRequest(
        customer_id=args.customer_id,
        meter_slug=args.meter_slug,
        quantity=args.quantity,
        grant_id=args.grant_id or str(uuid.uuid4()),
        expire_at_period_end=args.until_period_end,
        reason=args.reason,
    )
    return _call(args, "GrantCredits", request)


def _client_grants(args: argparse.Namespace) -> int:
    from metering.v1 import grants_pb2

    request = grants_pb2.ListGrantsRequest(customer_id=args.customer_id, include_expired=args.all)
    return _call(args, "ListGrants", request)


def _client_reserve(args: argparse.Namespace) -> int:
    from google.protobuf.duration_pb2 import Duration

    from metering.v1 import reservations_pb2

    ttl = Duration()
    ttl.FromNanoseconds(int(args.ttl * 1_000_000_000))
    request = reservations_pb2.ReserveUsageRequest(
        customer_id=args.customer_id,
        meter_slug=args.meter_slug,
        quantity=args.quantity,
        reservation_id=args.reservation_id,
        ttl=ttl,
    )
    return _call(args, "ReserveUsage", request)


def _client_commit(args: argparse.Namespace) -> int:
    from metering.v1 import reservations_pb2

    request = reservations_pb2.CommitReservationRequest(
        customer_id=args.customer_id, reservation_id=args.reservation_id, quantity=args.quantity
    )
    return _call(args, "CommitReservation", request)


def _client_release(args: argparse.Namespace) -> int:
    from metering.v1 import reservations_pb2

    request = reservations_pb2.ReleaseReservationRequest(
        customer_id=args.customer_id, reservation_id=args.reservation_id
    )
    return _call(args, "ReleaseReservation", request)


def _client_void(args: argparse.Namespace) -> int:
    from metering.v1 import events_pb2

    request = events_pb2.VoidUsageRequest(
        customer_id=args.customer_id, transaction_id=args.transaction_id, reason=args.reason
    )
    return _call(args, "VoidUsage", request)


def _client_balance(args: argparse.Namespace) -> int:
    from metering.v1 import usage_pb2

    request = usage_pb2.CheckBalanceRequest(
        customer_id=args.customer_id, meter_slug=args.meter_slug, requested_quantity=args.requested
    )
    return _call(args, "CheckBalance", request)
