"""Failover under load on a Patroni cluster (tests/patroni.py): the scenario
of bench/ha.py and of its reduced form, tests/integration/test_ha.py.

One trial: a fresh cluster (etcd, two Patroni members, synchronous mode), a
service on the multi-host URL (the leader first), a webhook receiver, and
load: unary RecordUsage and RecordUsageBatch calls from clients that retry
every uncertain answer with the same transaction id (tests/faults.py), among
them customers at their hard limit; reservations held and committed; and
customers whose billing period ends during the trial, closed into invoices by
the closer (METERING_INVOICE_GRACE 1 s, a pass every 200 ms). Mid-load the
leader is failed, one of three ways (`Kind`):

- NODE: the leader's Patroni and every PostgreSQL process SIGKILLed (a lost
  machine); it is started again once the other member leads (a reboot);
- POSTMASTER: the leader's postmaster alone SIGKILLed; with
  primary_start_timeout 0 its Patroni gives up the leader key at once;
- SILENT: the leader's Patroni SIGSTOPped and every packet to its PostgreSQL
  and REST ports dropped (iptables, no reset: a machine whose network died),
  while it is the first host of the URL; after SILENT_HOLD seconds of
  silence past the promotion the rules are removed (by their exact spec) and
  it resumes.

Afterwards, on the new leader: every acknowledged event exactly once, no
hard limit exceeded, every acknowledged commit of a reservation recorded once,
one invoice per due period, every notification delivered to the webhook
receiver and no webhook id with two bodies, the ledger audit clean, and the
old leader back as the synchronous standby.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from metering.domain.periods import ResetPeriod, add_months, period_containing
from metering.v1 import customer_pb2, metering_service_pb2_grpc, reservations_pb2, usage_pb2
from tests.failover import metering_audit
from tests.faults import (
    UNCERTAIN,
    Book,
    Client,
    LedgerCheck,
    LoadMix,
    Outcome,
    Replica,
    RetryPolicy,
    add_customers,
    check_ledger,
    drive,
    write_catalog,
)
from tests.patroni import Member, PatroniCluster, patroni_cluster
from tests.processes import signal_all
from tests.receiver import Receiver, webhook_receiver
from tests.stripe_standin import StripeStandIn

if TYPE_CHECKING:
    from metering.v1.metering_service_pb2_grpc import MeteringServiceAsyncStub

DB_TIMEOUT = 2.0  # METERING_DB_TIMEOUT of the service
CALL_DEADLINE = 3 * DB_TIMEOUT
SILENT_HOLD = 20.0  # seconds the silent leader stays silent after the promotion (or until writes resume + 2 s)
REJOIN_LIMIT = 90.0
SERVICE_SETTINGS = {
    "METERING_DB_TIMEOUT": f"{DB_TIMEOUT:g}s",
    "METERING_HEALTH_INTERVAL": "200ms",
    "METERING_SHUTDOWN_GRACE": "3s",
    "METERING_INVOICE_GRACE": "1s",
    "METERING_CLOSE_INTERVAL": "200ms",
    "METERING_NOTIFICATION_POLL": "200ms",
}
TYPES = '["usage.threshold_crossed", "usage.limit_rejected", "invoice.finalized"]'  # what the trial causes
STRIPE_KEY = "sk_test_ha"
WRITES = frozenset({"RecordUsage", "RecordUsageBatch"})


class Kind(Enum):
    NODE = "node loss"
    POSTMASTER = "postmaster crash"
    SILENT = "silent leader"


@dataclass
class Reservations:
    """Holds taken and committed on one hard-limited customer, each retried with its own id."""

    customer_id: str
    limit: int
    committed: dict[str, int] = field(default_factory=dict)  # reservation id -> quantity acknowledged
    refused: int = 0  # holds refused by the limit
    uncertain: int = 0  # calls answered UNAVAILABLE/DEADLINE_EXCEEDED, then retried
    other: Counter[str] = field(default_factory=Counter)  # any other answer (a failure)


@dataclass
class Trial:
    kind: Kind
    seconds: float
    how_silenced: str = ""  # SILENT: iptables or SIGSTOP
    killed: float = 0.0  # time.monotonic() of the kill (or of the silence)
    silence_ended: float | None = None  # SILENT: when the rules were removed and the processes resumed
    promoted: float | None = None  # when the other member was seen leading
    first_ack_after_kill: float | None = None  # seconds from the kill to the end of the first OK write begun after it
    first_ack_after_promotion: float | None = None
    rejoined_after: float | None = None  # seconds from the old leader's return (restart, thaw) to sync standby
    old_leader_role: str = ""
    failed: Counter[str] = field(default_factory=Counter)  # calls not answered OK, by code
    acked: int = 0
    check: LedgerCheck | None = None
    reservations: Reservations | None = None
    reservations_lost: int = 0  # acknowledged commits not recorded exactly once
    reservation_overspend: int = 0
    invoices_due: int = 0
    invoices_missing: int = 0
    invoices_duplicated: int = 0
    notifications: int = 0
    webhooks_undelivered: int = 0
    webhook_mismatches: int = 0  # ids delivered with two different bodies
    stripe_mismatches: int = 0  # customers whose units counted by the Stripe stand-in differ from their ledger
    audit_exit: int | None = None
    audit_output: str = ""

    @property
    def promoted_after(self) -> float | None:
        """Seconds from the kill (or the silence) to the other member seen leading."""
        return None if self.promoted is None else self.promoted - self.killed

    @property
    def acked_while_silent(self) -> bool | None:
        """SILENT: whether a write was acknowledged before the silence ended (None for the other kinds)."""
        if self.silence_ended is None or self.first_ack_after_kill is None:
            return None if self.silence_ended is None else False
        return self.killed + self.first_ack_after_kill < self.silence_ended

    @property
    def lost(self) -> int:
        return (0 if self.check is None else len(self.check.acked_missing)) + self.reservations_lost

    @property
    def duplicates(self) -> int:
        return 0 if self.check is None else self.check.duplicates

    @property
    def overspend(self) -> int:
        return (0 if self.check is None else len(self.check.overspend)) + self.reservation_overspend

    @property
    def problems(self) -> list[str]:
        """Every broken promise of the trial (empty: it held)."""
        found = []
        check = self.check
        if check is None:
            return ["no ledger check"]
        if check.acked_missing:
            found.append(f"acknowledged events lost: {check.acked_missing[:5]}")
        if check.acked_changed:
            found.append(f"acknowledged events changed: {check.acked_changed[:5]}")
        if check.duplicates:
            found.append(f"duplicates: {check.duplicates}")
        if check.unresolved or check.rejected:
            found.append(f"unresolved {check.unresolved[:5]}, rejected {check.rejected[:5]}")
        if check.overspend or check.refused_stored:
            found.append(f"overspend {check.overspend[:5]}, refused yet stored {check.refused_stored[:5]}")
        if check.server_errors:
            found.append(f"INTERNAL/UNKNOWN answers: {check.server_errors}")
        if not check.audit.ok:
            found.append(f"audit mismatches: {check.audit.mismatches[:5]}")
        if self.audit_exit != 0:
            found.append(f"`metering audit` exit {self.audit_exit}: {self.audit_output[-500:]}")
        if self.reservations_lost or self.reservation_overspend:
            found.append(f"reservations: {self.reservations_lost} lost, {self.reservation_overspend} overspent")
        if self.reservations is not None and self.reservations.other:
            found.append(f"reservation answers: {dict(self.reservations.other)}")
        if self.invoices_missing or self.invoices_duplicated:
            found.append(f"invoices: {self.invoices_missing} missing, {self.invoices_duplicated} twice")
        if self.stripe_mismatches:
            found.append(f"Stripe export: {self.stripe_mismatches} customers counted differently from the ledger")
        if self.webhooks_undelivered or self.webhook_mismatches:
            found.append(f"webhooks: {self.webhooks_undelivered} undelivered, {self.webhook_mismatches} mismatched")
        if self.old_leader_role != "sync_standby":
            found.append(f"old leader is {self.old_leader_role or 'absent'}, not the sync standby")
        if self.acked == 0 or self.first_ack_after_kill is None:
            found.append("no write acknowledged after the kill")
        return found


def _stamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def anchor_ending_in(seconds: float) -> datetime:
    """A monthly billing anchor whose current period ends `seconds` from now."""
    target = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    for months in range(1, 13):
        anchor = add_months(target, -months)
        if period_containing(target - timedelta(microseconds=1), anchor, ResetPeriod.MONTH).end == target:
            return anchor
    raise AssertionError(f"no monthly anchor has a period ending at {target}")


def _iptables(action: str, port: int) -> list[str]:
    return ["iptables", action, "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"]


def iptables_works() -> bool:
    """Whether rules can be added here (root, CAP_NET_ADMIN, the tool installed)."""
    if shutil.which("iptables") is None or os.geteuid() != 0:
        return False
    return (
        subprocess.run(["iptables", "-L", "INPUT", "-n"], capture_output=True, timeout=10, check=False).returncode == 0
    )


@contextlib.contextmanager
def silenced(member: Member) -> Iterator[str]:
    """The member made silent: its Patroni stopped, and its ports dropping
    every packet (iptables) or, where rules cannot be added, its PostgreSQL
    stopped too (SIGSTOP: connections stay open, nothing answers). The rules
    are removed by their exact spec, and the processes resumed, on exit."""
    patroni = member.patroni_pid()
    assert patroni is not None
    use_rules = iptables_works()
    added: list[list[str]] = []
    frozen = [patroni] if use_rules else [patroni, *member.server_pids()]
    try:
        signal_all(frozen, signal.SIGSTOP)
        if use_rules:
            for port in (member.pg_port, member.rest_port):
                subprocess.run(_iptables("-I", port), check=True, capture_output=True, timeout=10)
                added.append(_iptables("-D", port))
        yield "iptables DROP" if use_rules else "SIGSTOP"
    finally:
        for rule in added:
            subprocess.run(rule, check=False, capture_output=True, timeout=10)
        Member.thaw(frozen)


async def reserve_loop(stub: MeteringServiceAsyncStub, book: Reservations, until: float) -> None:
    """Reserve 1-5 units, commit them; every uncertain answer retried with the same id."""
    n = 0
    while time.monotonic() < until:
        n += 1
        rid = f"{book.customer_id}-r{n}"
        quantity = 1 + n % 5
        hold = reservations_pb2.ReserveUsageRequest(
            customer_id=book.customer_id, meter_slug="tokens", quantity=str(quantity), reservation_id=rid
        )
        commit = reservations_pb2.CommitReservationRequest(customer_id=book.customer_id, reservation_id=rid)
        if not await _retry(book, functools.partial(stub.ReserveUsage, hold, timeout=CALL_DEADLINE), until + 60):
            continue
        if await _retry(book, functools.partial(stub.CommitReservation, commit, timeout=CALL_DEADLINE), until + 60):
            book.committed[rid] = quantity


async def _retry(book: Reservations, call: Callable[[], Awaitable[object]], give_up: float) -> bool:
    """Whether the call was answered OK; False when refused (by the limit, or otherwise: counted)."""
    while True:
        try:
            await call()
            return True
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in UNCERTAIN and time.monotonic() < give_up:
                book.uncertain += 1
                await asyncio.sleep(0.1)
                continue
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                book.refused += 1
            else:
                book.other[code.name] += 1
            return False


async def _add_closing(stub: MeteringServiceAsyncStub, tag: str, ends: list[float]) -> list[str]:
    """Customers whose period ends `ends` seconds from now, each with one event in it."""
    customers = []
    for i, seconds in enumerate(ends):
        customer = f"ha-{tag}-closing-{i}"
        await stub.UpsertCustomer(
            customer_pb2.UpsertCustomerRequest(
                customer_id=customer, plan_slug="open", billing_anchor_time=_stamp(anchor_ending_in(seconds))
            ),
            timeout=10,
        )
        await stub.RecordUsage(
            usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity="3", transaction_id="t1"),
            timeout=10,
        )
        # An event in a finished hour: the Stripe exporter sends it during the trial.
        earlier = usage_pb2.RecordUsageRequest(
            customer_id=customer, meter_slug="tokens", quantity="5", transaction_id="t0"
        )
        earlier.event_time.CopyFrom(_stamp(datetime.now(UTC) - timedelta(hours=2)))
        await stub.RecordUsage(earlier, timeout=10)
        customers.append(customer)
    return customers


async def _wait_leader(cluster: PatroniCluster, old: Member, limit: float = 90.0) -> tuple[Member, float]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        leader = await asyncio.to_thread(cluster.leader)
        if leader is not None and leader is not old:
            return leader, time.monotonic()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no member took over from {old.name}: {cluster.cluster()}")


async def _wait_sync(cluster: PatroniCluster, member: Member, limit: float = REJOIN_LIMIT) -> float | None:
    """Seconds until `member` is the streaming synchronous standby; None if not within `limit`."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        states = await asyncio.to_thread(cluster.cluster)
        if any(s.name == member.name and s.role == "sync_standby" and s.state == "streaming" for s in states):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return None


async def trial(directory: Path, kind: Kind, *, seconds: float = 16.0, tasks: int = 6, kill_at: float = 5.0) -> Trial:
    """One trial on a fresh cluster in `directory` (removed afterwards)."""
    stripe = StripeStandIn(STRIPE_KEY).start()
    try:
        with patroni_cluster(directory / "cluster") as cluster, webhook_receiver() as receiver:
            return await _trial(cluster, receiver, stripe, directory, kind, seconds, tasks, kill_at)
    finally:
        stripe.stop()


async def _trial(
    cluster: PatroniCluster,
    receiver: Receiver,
    stripe: StripeStandIn,
    directory: Path,
    kind: Kind,
    seconds: float,
    tasks: int,
    kill_at: float,
) -> Trial:
    catalog = write_catalog(directory)
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    hooks = directory / "webhooks.toml"
    hooks.write_text(f'[endpoints.ha]\nurl = "{receiver.url}"\nsecrets = ["{secret}"]\ntypes = {TYPES}\n')
    old = cluster.leader()
    assert old is not None
    # The leader first in the URL: the silent case is the leader being the first host tried.
    cluster.members.sort(key=lambda m: m is not old)
    tag = uuid.uuid4().hex[:6]
    mapping = directory / "stripe.toml"
    ids = "\n".join(f'"ha-{tag}-closing-{i}" = "cus_{tag}{i}"' for i in range(4))
    mapping.write_text(
        f'[meters.tokens]\nevent_name = "api_tokens"\n[customers]\nunlisted = "skip"\n[customers.ids]\n{ids}\n'
    )
    exporter = {
        "METERING_STRIPE_FILE": str(mapping),
        "METERING_STRIPE_API_KEY": STRIPE_KEY,
        "METERING_STRIPE_API_BASE": stripe.url,
        "METERING_STRIPE_SETTLE_DELAY": "0s",
        "METERING_STRIPE_INTERVAL": "200ms",
        "METERING_STRIPE_TIMEOUT": "5s",
    }
    service = Replica(
        "A", cluster.multi_host_url(), catalog, METERING_WEBHOOKS_FILE=str(hooks), **exporter, **SERVICE_SETTINGS
    )
    await asyncio.to_thread(service.start)
    result = Trial(kind, seconds)
    try:
        await _load(cluster, old, service, result, kind, seconds, tasks, kill_at, receiver, stripe, tag)
    finally:
        await asyncio.to_thread(service.stop)
    return result


async def _load(
    cluster: PatroniCluster,
    old: Member,
    service: Replica,
    result: Trial,
    kind: Kind,
    seconds: float,
    tasks: int,
    kill_at: float,
    receiver: Receiver,
    stripe: StripeStandIn,
    tag: str,
) -> None:
    plans = {f"ha-{tag}-hot-{i}": "open" for i in range(3)}
    plans |= {f"ha-{tag}-capped-{i}": "tight" for i in range(2)}  # limit 200: reached early in the run
    plans |= {f"ha-{tag}-medium": "medium"}
    weights = [(c, 10.0 if "hot" in c else 4.0) for c in plans]
    mix = LoadMix(customers=weights, tiny_deadline_share=0.0)
    holds = Reservations(f"ha-{tag}-holds", 200)
    await add_customers(service.target, {**plans, holds.customer_id: "tight"})
    book = Book(f"ha-{tag}")
    started = time.monotonic()
    until = started + seconds
    policy = RetryPolicy(call_timeout=CALL_DEADLINE, give_up_at=until + 90)
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub: MeteringServiceAsyncStub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        # Periods ending around the kill: the closer finalizes them during the switch.
        closing = await _add_closing(stub, tag, [kill_at - 2, kill_at, kill_at + 2, kill_at + 5])

        async def fail() -> None:
            await asyncio.sleep(kill_at - (time.monotonic() - started))
            # `killed` is stamped once the loss is complete (the processes gone, the rules in place):
            # a call begun before that may still commit on the old leader.
            if kind is Kind.SILENT:
                with silenced(old) as how:
                    result.killed = time.monotonic()
                    result.how_silenced = how
                    _, result.promoted = await _wait_leader(cluster, old)
                    promoted = result.promoted
                    # Silent until writes resumed (and 2 s more), at most SILENT_HOLD s past the promotion.
                    while time.monotonic() < promoted + SILENT_HOLD:
                        resumed = _first_ok_after(book, promoted)
                        if resumed is not None and time.monotonic() > promoted + resumed + 2:
                            break
                        await asyncio.sleep(0.1)
                back = result.silence_ended = time.monotonic()
            elif kind is Kind.NODE:
                await asyncio.to_thread(old.kill_node)
                result.killed = time.monotonic()
                _, result.promoted = await _wait_leader(cluster, old)
                await asyncio.to_thread(old.start)  # the machine comes back
                back = time.monotonic()
            else:
                await asyncio.to_thread(old.kill_postmaster)
                result.killed = time.monotonic()
                _, result.promoted = await _wait_leader(cluster, old)
                back = result.killed
            if await _wait_sync(cluster, old) is not None:
                result.rejoined_after = time.monotonic() - back

        async with Client([service.target], book, policy) as client:
            await asyncio.gather(drive(client, mix, until=until, tasks=tasks), reserve_loop(stub, holds, until), fail())
            await client.resolve(book.pending())
    result.reservations = holds
    result.acked = book.count(Outcome.ACKED)
    result.first_ack_after_kill = _first_ok_after(book, result.killed)
    if result.promoted is not None:
        result.first_ack_after_promotion = _first_ok_after(book, result.promoted)
    result.failed = Counter(a.code for a in book.attempts if a.code != "OK")
    # Batches answered OK whose events (some or all) each said UNAVAILABLE: retried like failed calls.
    partial = sum(1 for a in book.attempts if a.code == "OK" and a.uncertain > 0)
    if partial:
        result.failed["batch OK, events UNAVAILABLE"] = partial
    states = {s.name: s.role for s in await asyncio.to_thread(cluster.cluster)}
    result.old_leader_role = states.get(old.name, "")
    leader = cluster.leader()
    assert leader is not None
    await _wait_webhooks(leader.url(), receiver, book, holds, closing)
    await _wait_stripe(leader.url(), stripe, closing, tag)
    await asyncio.to_thread(service.stop)  # a quiet ledger for the checks
    result.check = await check_ledger(leader.url(), book, Path(service.catalog))
    await _check_extra(leader.url(), result, holds, closing, receiver, book)
    result.stripe_mismatches = len(await _stripe_differences(leader.url(), stripe, closing, tag))
    result.audit_exit, result.audit_output = await asyncio.to_thread(
        metering_audit, leader.url(), Path(service.catalog)
    )


def _first_ok_after(book: Book, since: float) -> float | None:
    """Seconds from `since` to the end of the first write call begun after it that was answered OK."""
    # A batch answers OK with a status per event: it counts when at least one of its events was recorded or refused.
    ends = [
        a.ended
        for a in book.attempts
        if a.started >= since and a.code == "OK" and a.method in WRITES and a.uncertain < a.events
    ]
    return None if not ends else min(ends) - since


async def _notification_ids(url: str, customers: list[str]) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT notification_id::text AS id FROM notifications WHERE customer_id = ANY($1::text[])", customers
        )
    finally:
        await conn.close()
    return {r["id"] for r in rows}


async def _wait_webhooks(url: str, receiver: Receiver, book: Book, holds: Reservations, closing: list[str]) -> None:
    """Until every notification of the trial's customers was delivered (at most 30 s)."""
    customers = sorted(book.customers | {holds.customer_id, *closing})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        wanted = await _notification_ids(url, customers)
        if wanted <= {r.webhook_id for r in receiver.delivered()}:
            return
        await asyncio.sleep(0.2)


async def _stripe_differences(url: str, stripe: StripeStandIn, closing: list[str], tag: str) -> list[str]:
    """The closing customers whose whole units in finished hours differ between the ledger and Stripe's count."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT customer_id, sum(quantity) AS units FROM usage_events WHERE customer_id = ANY($1::text[]) "
            "AND event_time < date_trunc('hour', now()) GROUP BY 1",
            closing,
        )
    finally:
        await conn.close()
    ledger = {r["customer_id"]: int(r["units"]) for r in rows}
    counted: Counter[str] = Counter()
    for event in stripe.counted():
        counted[event.customer] += event.value
    return [c for i, c in enumerate(closing) if ledger.get(c, 0) != counted.get(f"cus_{tag}{i}", 0)]


async def _wait_stripe(url: str, stripe: StripeStandIn, closing: list[str], tag: str) -> None:
    """Until the Stripe stand-in counted what the ledger holds (at most 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not await _stripe_differences(url, stripe, closing, tag):
            return
        await asyncio.sleep(0.2)


async def _check_extra(
    url: str, result: Trial, holds: Reservations, closing: list[str], receiver: Receiver, book: Book
) -> None:
    customers = sorted(book.customers | {holds.customer_id, *closing})
    conn = await asyncpg.connect(url)
    try:
        events = await conn.fetch(
            "SELECT transaction_id, quantity FROM usage_events WHERE customer_id = $1", holds.customer_id
        )
        used = await conn.fetchval(
            "SELECT coalesce(max(used), 0) FROM meter_counters WHERE customer_id = $1", holds.customer_id
        )
        invoices = await conn.fetch(
            "SELECT customer_id, period_start, count(*) AS n FROM invoices WHERE customer_id = ANY($1::text[]) "
            "GROUP BY 1, 2",
            closing,
        )
    finally:
        await conn.close()
    stored = Counter(r["transaction_id"] for r in events)
    result.reservations_lost = sum(stored.get(rid, 0) != 1 for rid in holds.committed)
    result.reservation_overspend = int(used > holds.limit)
    # Every closing customer's period ended during the trial: one invoice each.
    result.invoices_due = len(closing)
    invoiced = {r["customer_id"] for r in invoices}
    result.invoices_missing = sum(c not in invoiced for c in closing)
    result.invoices_duplicated = sum(r["n"] > 1 for r in invoices)
    wanted = await _notification_ids(url, customers)
    delivered = receiver.delivered()
    result.notifications = len(wanted)
    result.webhooks_undelivered = len(wanted - {r.webhook_id for r in delivered})
    bodies: dict[str, set[bytes]] = {}
    for request in receiver.requests:
        bodies.setdefault(request.webhook_id, set()).add(request.body)
    # An id delivered with two bodies, or an id that names no notification of the new leader.
    result.webhook_mismatches = sum(len(b) > 1 for b in bodies.values()) + len(
        {r.webhook_id for r in delivered} - wanted
    )
