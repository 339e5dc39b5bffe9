"""Processes as /proc shows them: parents, states, and signals to a set of them.

The one reading of /proc/<pid>/stat for the tests and the fault benchmarks
(tests.support, tests.replication, tests.faults): a PostgreSQL server's
backends are its postmaster's children, a supervisor's workers its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or
    None once the process is gone. The name is in parentheses and may itself
    hold spaces or parentheses, hence the split at the last ")"."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    try:
        return None if fields is None else int(fields[1])
    except (IndexError, ValueError):
        return None


def state_of(pid: int) -> str | None:
    """R, S, T, Z..., or None once it is gone."""
    fields = _stat_fields(pid)
    return None if not fields else fields[0]


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def named(command: str) -> list[int]:
    """The processes whose command name (/proc/<pid>/comm) is `command`."""
    found = []
    for pid in _pids():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as comm:  # OSError: ended since listed
            if comm.read().strip() == command:
                found.append(pid)
    return found


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, in pid order."""
    return sorted(p for p in _pids() if parent_of(p) == pid)


def signal_all(pids: Iterable[int], signal_number: int) -> None:
    """Send the signal to each process that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal_number)
