"""GET /health on the metrics port of a single process: the same answer a supervisor gives
for its workers (tests/integration/test_workers.py, test_shutdown_delay.py), not the metrics page."""

from __future__ import annotations

import urllib.request

from tests.support import ServiceProcess


def get(service: ServiceProcess, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}{path}", timeout=5) as response:
        return int(response.status), response.headers["Content-Type"], response.read().decode()


def test_health_says_the_one_process_serves(service: ServiceProcess) -> None:
    status, content_type, body = get(service, "/health")
    assert (status, body) == (200, "SERVING: 1 of 1 workers serving\n")
    assert content_type.startswith("text/plain")


def test_the_metrics_page_stays_where_it_was(service: ServiceProcess) -> None:
    status, _, body = get(service, "/metrics")
    assert status == 200
    assert "# TYPE metering_database_up gauge" in body
    assert "workers serving" not in body
