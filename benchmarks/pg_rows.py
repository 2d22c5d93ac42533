"""The PostgreSQL server's CPU and WAL per argument for each step of a queued task, alone.

``python benchmarks/pg_rows.py [ARGS] [--claim N] [--write N] [--rounds R]``: a throwaway
server; per round, one process through the store's own API: commit a queued project of
ARGS arguments, claim them in batches of ``--claim``, record their outcomes in batches of
``--write``, then ``VACUUM`` the arguments (autovacuum's work, done at once). For each step:
the serving backend's CPU per argument (``/proc/PID/schedstat``: nanoseconds on a CPU,
so waits for the client do not count), the rest of the server's (walwriter, checkpointer),
and WAL bytes per argument.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pg_server

from ceranubis_jupyter.projects.stores import open_store

# The default batch sizes: what Q1's daemons do (a claim of ~1,700 arguments, a write
# of ~700 outcomes, measured with benchmarks/q1_server.py).
CLAIM_BATCH = 1700
WRITE_BATCH = 700
# The tiny task's argument and result, pickled as the executor sends them.
ARG = b"\x80\x05\x95\x07\x00\x00\x00\x00\x00\x00\x00K\x01\x85\x94."
RESULT = b"\x80\x05K\x02."
# A daemon's owner and host names as Q1's have them (their length is what rows carry).
OWNER, HOST = "bench-12345-0#0123abcd", "bench-12345-0"
# Seconds for a backend's table counters to reach pg_stat_user_tables (it sends them
# when idle, at most once a second).
STATS_SECONDS = 1.2


def on_cpu_ns(pid: int) -> int:
    """Nanoseconds process ``pid`` has run on a CPU (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except OSError:
        return 0


def server_ns(postmaster: int) -> dict[int, int]:
    """On-CPU nanoseconds of the postmaster and each of its children, by PID."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = pg_server._stat_fields(int(entry))
            if fields is not None and (int(entry) == postmaster or int(fields[1]) == postmaster):
                found[int(entry)] = on_cpu_ns(int(entry))
    return found


class Meter:
    """Measures one step: the backend's CPU, the rest of the server's, WAL bytes."""

    def __init__(self, monitor: Any, backend: int, postmaster: int) -> None:
        self.monitor, self.backend, self.postmaster = monitor, backend, postmaster
        self.rows: dict[str, list[tuple[float, float, float]]] = {}

    def _wal(self) -> int:
        return int(self.monitor.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()[0])

    def _updates(self) -> tuple[int, int, int]:
        """Updates of the arguments so far, HOT ones, and the table's pages."""
        time.sleep(STATS_SECONDS)  # the backend's counters reach the view
        self.monitor.execute("SELECT pg_stat_clear_snapshot()")
        row = self.monitor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size('arguments') / 8192 "
            "FROM pg_stat_user_tables WHERE relname = 'arguments'"
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def step(self, name: str, count: int, work: Callable[[], Any]) -> Any:
        updates = self._updates()
        wal, server, mine = self._wal(), server_ns(self.postmaster), on_cpu_ns(self.backend)
        done = work()
        mine = on_cpu_ns(self.backend) - mine
        after = server_ns(self.postmaster)
        rest = sum(v - server.get(p, 0) for p, v in after.items()) - mine
        wal = self._wal() - wal
        upd, hot, pages = (b - a for a, b in zip(updates, self._updates(), strict=True))
        self.rows.setdefault(name, []).append((mine / count / 1e3, rest / count / 1e3,
                                               wal / count, hot / max(upd, 1), pages))  # fmt: skip
        return done

    def report(self) -> None:
        for name, samples in self.rows.items():
            mine, rest, wal, hot, pages = (
                statistics.median(s[i] for s in samples) for i in range(5)
            )
            print(f"{name:10} backend {mine:6.2f} us/arg  rest of server {rest:5.2f} us/arg"
                  f"  WAL {wal:5.0f} B/arg  HOT {hot:4.0%}  +{pages:.0f} pages")  # fmt: skip


def one_round(store: Any, meter: Meter, args: int, claim: int, write: int) -> None:
    """Commit, claim, record, vacuum one project (see the module)."""
    blobs = [ARG] * args
    row, _ = meter.step("commit", args, lambda: store.add_project(
        f"p{time.time_ns()}", "", "f", [], None, blobs, "queue", queued=(0, "", 0.0)))  # fmt: skip
    claimed: list[Any] = []

    def claim_all() -> None:
        while len(claimed) < args:
            got = store.claim_arguments(row.id, OWNER, HOST, claim, 30.0)
            assert got, "nothing claimed"
            claimed.extend(got)

    meter.step("claim", args, claim_all)
    now = time.time()
    flat: list[Any] = []
    for got in claimed:
        flat += (got.arg_id, RESULT, HOST, got.attempts, now, now)

    def record_all() -> None:
        per = write * 6
        for start in range(0, len(flat), per):
            store.record_outcomes([], flat[start : start + per])

    meter.step("outcomes", args, record_all)
    meter.step("vacuum", args, lambda: meter.monitor.execute("VACUUM arguments"))
    assert store.counts(row.id)["done"] == args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("args", type=int, nargs="?", default=20_000)
    parser.add_argument("--claim", type=int, default=CLAIM_BATCH)
    parser.add_argument("--write", type=int, default=WRITE_BATCH)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settings", default="-c autovacuum=off")
    options = parser.parse_args()
    import psycopg

    with pg_server.running_server(options.settings) as server:
        url = pg_server.create_database(server.url, "rows")
        store = open_store(url)
        store.init_queue()
        with psycopg.connect(url, autocommit=True) as monitor:
            backend = monitor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = 'rows' AND "
                "backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            # VACUUM from the monitor: its CPU is the backend's of the monitor.
            meter = Meter(monitor, backend, server.postmaster_pid())
            meter.backend = backend
            for _ in range(options.rounds):
                one_round(store, meter, options.args, options.claim, options.write)
            meter.report()
        store.close()


if __name__ == "__main__":
    main()
