"""SIGHUP re-reads the catalog of a running service: a good catalog is served
from the next call on, a bad one or one that would strand recorded usage is
refused with every reason logged and the old one stays; every worker of a
supervisor reloads."""

from __future__ import annotations

import hashlib
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from metering.v1 import catalog_pb2, customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import TEST_CATALOG, ServiceProcess, metric_value, wait_for

# Slow tier: services of their own, reloaded by signal.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
BASE = TEST_CATALOG.read_text()


@dataclass
class Reloadable:
    service: ServiceProcess
    catalog: Path
    channel: grpc.Channel

    @property
    def stub(self) -> Stub:
        return Stub(self.channel)

    def reloads(self, outcome: str) -> float:
        return metric_value(self.service.scrape(), "metering_config_reloads_total", file="catalog", outcome=outcome)

    def reload(self, text: str, outcome: str, count: int = 1) -> None:
        """Write the catalog file, send SIGHUP, and wait until `count` processes counted `outcome`."""
        before = self.reloads(outcome)
        self.catalog.write_text(text)
        assert self.service.process is not None
        self.service.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: self.reloads(outcome) >= before + count, timeout=20), self.service.output

    def revision(self) -> str:
        return str(self.stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10).revision)

    def customer(self, plan: str) -> str:
        customer_id = f"reload-{uuid.uuid4().hex[:10]}"
        request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug=plan)
        request.billing_anchor_time.FromDatetime(datetime.now(UTC) - timedelta(days=3))
        self.stub.UpsertCustomer(request, timeout=10)
        return customer_id

    def record(self, customer_id: str, meter: str, quantity: str = "1") -> usage_pb2.RecordUsageResponse:
        request = usage_pb2.RecordUsageRequest(
            customer_id=customer_id, meter_slug=meter, quantity=quantity, transaction_id=uuid.uuid4().hex
        )
        return self.stub.RecordUsage(request, timeout=10)

    def log(self) -> str:
        return "".join(self.service.output)

    def logged(self, *lines: str) -> bool:
        """Whether every line reached the log (its reader thread may lag the metric)."""
        return wait_for(lambda: all(line in self.log() for line in lines), timeout=10)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def start(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Callable[..., Reloadable]]:
    """Starts a service on a database of its own, on a copy of the test catalog."""
    started: list[Reloadable] = []

    def run(**env: str) -> Reloadable:
        catalog = tmp_path / f"catalog-{len(started)}.toml"
        catalog.write_text(BASE)
        service = ServiceProcess(make_database(), catalog=catalog, extra_env=env).start()
        reloadable = Reloadable(service, catalog, grpc.insecure_channel(service.target))
        started.append(reloadable)
        return reloadable

    yield run
    for reloadable in started:
        reloadable.channel.close()
        reloadable.service.stop()


def test_a_changed_catalog_is_served_from_the_next_call(start: Callable[..., Reloadable]) -> None:
    running = start()
    customer = running.customer("limited")
    assert running.record(customer, "tokens", "30").balance.limit == "100"
    loaded = running.stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    assert loaded.revision == digest(BASE)
    changed = BASE.replace(
        '[plans.limited.meters.tokens]\nlimit = "100"', '[plans.limited.meters.tokens]\nlimit = "250"'
    ) + (
        '\n[meters.gpu_seconds]\naggregation = "sum"\nunit = "second"\n'
        '\n[plans.team]\ncurrency = "USD"\n[plans.team.meters.gpu_seconds]\nlimit = "60"\n'
    )
    running.reload(changed, "applied")
    now = running.stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    assert now.revision == digest(changed)
    assert now.load_time.ToDatetime() > loaded.load_time.ToDatetime()
    assert "gpu_seconds" in [m.slug for m in now.meters] and "team" in [p.slug for p in now.plans]
    # The customer's plan changed terms: its next call has them, its usage is kept.
    balance = running.stub.CheckBalance(
        usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens"), timeout=10
    ).balances[0]
    assert (balance.limit, balance.used) == ("250", "30")
    # The new plan and meter are usable at once.
    newcomer = running.customer("team")
    assert running.record(newcomer, "gpu_seconds", "12").balance.available == "48"
    # An unchanged file is applied as a no-op: the catalog (and its load time) stay.
    running.reload(changed, "applied")
    again = running.stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    assert (again.revision, again.load_time) == (now.revision, now.load_time)
    assert running.reloads("refused") == 0


def test_a_bad_catalog_is_refused_with_every_problem_and_the_old_one_stays(
    start: Callable[..., Reloadable],
) -> None:
    running = start()
    customer = running.customer("limited")
    broken = BASE.replace('aggregation = "max"', 'aggregation = "median"').replace(
        'included = "10"', 'included = "ten"'
    )
    running.reload(broken, "refused")
    assert running.logged(
        "the catalog is refused, the previous catalog stays in force",
        "meters.peak.aggregation: 'median' is not one of",
        "plans.limited.meters.tokens.included:",
    ), running.log()
    assert running.revision() == digest(BASE)
    assert running.record(customer, "peak", "3").balance.limit == "10"
    running.reload("[meters.tokens\n", "refused")  # not even TOML
    assert running.logged("not valid TOML"), running.log()
    assert running.revision() == digest(BASE)


def test_a_change_that_strands_recorded_usage_is_refused_with_the_reasons(
    start: Callable[..., Reloadable],
) -> None:
    running = start()
    customer = running.customer("limited")
    running.record(customer, "unplanned", "5")  # usage of an open billing period
    without_unplanned = BASE.replace('[meters.unplanned]\naggregation = "sum"\nunit = "thing"\n', "")
    without_limited = without_unplanned.replace(BASE[BASE.index("[plans.limited]") : BASE.index("[plans.soft]")], "")
    running.reload(without_limited, "refused")
    assert running.logged(
        "meters.unplanned: removed while billing periods not finalized yet have events of it",
        "prices.unplanned_no_charge: removed while events of billing periods not finalized yet",
        "plans.limited: removed while customers are on it",
    ), running.log()
    catalog = running.stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    assert catalog.revision == digest(BASE)
    assert "unplanned" in [m.slug for m in catalog.meters]
    # Its counters were added up as a sum: another aggregation is refused too.
    maxed = BASE.replace('[meters.unplanned]\naggregation = "sum"', '[meters.unplanned]\naggregation = "max"')
    running.reload(maxed, "refused")
    assert running.logged("meters.unplanned: aggregation sum -> max while billing periods not finalized yet")
    # Its rollups are built without dimensions: new ones wait for a restart, which rebuilds them.
    regional = BASE.replace('unit = "thing"', 'unit = "thing"\ndimensions = ["region"]')
    running.reload(regional, "refused")
    assert running.logged(
        "meters.unplanned.dimensions: its rollups are built for dimensions []; changing them to ['region'] "
        "takes a restart"
    )
    # A meter nobody used goes freely, and the service goes on recording.
    without_peak = BASE.replace('[meters.peak]\naggregation = "max"\nunit = "session"\ndimensions = ["region"]\n', "")
    without_peak = without_peak.replace('[plans.limited.meters.peak]\nlimit = "10"\n', "")
    running.reload(without_peak, "applied")
    assert "peak" not in [m.slug for m in running.stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10).meters]
    assert running.record(customer, "unplanned", "1").balance.used == "6"
    with pytest.raises(grpc.RpcError) as caught:
        running.record(customer, "peak")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_worker_reloads(start: Callable[..., Reloadable]) -> None:
    running = start(METERING_WORKERS="2")
    changed = BASE.replace('[plans.zero.meters.tokens]\nlimit = "0"', '[plans.zero.meters.tokens]\nlimit = "7"')
    running.reload(changed, "applied", count=2)  # the supervisor forwards SIGHUP: both workers count
    # Connections of their own land on both workers: every one answers the new catalog.
    channels = [
        grpc.insecure_channel(running.service.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(16)
    ]
    try:
        revisions = {
            Stub(channel).GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10).revision for channel in channels
        }
    finally:
        for channel in channels:
            channel.close()
    assert revisions == {digest(changed)}
