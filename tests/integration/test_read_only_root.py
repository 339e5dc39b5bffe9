"""The service runs on a read-only root file system with only /tmp writable, as the Kubernetes
Deployment runs it (deploy/kubernetes/deployment.yaml: readOnlyRootFilesystem, an emptyDir on
/tmp), with worker processes (their metrics files) and a pid file.

No container engine runs here: the service runs in a mount namespace of its own (`unshare`, as
root) where / is remounted read-only and /tmp is an empty tmpfs."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from metering.api.health import LIVENESS_SERVICE, METERING_SERVICE
from metering.ledger.hosts import hosts_of
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ROOT, SERVING_LINE, TEST_CATALOG, health_status, metric_value

# Slow tier: a service (a supervisor and two workers) of its own.
pytestmark = pytest.mark.slow

NOT_READ_ONLY = 97  # the exit status when the namespace's root is writable after all


def _socket_directories(database_url: str) -> list[Path]:
    """The unix-socket directories a database URL names (the embedded PostgreSQL's lives
    in the test's temporary directory, which may be under /tmp)."""
    return [Path(host.host) for host in hosts_of(database_url) if host.host.startswith("/")]


def _keep_through_tmpfs(*paths: Path) -> str:
    """Shell that mounts an empty tmpfs on /tmp, as the container has, while keeping
    the checkout and the interpreter's environment where they are (read-only) when they
    live under /tmp themselves: a clone in /tmp (a CI's checkout) would vanish otherwise.
    They are held on a scratch tmpfs at /mnt across the new /tmp, then bound back."""
    keep = sorted({str(p.resolve()) for p in paths if p.resolve().is_relative_to("/tmp")})  # noqa: S108
    keep = [p for p in keep if not any(p != q and p.startswith(q + "/") for q in keep)]  # outermost only
    hold = "".join(f"mkdir /mnt/keep{i} && mount --bind {shlex.quote(p)} /mnt/keep{i} && " for i, p in enumerate(keep))
    back = "".join(
        f"mkdir -p {shlex.quote(p)} && mount --bind /mnt/keep{i} {shlex.quote(p)} && "
        f"mount -o remount,bind,ro {shlex.quote(p)} && "
        for i, p in enumerate(keep)
    )
    scratch = "mount -t tmpfs -o size=1m tmpfs /mnt && " if keep else ""
    return f"{scratch}{hold}mount -t tmpfs -o size=64m tmpfs /tmp && {back}"


def test_serves_and_stops_cleanly_with_only_tmp_writable(database_url: str) -> None:
    probe = ROOT / f".read-only-probe-{uuid.uuid4().hex[:8]}"
    service = shlex.join([sys.executable, "-m", "metering", "serve"])
    script = (
        "set -e; mount --bind / / && mount -o remount,bind,ro / && "
        f"{_keep_through_tmpfs(ROOT, Path(sys.prefix), *_socket_directories(database_url))}"
        f"if touch {shlex.quote(str(probe))} 2>/dev/null; then exit {NOT_READ_ONLY}; fi; "
        f"exec {service}"
    )
    env = {
        **os.environ,
        "METERING_DATABASE_URL": database_url,
        "METERING_CATALOG": str(TEST_CATALOG),
        "METERING_ALLOW_UNAUTHENTICATED": "1",
        "METERING_GRPC_HOST": "127.0.0.1",
        "METERING_GRPC_PORT": "0",
        "METERING_METRICS_HOST": "127.0.0.1",
        "METERING_METRICS_PORT": "0",
        "METERING_HTTP_PORT": "0",
        "METERING_WORKERS": "2",
        "METERING_PID_FILE": "/tmp/metering.pid",  # noqa: S108 - the namespace's own tmpfs, as configmap.yaml sets it
        "METERING_SHUTDOWN_DELAY": "1s",
        "METERING_CLOSE_INTERVAL": "1d",
        "METERING_LOG_LEVEL": "WARNING",
    }
    env.pop("TMPDIR", None)  # the service's temporary files go to /tmp, as in the container
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    ready = threading.Event()
    ports: dict[str, int] = {}

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = SERVING_LINE.search(line)
            if match:
                ports.update(grpc=int(match["port"]), metrics=int(match["metrics"]))
                ready.set()
        process.stdout.close()  # the process ended (EOF)
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        if not (ready.wait(90) and ports):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)  # 97: the root was writable
            raise AssertionError(f"did not serve (exit {process.poll()}):\n{''.join(output)}")
        target = f"127.0.0.1:{ports['grpc']}"
        for name in ("", METERING_SERVICE, LIVENESS_SERVICE):
            assert health_status(target, name) == health_pb2.HealthCheckResponse.SERVING, name
        customer = f"readonly-{uuid.uuid4().hex[:8]}"
        with grpc.insecure_channel(target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=10)
            request = usage_pb2.RecordUsageRequest(
                customer_id=customer, meter_slug="tokens", quantity="3", transaction_id="t1"
            )
            assert not stub.RecordUsage(request, timeout=10).duplicate
        # The supervisor sums the workers' metrics files, written to /tmp.
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5) as response:
            exposition = response.read().decode()
        assert metric_value(exposition, "metering_workers_serving") == 2
        assert metric_value(exposition, "metering_events_total", meter="tokens", outcome="recorded") == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        written = probe.exists()
        probe.unlink(missing_ok=True)
    assert not written, "the root file system was writable"
    log = "".join(output)
    assert "Traceback" not in log and "ERROR" not in log, log
