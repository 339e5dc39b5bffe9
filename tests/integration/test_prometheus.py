"""Prometheus and Grafana against a real service.

A real Prometheus (Debian's package) scrapes a real `metering serve` process
every second; after known gRPC traffic its HTTP API must show exactly that
traffic. promtool lints the /metrics exposition, checks the alerting rules and
runs their unit tests; the live Prometheus evaluates the rules and every query
of the Grafana dashboard, and both may use only metric and label names that the
service really exposes.

Prometheus and promtool come from Debian's `prometheus` package: missing, they
are installed here with apt-get when running as root (as CI does), so that
`make test` alone runs these tests on a fresh machine. Under CI=true a missing
tool fails the run instead of skipping it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.receiver import Receiver, webhook_receiver
from tests.stripe_standin import StripeStandIn
from tests.support import ROOT, ServiceProcess, free_port, metric_value, wait_for

# Slow tier: installs and runs Prometheus and promtool.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
SERVICE = "/metering.v1.MeteringService/"
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
EXAMPLE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE_CONFIG = DEPLOY / "prometheus" / "compose.yml"  # compose.yaml's Prometheus
DASHBOARD = DEPLOY / "grafana" / "metering-dashboard.json"
JOB = "metering"  # the job name alerts.yml's MeteringTargetDown expects
STRIPE_API_KEY = "sk_test_standin_" + "p" * 24
STRIPE_CUSTOMER = "cus_prometheus"
# Prometheus may move a scrape's timestamp by up to 2 ms to align it with the
# interval (scrape.adjust-timestamps); a scrape counts as "after" a moment only
# past this margin, so it surely began after that moment.
SCRAPE_MARGIN = 0.05

Labels = tuple[str, ...]


# -- the tools ------------------------------------------------------------------


@dataclass(frozen=True)
class PrometheusTools:
    prometheus: str
    promtool: str


def _find_tools() -> PrometheusTools | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        return None
    return PrometheusTools(prometheus, promtool)


def _apt_install_prometheus() -> str:
    """Install Debian's prometheus (which ships promtool); returns the output for diagnosis."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = []
    for command in (
        ["apt-get", "update"],  # a fresh machine may have no package lists yet
        # Waits for another apt/dpkg to finish rather than failing at once.
        ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", "prometheus"],
    ):
        done = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False
        )
        output.append(f"$ {' '.join(command)} -> {done.returncode}\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
        if done.returncode != 0:
            break
    return "\n".join(output)


@pytest.fixture(scope="session")
def prometheus_tools() -> PrometheusTools:
    found = _find_tools()
    if found is not None:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log = _apt_install_prometheus()
        found = _find_tools()
        if found is not None:
            return found
        why = f"prometheus/promtool missing and `apt-get install prometheus` did not provide them:\n{log}"
    else:
        why = "prometheus/promtool missing; installing Debian's `prometheus` needs root and apt-get"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why}\nCI must run the Prometheus tests: install Debian's `prometheus` package.", pytrace=False)
    pytest.skip(why)


def promtool(tools: PrometheusTools, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.promtool, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


# -- a Prometheus server --------------------------------------------------------


@dataclass
class PrometheusServer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer, else an assertion with Prometheus' error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # 400/422 carry the PromQL error in their body
            raise AssertionError(f"{path} {params}: HTTP {error.code}: {error.read().decode()}") from error
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def by_labels(self, expr: str, labels: Labels, at: float) -> dict[Labels, float]:
        """An instant vector at `at` as {label values: sample value}."""
        return {tuple(s["metric"].get(name, "") for name in labels): float(s["value"][1]) for s in self.query(expr, at)}

    def scrape_after(self, moment: float, timeout: float = 30.0) -> float:
        """Poll until Prometheus holds a scrape of the service that began after
        `moment` (wall clock); return that scrape's timestamp. Everything the
        service counted before `moment` is in that scrape."""
        found: list[float] = []

        def scraped() -> bool:
            # timestamp() of a plain selector is the sample's own time: when
            # the scrape began (of an expression, it would be the query's time).
            samples = self.query(f'timestamp(up{{job="{JOB}"}})')
            found[:] = [float(s["value"][1]) for s in samples]
            return bool(found) and found[0] > moment + SCRAPE_MARGIN

        assert wait_for(scraped, timeout, interval=0.2), f"no scrape after {moment} within {timeout}s: {found}"
        assert self.by_labels(f'up{{job="{JOB}"}}', (), found[0]) == {(): 1}, "the scrape failed"
        return found[0]

    def ready_or_exited(self) -> bool:
        return self.process.poll() is not None or _ready(self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_prometheus(binary: str, metrics_port: int, workdir: Path) -> PrometheusServer:
    """Prometheus on a free loopback port scraping 127.0.0.1:metrics_port every
    second, with alerts.yml loaded and evaluated every second."""
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML: no YAML library needed
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
            }
        )
    )
    last_log = ""
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        log = workdir / f"prometheus-{attempt}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / f'data-{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = PrometheusServer(port, process, log)
        wait_for(server.ready_or_exited, timeout=30, interval=0.1)
        if process.poll() is None and _ready(port):
            return server
        server.stop()
        last_log = log.read_text(errors="replace")
        if "address already in use" not in last_log:
            break
    raise RuntimeError(f"Prometheus did not start:\n{last_log}")


@dataclass(frozen=True)
class BillingCustomer:
    """A customer whose first billing period has ended, with usage in it and in a closed hour of
    the current one: the scraped service finalizes its invoice (a webhook to the receiver) and
    exports its usage to the Stripe stand-in (the hour older than 35 days is skipped)."""

    customer_id: str
    old_usage_at: datetime  # in the first period, 40 days ago: past Stripe's 35 days
    recent_usage_at: datetime  # two hours ago, in the current period


@pytest.fixture(scope="module")
def scraped_database(make_database: Callable[[], str]) -> str:
    """A database of this module's own: its service closes periods and exports to Stripe."""
    return make_database()


@pytest.fixture(scope="module")
def billing_customer(scraped_database: str) -> BillingCustomer:
    """Recorded through a service that closes nothing and exports nothing, before the scraped
    service starts: no period of it closes, and no hour is exported, while its events arrive."""
    now = datetime.now(UTC)
    customer = BillingCustomer(
        f"prom-billing-{os.urandom(6).hex()}", now - timedelta(days=40), now - timedelta(hours=2)
    )
    recorder = ServiceProcess(scraped_database).start()
    try:
        with grpc.insecure_channel(recorder.target) as channel:
            stub = Stub(channel)
            request = customer_pb2.UpsertCustomerRequest(customer_id=customer.customer_id, plan_slug="open")
            request.billing_anchor_time.FromDatetime(now - timedelta(days=45))
            stub.UpsertCustomer(request, timeout=10)
            for txn, at in (("old", customer.old_usage_at), ("recent", customer.recent_usage_at)):
                usage = usage_pb2.RecordUsageRequest(
                    customer_id=customer.customer_id, meter_slug="tokens", quantity="5", transaction_id=txn
                )
                usage.event_time.FromDatetime(at)
                stub.RecordUsage(usage, timeout=10)
    finally:
        recorder.stop()
    return customer


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as found:
        yield found


@pytest.fixture(scope="module")
def standin() -> Iterator[StripeStandIn]:
    server = StripeStandIn(STRIPE_API_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scraped_service(
    scraped_database: str,
    billing_customer: BillingCustomer,
    receiver: Receiver,
    standin: StripeStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """A service process of this module's own: only this module's calls reach it. It closes
    periods every 200 ms, delivers invoice.finalized webhooks to a live receiver and exports
    usage to the Stripe stand-in, so that the invoice, outbox, webhook and Stripe series have
    samples (the dashboard's panels for them)."""
    files = tmp_path_factory.mktemp("files")
    webhooks = files / "webhooks.toml"
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    webhooks.write_text(
        f'[endpoints.finance]\nurl = "{receiver.url}"\nsecrets = ["{secret}"]\ntypes = ["invoice.finalized"]\n'
    )
    mapping = files / "stripe.toml"
    mapping.write_text(
        '[meters.tokens]\nevent_name = "api_tokens"\n[customers]\nunlisted = "skip"\n[customers.ids]\n'
        f'"{billing_customer.customer_id}" = "{STRIPE_CUSTOMER}"\n'
    )
    env = {
        "METERING_WEBHOOKS_FILE": str(webhooks),
        "METERING_INVOICE_GRACE": "5s",
        "METERING_CLOSE_INTERVAL": "200ms",
        "METERING_STRIPE_FILE": str(mapping),
        "METERING_STRIPE_API_KEY": STRIPE_API_KEY,
        "METERING_STRIPE_API_BASE": standin.url,
        "METERING_STRIPE_SETTLE_DELAY": "0s",
        "METERING_STRIPE_INTERVAL": "200ms",
    }
    process = ServiceProcess(scraped_database, extra_env=env).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def prometheus(
    prometheus_tools: PrometheusTools, scraped_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    server = start_prometheus(
        prometheus_tools.prometheus, scraped_service.metrics_port, tmp_path_factory.mktemp("prom")
    )
    try:
        server.scrape_after(time.time())  # the target is up and scraped
        yield server
    finally:
        server.stop()


@pytest.fixture
def service_stub(scraped_service: ServiceProcess) -> Iterator[Stub]:
    with grpc.insecure_channel(scraped_service.target) as channel:
        yield Stub(channel)


# -- traffic --------------------------------------------------------------------


def _customer(stub: Stub, plan: str) -> str:
    customer = f"prom-{os.urandom(6).hex()}"
    stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug=plan), timeout=10)
    return customer


def _record(stub: Stub, customer: str, meter: str, txn: str, quantity: str) -> grpc.StatusCode:
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug=meter, quantity=quantity, transaction_id=txn
    )
    return _record_request(stub, request)


def _record_request(stub: Stub, request: usage_pb2.RecordUsageRequest) -> grpc.StatusCode:
    try:
        stub.RecordUsage(request, timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _drive_limited_customer(stub: Stub) -> None:
    """Known traffic on plan `limited` of tests/catalog.toml: `calls` (count,
    hard limit 5 a day) and `tokens` (sum, hard limit 100)."""
    customer = _customer(stub, "limited")
    ok, refused = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
    codes = [_record(stub, customer, "calls", f"c{i}", "1") for i in range(1, 6)]  # 5 recorded: the limit
    codes += [_record(stub, customer, "calls", f"c{i}", "1") for i in (1, 2)]  # 2 duplicates
    codes += [_record(stub, customer, "calls", f"c{i}", "1") for i in (6, 7, 8)]  # 3 over the limit
    assert codes == [ok] * 7 + [refused] * 3
    codes = [_record(stub, customer, "tokens", f"t{i}", "20") for i in range(1, 5)]  # 80 of 100
    codes.append(_record(stub, customer, "tokens", "t1", "20"))  # duplicate
    codes += [_record(stub, customer, "tokens", f"t{i}", "30") for i in (5, 6)]  # 80 + 30 > 100
    assert codes == [ok] * 5 + [refused] * 2


def _drive_every_family(stub: Stub) -> None:
    """Traffic that gives every labelled metric samples: recorded, duplicate,
    limit-refused and payload-conflicting events, and an overage."""
    _drive_limited_customer(stub)
    soft = _customer(stub, "soft")
    assert _record(stub, soft, "tokens", "s1", "150") == grpc.StatusCode.OK  # 50 over a soft limit of 100
    assert _record(stub, soft, "tokens", "s1", "9") == grpc.StatusCode.ALREADY_EXISTS


def _delta(before: dict[Labels, float], after: dict[Labels, float]) -> dict[Labels, float]:
    """What each series grew by; a series absent before started at zero (a
    labelled counter appears at its first increment)."""
    changed = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return {key: value for key, value in changed.items() if value != 0}


def test_prometheus_shows_exactly_the_traffic_sent(prometheus: PrometheusServer, service_stub: Stub) -> None:
    queries: dict[str, tuple[str, Labels]] = {
        "events": (f'sum by (meter, outcome) (metering_events_total{{job="{JOB}"}})', ("meter", "outcome")),
        "rejections": (f'sum by (meter, plan) (metering_limit_rejections_total{{job="{JOB}"}})', ("meter", "plan")),
        "quantity": (f'sum by (meter) (metering_quantity_recorded_total{{job="{JOB}"}})', ("meter",)),
        "requests": (
            f'sum by (method, code, caller) (metering_grpc_requests_total{{job="{JOB}"}})',
            ("method", "code", "caller"),
        ),
        "latency_count": (
            f'sum by (method) (metering_grpc_request_duration_seconds_count{{job="{JOB}"}})',
            ("method",),
        ),
    }
    start = prometheus.scrape_after(time.time())
    before = {name: prometheus.by_labels(expr, labels, start) for name, (expr, labels) in queries.items()}

    _drive_limited_customer(service_stub)
    end = prometheus.scrape_after(time.time())
    after = {name: prometheus.by_labels(expr, labels, end) for name, (expr, labels) in queries.items()}
    grew = {name: _delta(before[name], after[name]) for name in queries}

    assert grew["events"] == {
        ("calls", "recorded"): 5,
        ("calls", "duplicate"): 2,
        ("calls", "rejected"): 3,
        ("tokens", "recorded"): 4,
        ("tokens", "duplicate"): 1,
        ("tokens", "rejected"): 2,
    }
    assert grew["rejections"] == {("calls", "limited"): 3, ("tokens", "limited"): 2}
    assert grew["quantity"] == {("calls",): 5, ("tokens",): 80}
    assert grew["requests"] == {
        (SERVICE + "UpsertCustomer", "OK", "anonymous"): 1,
        (SERVICE + "RecordUsage", "OK", "anonymous"): 12,
        (SERVICE + "RecordUsage", "RESOURCE_EXHAUSTED", "anonymous"): 5,
    }
    assert grew["latency_count"] == {(SERVICE + "UpsertCustomer",): 1, (SERVICE + "RecordUsage",): 17}
    # The same increase computed by Prometheus itself (the @ modifier pins the
    # earlier scrape; the series did not exist before this module's traffic).
    recorded = f'metering_events_total{{job="{JOB}",outcome="recorded"}}'
    increase = f"sum({recorded}) - (sum({recorded} @ {start:.3f}) or vector(0))"
    assert prometheus.by_labels(increase, (), end) == {(): 9}
    gauges = prometheus.by_labels(
        f'{{job="{JOB}",__name__=~"metering_database_up|metering_db_pool_max"}}', ("__name__",), end
    )
    assert gauges == {("metering_database_up",): 1, ("metering_db_pool_max",): 10}


# -- promtool -------------------------------------------------------------------


def test_exposition_passes_promtool_check_metrics(
    prometheus_tools: PrometheusTools, scraped_service: ServiceProcess, service_stub: Stub
) -> None:
    _drive_every_family(service_stub)  # so that the lint sees every family with samples
    exposition = scraped_service.scrape()
    for family in (
        "metering_events_total{",
        "metering_quantity_recorded_total{",
        "metering_limit_rejections_total{",
        "metering_overage_quantity_total{",
        "metering_grpc_requests_total{",
        "metering_grpc_request_duration_seconds_bucket{",
        "metering_write_batch_events_bucket{",
        "metering_database_up ",
        "metering_db_pool_in_use ",
    ):
        assert family in exposition

    checked = promtool(prometheus_tools, "check", "metrics", stdin=exposition)

    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_alert_rules_pass_promtool_checks_and_unit_tests(prometheus_tools: PrometheusTools) -> None:
    for args in (
        ("check", "rules", str(RULES)),
        ("test", "rules", str(RULE_TESTS)),
        ("check", "config", str(EXAMPLE_CONFIG)),  # also checks the rule files it names
        ("check", "config", str(COMPOSE_CONFIG)),
    ):
        done = promtool(prometheus_tools, *args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
        assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_has_unit_tests_firing_and_not_firing() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), re.MULTILINE))
    assert len(alerts) >= 5
    # Each alert_rule_test case starts with its eval_time; an exact empty
    # exp_alerts says the alert must not fire then.
    cases = re.split(r"^\s*- eval_time:", RULE_TESTS.read_text(), flags=re.MULTILINE)[1:]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        name = re.search(r"alertname: (\w+)", case)
        assert name is not None, case
        (silent if re.search(r"exp_alerts: \[\]", case) else firing).add(name[1])
    assert firing == alerts
    assert silent == alerts


# -- PromQL against the real exposition -----------------------------------------

TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_PROMQL_KEYWORDS |= {"offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (no parser in the
    standard library, and this Prometheus has no parse endpoint)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for word in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        if text[word.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if word[0].lower() not in _PROMQL_KEYWORDS:
            names.add(word[0])
    return names


def promql_label_names(expr: str) -> set[str]:
    """The label names a PromQL expression matches on or groups by."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set()
    for matchers in re.findall(r"\{([^}]*)\}", text):
        names |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        names |= {label.strip() for label in grouping.split(",") if label.strip()}
    return names - {"__name__"}


def test_promql_names_finds_the_selected_metrics_and_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (method, le) (rate(m_bucket{method!~".*/S",a="rate(x)"}[$__rate_interval])))'
        " / ignoring(le) group_left sum without (code) (other_total offset 5m) > bool 1e3 and on(instance) up"
    )
    assert promql_metric_names(expr) == {"m_bucket", "other_total", "up"}
    assert promql_metric_names('{__name__="x"} or vector(0)') == set()
    assert promql_label_names(expr) == {"method", "le", "a", "code", "instance"}


@dataclass(frozen=True)
class Exposed:
    metrics: set[str]
    labels: set[str]


def exposed_names(exposition: str) -> Exposed:
    """Every sample name a text exposition declares (histogram families
    included, whether or not they have samples yet) and every label name of
    its samples."""
    metrics, labels = set(), set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            metrics |= {family + suffix for suffix in suffixes}
        elif line and not line.startswith("#"):
            metrics.add(re.split(r"[{ ]", line, maxsplit=1)[0])
            labels |= set(re.findall(r'[{,](\w+)="', line))
    return Exposed(metrics, labels)


def exposed_after_traffic(service: ServiceProcess, stub: Stub) -> Exposed:
    """The names the service exposes once its labelled metrics have samples
    (a labelled family shows no label names until then)."""
    _drive_every_family(stub)
    return exposed_names(service.scrape())


def test_alert_rules_evaluate_on_live_series_with_exposed_names(
    prometheus: PrometheusServer, scraped_service: ServiceProcess, service_stub: Stub
) -> None:
    """promtool checks the rules against series written by hand; here they
    meet the real ones: every metric and label they use must exist (a wrong
    name would just never fire), and Prometheus evaluates them without error."""
    never = "0001-01-01T00:00:00Z"
    rules: list[dict[str, Any]] = []

    def evaluated() -> bool:
        rules[:] = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        return bool(rules) and all(rule["lastEvaluation"] != never for rule in rules)

    assert wait_for(evaluated, timeout=30, interval=0.5), rules
    alerts = set(re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), re.MULTILINE))
    assert {rule["name"] for rule in rules} == alerts
    assert [(rule["name"], rule["health"], rule.get("lastError", "")) for rule in rules if rule["health"] != "ok"] == []

    exposed = exposed_after_traffic(scraped_service, service_stub)
    for rule in rules:
        assert promql_metric_names(rule["query"]) - exposed.metrics <= {"up"}, rule["name"]
        assert promql_label_names(rule["query"]) - exposed.labels <= TARGET_LABELS, rule["name"]
    templated = set(re.findall(r"\$labels\.(\w+)", RULES.read_text()))
    assert templated - exposed.labels <= TARGET_LABELS


# -- the Grafana dashboard ------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


@pytest.fixture(scope="module")
def billing_activity(
    scraped_service: ServiceProcess, billing_customer: BillingCustomer, receiver: Receiver, standin: StripeStandIn
) -> None:
    """What the invoice, outbox, webhook and Stripe panels show, made to happen: the billing
    customer's first period finalized and its invoice.finalized webhook delivered, its recent
    hour sent to Stripe and its hour older than 35 days skipped, and a late event refused."""
    customer = billing_customer.customer_id

    def delivered() -> bool:
        return any(r.notification.get("customerId") == customer for r in receiver.delivered())

    assert wait_for(delivered, timeout=60, interval=0.2), "no invoice.finalized webhook delivered"
    assert wait_for(lambda: any(e.customer == STRIPE_CUSTOMER for e in standin.counted()), timeout=60, interval=0.2)

    def skipped() -> bool:
        return metric_value(scraped_service.scrape(), "metering_stripe_meter_events_skipped_total", meter="tokens") >= 1

    assert wait_for(skipped, timeout=60, interval=0.2), "the hour older than 35 days was not skipped"
    late = usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity="1", transaction_id="late")
    late.event_time.FromDatetime(billing_customer.old_usage_at + timedelta(hours=1))
    with grpc.insecure_channel(scraped_service.target) as channel:
        assert _record_request(Stub(channel), late) == grpc.StatusCode.FAILED_PRECONDITION


def test_dashboard_queries_use_exposed_metrics_and_evaluate(
    prometheus: PrometheusServer, scraped_service: ServiceProcess, service_stub: Stub, billing_activity: None
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    panels = [panel for panel in _panels(dashboard) if panel["type"] != "row"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    exprs: dict[str, str] = {}
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert promql_metric_names(target["expr"]), f"{panel['title']}: selects no metric"
            exprs[f"{panel['title']} / {target['refId']}"] = target["expr"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    variable_query = variables["instance"]["query"]["query"]
    variable_metric = re.fullmatch(r"label_values\((\w+), *instance\)", variable_query)
    assert variable_metric is not None, variable_query

    referenced = {name for expr in exprs.values() for name in promql_metric_names(expr)} | {variable_metric[1]}
    exposed = exposed_after_traffic(scraped_service, service_stub)
    assert referenced - exposed.metrics == set(), "the dashboard queries metrics the service does not expose"
    labels = {name for expr in exprs.values() for name in promql_label_names(expr)}
    assert labels - exposed.labels <= TARGET_LABELS, "the dashboard uses labels the service does not expose"
    # What the issue asks the dashboard to show.
    assert referenced >= {
        "metering_events_total",
        "metering_limit_rejections_total",
        "metering_grpc_request_duration_seconds_bucket",
        "metering_grpc_requests_total",
        "metering_db_pool_in_use",
        "metering_db_pool_size",
        "metering_db_pool_max",
        "metering_database_up",
        # Invoices, the outbox, webhooks and the Stripe export.
        "metering_invoices_finalized_total",
        "metering_invoice_oldest_unclosed_period_age_seconds",
        "metering_invoice_pricing_failures_total",
        "metering_notifications_written_total",
        "metering_webhook_attempts_total",
        "metering_webhook_delivery_lag_seconds",
        "metering_webhook_delivery_seconds_bucket",
        "metering_webhook_dead_letters_total",
        "metering_stripe_meter_events_total",
        "metering_stripe_export_lag_seconds",
        "metering_stripe_meter_events_skipped_total",
    }
    all_exprs = "\n".join(exprs.values())
    for needle in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,"):
        assert needle in all_exprs
    for grouping in (
        "by (meter, outcome)",
        "by (meter, plan)",
        "by (method, code)",
        "by (caller)",
        "by (type)",
        "by (endpoint, outcome)",
    ):
        assert grouping in all_exprs

    # rate() needs two samples of a series: wait for two scrapes after the
    # traffic above (its series may be new).
    prometheus.scrape_after(prometheus.scrape_after(time.time()))
    # Grafana fills in its variables before sending a query; do the same, then
    # let Prometheus parse and evaluate each one (a PromQL error is HTTP 400).
    # After traffic of every kind, every panel has something to show.
    for title, expr in exprs.items():
        concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        assert "$" not in concrete, title
        assert prometheus.query(concrete), f"{title}: no data for {concrete}"
    # The replica variable lists the scraped service.
    assert prometheus.query(f'count by (instance) ({variable_metric[1]}{{job="{JOB}"}})')
