"""`metering watch`: tail the notification stream (WatchNotifications), one line per
notification as it commits, or with --json one JSON object per line (the
Notification message's proto3 JSON, as in a webhook body, every field printed).
Ctrl-C (SIGINT) or SIGTERM ends it with exit 0 and says where to resume."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import grpc

from metering.cli import render
from metering.cli.calls import client_command
from metering.cli.connection import connection, print_error
from metering.cli.exits import Exit, for_error
from metering.cli.parsing import Subparsers
from metering.client import MeteringClient, error_from_rpc
from metering.domain.notifications import NotificationType
from metering.v1 import notifications_pb2
from metering.wire.notifications import NOTIFICATION_TYPES

# The one spelling of the types, as in the endpoints file and the docs (usage.threshold_crossed...).
_TYPE_NAMES = {wire: domain.value for domain, wire in NOTIFICATION_TYPES.items()}


def add_command(commands: Subparsers) -> None:
    watch = client_command(
        commands,
        "watch",
        "tail the notification stream (thresholds crossed, limit refusals, invoices); Ctrl-C ends it",
        run_watch,
        [
            "metering watch",
            "metering watch --customer acme --type usage.threshold_crossed",
            'metering watch --json --from "$(cat last-cursor)" >> notifications.jsonl',
        ],
    )
    watch.add_argument(
        "--from",
        dest="cursor",
        default="",
        metavar="CURSOR",
        help="resume right after the notification with this cursor (default: from now on)",
    )
    watch.add_argument("--customer", default="", metavar="CUSTOMER", help="only this customer's notifications")
    watch.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        choices=[kind.value for kind in NotificationType],
        help="only notifications of this type (repeat for several)",
    )


def run_watch(args: argparse.Namespace) -> int:
    request = notifications_pb2.WatchNotificationsRequest(
        cursor=args.cursor,
        customer_id=args.customer,
        types=[NOTIFICATION_TYPES[NotificationType(kind)] for kind in args.types],
    )
    stop = _Stop(args.cursor)
    with MeteringClient(connection(args), wait_for_ready=False) as client:
        stream = client.stub.WatchNotifications(request, metadata=client.connection.metadata(), wait_for_ready=False)
        try:
            for message in stream:
                notification = message.notification
                with stop.deferred():  # printed and remembered, or neither
                    print(render.as_json(notification, compact=True) if args.json else line(notification), flush=True)
                    stop.cursor = notification.cursor
        except KeyboardInterrupt:
            _resume_hint("stopped", stop.cursor)
            return Exit.OK
        except grpc.RpcError as exc:
            error = error_from_rpc(exc)
            print_error(error)
            _resume_hint("the stream ended", stop.cursor)
            return for_error(error)
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]
    return Exit.OK  # the service never ends the stream by itself; a proxy might


class _Stop:
    """Ctrl-C (SIGINT) and SIGTERM end the tail, even where SIGINT was ignored (a script's
    background job), but never between printing a notification and remembering its
    cursor: the resume hint names exactly the last notification printed."""

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor
        self._deferring = False
        self._requested = False
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGTERM, self._signal)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._requested = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._requested:
            raise KeyboardInterrupt


def line(n: notifications_pb2.Notification) -> str:
    """One notification as one line of text."""
    kind = n.WhichOneof("payload")
    if kind == "threshold_crossed":
        t = n.threshold_crossed
        what = (
            f"{t.meter_slug} crossed {t.threshold_percent}%: {t.used} of {t.allowance} {t.unit} used "
            f"({t.percent_used}%, plan {t.plan_slug})"
        )
    elif kind == "limit_rejected":
        r = n.limit_rejected
        what = (
            f"{r.meter_slug} refused {r.requested} {r.unit}: {r.available} available of {r.limit} "
            f"(plan {r.plan_slug}, transaction {r.transaction_id})"
        )
    elif kind == "invoice_finalized":
        f = n.invoice_finalized
        what = (
            f"invoice {f.invoice_id} number {f.invoice_number} for {render.when(f.period_start_time)} to "
            f"{render.when(f.period_end_time)}: total {f.total.amount} {f.total.currency_code}"
        )
    else:
        what = "(a payload this command does not know: see --json)"
    name = _TYPE_NAMES.get(n.type, str(n.type))
    return f"{render.when(n.time)}  {name}  {n.customer_id}  {what}  cursor {n.cursor}"


def _resume_hint(what: str, cursor: str) -> None:
    if cursor:
        print(f"{what}; resume with: metering watch --from {cursor}", file=sys.stderr)
