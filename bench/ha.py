"""Failover under load on a Patroni cluster: node loss, a crashed postmaster
and a silent leader, over N trials each (tests/ha.py has the scenario).

    .venv/bin/python bench/ha.py --trials 5              # every kind, 5 trials each (~25 min)
    .venv/bin/python bench/ha.py --kinds silent --trials 1

Needs root (PostgreSQL runs as the wheel's user; the silent leader's packets
are dropped with iptables) and etcd (Debian's etcd-server, installed when
missing). Prints one row per trial and a summary per kind; exit status 1 when
a trial broke a promise (an acknowledged event lost, an overspend, a
duplicate invoice, a webhook mismatch, an old leader not back as sync
standby, an audit difference).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.ha` and `tests.patroni`
# Services and Patroni members are started from threads while the client's gRPC is busy: see bench/chaos.py.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from tests.ha import Kind, Trial, trial
from tests.patroni import LOOP_WAIT, RETRY_TIMEOUT, TTL, require_tools

KINDS = {"node": Kind.NODE, "postmaster": Kind.POSTMASTER, "silent": Kind.SILENT}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(index: int, t: Trial) -> str:
    failed = ", ".join(f"{code} {n}" for code, n in t.failed.most_common()) or "none"
    holds = t.reservations
    return (
        f"{t.kind.value:<17} {index:>2} {_s(t.promoted_after):>8} {_s(t.first_ack_after_kill):>9} "
        f"{_s(t.first_ack_after_promotion):>10} "
        f"{t.acked:>6} {t.lost:>4} {t.overspend:>5} {t.duplicates:>4} "
        f"{t.invoices_due - t.invoices_missing:>2}/{t.invoices_due:<2} {t.invoices_duplicated:>3} "
        f"{t.notifications - t.webhooks_undelivered:>3}/{t.notifications:<3} {t.webhook_mismatches:>4} "
        f"{0 if holds is None else len(holds.committed):>5} {t.old_leader_role or '?':>12} {_s(t.rejoined_after):>7} "
        f"{'ok' if not t.problems else 'FAIL':>4}  {failed}"
    )


HEADER = (
    f"{'kind':<17} {'#':>2} {'promoted':>8} {'kill→ack':>9} {'promo→ack':>10} "
    f"{'acked':>6} {'lost':>4} {'over':>5} {'dup':>4} "
    f"{'inv':>5} {'2x':>3} {'hooks':>7} {'mism':>4} {'holds':>5} {'old leader':>12} {'rejoin':>7} {'':>4}  failed calls"
)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kinds", default="node,postmaster,silent")
    parser.add_argument("--seconds", type=float, default=40.0, help="load per trial (the kill comes at --kill-at)")
    parser.add_argument("--kill-at", type=float, default=6.0)
    parser.add_argument("--tasks", type=int, default=6, help="concurrent client tasks")
    args = parser.parse_args()
    why = require_tools()
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(
        f"Patroni ttl {TTL}, loop_wait {LOOP_WAIT}, retry_timeout {RETRY_TIMEOUT}, synchronous_mode; "
        f"load average at start {load[0]:.2f} on {os.cpu_count()} cores"
    )
    print("seconds: promoted = from the kill (or the silence) to the other member seen leading (GET /cluster);")
    print("kill→ack = from the kill (or the silence) to the first acknowledged write begun after it;")
    print("promo→ack = from the other member seen leading to that write; rejoin = from the old leader's return")
    print("(restart after node loss, thaw after silence, the kill for a postmaster crash) to sync standby")
    print()
    print(HEADER)
    results: list[Trial] = []
    base = Path(tempfile.mkdtemp(prefix="ha-", dir=os.environ.get("TMPDIR")))
    try:
        for index in range(1, args.trials + 1):
            for name in args.kinds.split(","):
                directory = base / f"{name}-{index}"
                directory.mkdir()
                done = await trial(directory, KINDS[name], seconds=args.seconds, tasks=args.tasks, kill_at=args.kill_at)
                results.append(done)
                print(row(index, done), flush=True)
                if done.how_silenced:
                    during = "yes" if done.acked_while_silent else "no: writes resumed only once it came back"
                    print(
                        f"    silenced by {done.how_silenced}; a write acknowledged while silent: {during}", flush=True
                    )
                for problem in done.problems:
                    print(f"    {problem}", flush=True)
                shutil.rmtree(directory, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    for kind in {t.kind for t in results}:
        mine = [t for t in results if t.kind is kind]
        waits = [t.first_ack_after_kill for t in mine if t.first_ack_after_kill is not None]
        promo = [t.first_ack_after_promotion for t in mine if t.first_ack_after_promotion is not None]
        print(
            f"{kind.value}: {len(mine)} trials, kill→ack median {_s(statistics.median(waits) if waits else None)} s "
            f"max {_s(max(waits, default=None))} s; promotion→ack median "
            f"{_s(statistics.median(promo) if promo else None)} s max {_s(max(promo, default=None))} s; "
            f"lost {sum(t.lost for t in mine)}, overspend {sum(t.overspend for t in mine)}, "
            f"INTERNAL {sum(t.failed.get('INTERNAL', 0) for t in mine)}, failing trials "
            f"{sum(bool(t.problems) for t in mine)}"
        )
    targets = {Kind.SILENT: ("promotion→ack", 5.0), Kind.NODE: ("kill→ack", 10.0)}
    for kind, (what, bound) in targets.items():
        mine = [t for t in results if t.kind is kind]
        if mine:
            worst = [t.first_ack_after_promotion if kind is Kind.SILENT else t.first_ack_after_kill for t in mine]
            met = all(w is not None and w <= bound for w in worst)
            print(f"target {kind.value}: {what} <= {bound:g} s: {'met' if met else 'MISSED'} in {len(mine)} trials")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 1 if any(t.problems for t in results) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
