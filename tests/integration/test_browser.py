"""gRPC-Web from a real browser: headless Chromium loads a page served on another
origin (examples/node/web: @connectrpc/connect-web, bundled by esbuild), which calls
RecordUsage and CheckBalance with a bearer token, goes past the limit, and reports
what it got back to the server of the page, where the test reads it. CORS lets the
configured origin through and keeps another one out.

Chromium is Debian's `chromium`, installed with apt-get when it is missing and the
test runs as root (as CI does), as tests/integration/test_prometheus.py installs
Prometheus; under CI=true a missing browser (or Node.js, which builds the page)
fails the test rather than skipping it.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from metering.domain.access import caller_entry, new_token, token_digest
from tests.http_edge import call
from tests.support import ROOT, ServiceProcess, metric_value

# Slow tier: Chromium, a page server and a service of its own.
pytestmark = pytest.mark.slow

WEB = ROOT / "examples" / "node" / "web"
BUNDLE = ROOT / "examples" / "node" / "dist" / "web" / "page.js"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(why: str) -> None:
    if _in_ci():
        pytest.fail(f"{why}\nCI must run the browser test.", pytrace=False)
    pytest.skip(why)


def _apt_install_chromium() -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = []
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", "chromium"],
    ):
        done = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900, check=False
        )
        output.append(f"$ {' '.join(command)} -> {done.returncode}\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
        if done.returncode != 0:
            break
    return "\n".join(output)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log = _apt_install_chromium()
        found = shutil.which("chromium")
        if found is None:
            _unavailable(f"chromium missing and `apt-get install chromium` did not provide it:\n{log}")
    if found is None:
        _unavailable("chromium missing; installing Debian's `chromium` needs root and apt-get")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def page_bundle() -> Path:
    """examples/node/web/page.ts bundled (make node-example: npm ci, buf generate, tsc, esbuild)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _unavailable("node/npm missing: the browser page is built with npm (examples/node)")
    build = subprocess.run(
        ["make", "--no-print-directory", "node-example"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, f"make node-example failed:\n{build.stdout}\n{build.stderr}"
    assert BUNDLE.is_file()
    return BUNDLE


@dataclass
class PageServer:
    port: int
    reports: queue.Queue[str]  # what the page POSTed to /report

    def url(self, host: str, **params: str) -> str:
        return f"http://{host}:{self.port}/index.html?{urlencode({**params, 'report': '/report'})}"


@pytest.fixture(scope="module")
def page_server(page_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    root = tmp_path_factory.mktemp("web")
    shutil.copy(WEB / "index.html", root / "index.html")
    shutil.copy(page_bundle, root / "page.js")

    reports: queue.Queue[str] = queue.Queue()

    class Page(SimpleHTTPRequestHandler):
        """The page's files, and POST /report: the page's result."""

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            reports.put(self.rfile.read(length).decode())
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """No line per request."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Page, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield PageServer(int(server.server_address[1]), reports)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Browsed:
    service: ServiceProcess
    admin: str
    caller: str  # recorder and reader


@pytest.fixture(scope="module")
def browsed(page_server: PageServer, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browsed]:
    tokens = {"admin": new_token(), "web": new_token()}
    auth_file = tmp_path_factory.mktemp("browser-auth") / "callers.toml"
    auth_file.write_text(
        caller_entry("browser-admin", ["admin"], token_digests=[token_digest(tokens["admin"])])
        + caller_entry("browser-page", ["recorder", "reader"], token_digests=[token_digest(tokens["web"])])
    )
    env = {
        "METERING_AUTH_FILE": str(auth_file),
        # The page's origin (127.0.0.1), not the same page under `localhost`.
        "METERING_HTTP_CORS_ORIGINS": f"http://127.0.0.1:{page_server.port}",
    }
    service = ServiceProcess(database_url, extra_env=env).start()
    try:
        yield Browsed(service, tokens["admin"], tokens["web"])
    finally:
        service.stop()


def new_customer(browsed: Browsed) -> str:
    customer = f"browser-{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=browsed.service.http_url, timeout=10) as http:
        body = {"customerId": customer, "planSlug": "limited"}
        answer = call(http, "", "UpsertCustomer", body, {"authorization": f"Bearer {browsed.admin}"})
        assert answer.status_code == 200, answer.text
    return customer


def load(chromium: str, page_server: PageServer, url: str) -> dict[str, Any]:
    """What the page reported once its calls ended, loaded in headless Chromium."""
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        report = page_server.reports.get(timeout=60)
    except queue.Empty:
        browser.kill()
        _, stderr = browser.communicate(timeout=30)
        raise AssertionError(f"the page reported nothing within 60 s; Chromium said:\n{stderr[-3000:]}") from None
    finally:
        if browser.poll() is None:
            browser.terminate()
            try:
                browser.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.communicate()
    result = json.loads(report)
    assert isinstance(result, dict), result
    return result


def test_a_page_calls_the_service_over_grpc_web(chromium: str, page_server: PageServer, browsed: Browsed) -> None:
    customer = new_customer(browsed)
    before = browsed.service.scrape()
    url = page_server.url(
        "127.0.0.1",
        service=browsed.service.http_url,
        customer=customer,
        meter="tokens",
        quantity="40",
        token=browsed.caller,
    )
    result = load(chromium, page_server, url)
    print(json.dumps(result, indent=2))  # shown with -rP: what the browser saw
    assert result["ok"] is True, result
    assert result["recorded"]["quantity"] == "40" and result["recorded"]["duplicate"] is False
    assert result["balance"] == {"used": "40", "available": "60"}
    refusal = result["refusal"]
    assert (refusal["code"], refusal["reason"]) == ("ResourceExhausted", "LIMIT_EXCEEDED")
    assert refusal["metadata"]["available"] == "60" and refusal["metadata"]["requested"] == "61"
    after = browsed.service.scrape()
    record = {"method": "/metering.v1.MeteringService/RecordUsage", "caller": "browser-page", "protocol": "grpc-web"}
    assert (
        metric_value(after, "metering_grpc_requests_total", code="OK", **record)
        - metric_value(before, "metering_grpc_requests_total", code="OK", **record)
        == 1
    )
    assert metric_value(after, "metering_grpc_requests_total", code="RESOURCE_EXHAUSTED", **record) >= 1


def test_a_page_of_another_origin_is_kept_out(chromium: str, page_server: PageServer, browsed: Browsed) -> None:
    customer = new_customer(browsed)
    url = page_server.url(
        "localhost", service=browsed.service.http_url, customer=customer, meter="tokens", token=browsed.caller
    )
    result = load(chromium, page_server, url)
    assert result["ok"] is False, result  # the browser withheld the answer: CORS
    with httpx.Client(base_url=browsed.service.http_url, timeout=10) as http:
        balance = call(
            http, "", "CheckBalance", {"customerId": customer}, {"authorization": f"Bearer {browsed.caller}"}
        )
    assert balance.json()["balances"][0].get("used", "0") == "0"  # its preflight was refused: nothing recorded
