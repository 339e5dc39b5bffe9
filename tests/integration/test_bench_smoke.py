"""The benchmark suite runs (tiny sizes). It asserts nothing about speed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support import ROOT

# Slow tier: the benchmark suite.
pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)  # ~2 min on a loaded 2-core machine
def test_benchmark_suite_completes(make_database: Callable[[], str]) -> None:
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--database-url", make_database()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for heading in (
        "== empty ledger ==",
        "-- ratios: empty ledger --",
        "raw COPY (storage ceiling)",
        "-- memory:",
        "bare grpc.aio no-op",
        "-- ratios: against the bare grpc.aio no-op (same run) --",
        "== 2 worker processes",
        "-- ratios: 2 workers / 1 worker (same run) --",
        "2 workers stopped (exit 0)",
    ):
        assert heading in result.stdout, result.stdout[-4000:]
