"""A host gone silent: every packet to and from a PostgreSQL server's port on
127.0.0.1 dropped by iptables, no reset sent, as when a machine's network
dies. The rules are inserted with an exact spec and deleted by that same
spec (never a flush), so the machine's other rules, and other tests', stay.

iptables is Debian's `iptables` package, installed when missing (as root,
as CI runs), as tests/integration/test_prometheus.py installs Prometheus.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest


def _rules(port: int) -> list[list[str]]:
    """The two rules of a silent port: what reaches it, and what it sends (on
    loopback both pass INPUT; OUTPUT is left alone so the drop is the peer's view)."""
    base = ["INPUT", "-p", "tcp", "-i", "lo"]
    return [
        [*base, "--dport", str(port), "-j", "DROP", "-m", "comment", "--comment", f"metering-test-silent-{port}"],
        [*base, "--sport", str(port), "-j", "DROP", "-m", "comment", "--comment", f"metering-test-silent-{port}"],
    ]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True, timeout=30, check=False)


def ensure_iptables() -> None:
    """iptables that can add and remove a rule here; installed from Debian when missing; else the test fails."""
    if shutil.which("iptables") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", "iptables"],
        ):
            subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=600, check=False)
    if shutil.which("iptables") is None:
        pytest.fail("iptables is missing (install Debian's `iptables` as root)", pytrace=False)
    listed = _iptables("-S", "INPUT")
    if listed.returncode != 0:
        pytest.fail(f"iptables does not work here (needs root and CAP_NET_ADMIN): {listed.stderr}", pytrace=False)


@contextlib.contextmanager
def silent(port: int) -> Iterator[None]:
    """Drop every packet to and from 127.0.0.1:`port` while inside; the rules are removed on the way out."""
    added: list[list[str]] = []
    try:
        for rule in _rules(port):
            done = _iptables("-I", *rule)
            if done.returncode != 0:
                raise RuntimeError(f"iptables -I {' '.join(rule)}: {done.stderr}")
            added.append(rule)
        yield
    finally:
        for rule in added:
            _iptables("-D", *rule)
