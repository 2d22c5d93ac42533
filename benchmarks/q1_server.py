"""Where the PostgreSQL server's CPU goes in queue mode's Q1: per process kind, per
statement, WAL per task.

``python benchmarks/q1_server.py [TASKS] [ROUNDS] [--no-autovacuum] [--plain] [--map]``: a
throwaway server with ``pg_stat_statements`` (not with ``--plain``), our two Q1 daemons (2 x 1
worker), our ``map`` of the same tasks once (``--map``), and per round: the tasks/s,
the server's CPU per task split by process kind (client backends, the autovacuum workers
and other ended backends, walwriter, checkpointer, the rest), WAL bytes per task, and the
statements that took the most time (pg_stat_statements' time is wall time inside the
backend: CPU on an idle machine, plus waits on a loaded one).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_queue_ours as ours
import pg_server

# Server options of the profile: statement statistics (loaded at start) and every
# statement tracked, nested ones too (the claim's parts).
SETTINGS = (
    "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all "
    "-c pg_stat_statements.max=2000"
)
# Statements printed per round, the most costly first.
TOP = 12


def process_ticks(postmaster: int) -> dict[str, int]:
    """CPU ticks of the server's processes by kind; ``ended`` is what the postmaster
    reaped (autovacuum workers, closed connections: its children's times)."""
    kinds: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = pg_server._stat_fields(int(entry))
        if fields is None or (int(entry) != postmaster and int(fields[1]) != postmaster):
            continue
        if int(entry) == postmaster:
            kinds["postmaster"] = int(fields[11]) + int(fields[12])
            kinds["ended"] = int(fields[13]) + int(fields[14])
            continue
        kind = _kind(int(entry))
        kinds[kind] = kinds.get(kind, 0) + int(fields[11]) + int(fields[12])
    return kinds


def _kind(pid: int) -> str:
    """The process's title, reduced to its kind (``postgres: walwriter`` -> walwriter)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    words = title.removeprefix("postgres: ").split()
    if not words:
        return "other"
    if words[0] in ("autovacuum", "logical", "background"):
        return " ".join(words[:2])
    return words[0] if len(words) < 3 else "backend"  # user db host(port) state


def snapshot(url: str, postmaster: int) -> dict[str, object]:
    """What the server has done so far: CPU ticks by kind, WAL position, table counters."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        wal = connection.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        tables = connection.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, autovacuum_count, "
            "autoanalyze_count FROM pg_stat_user_tables WHERE relname IN ('arguments', "
            "'queue_projects', 'nodes') ORDER BY relname"
        ).fetchall()
    return {"ticks": process_ticks(postmaster), "wal": int(wal[0]), "tables": tables}


def statements(url: str) -> list[tuple[object, ...]]:
    """The most costly statements since the last reset: time, calls, rows, WAL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(
            "SELECT total_exec_time + total_plan_time, calls, rows, wal_bytes, wal_fpi, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements "
            f"ORDER BY 1 DESC LIMIT {TOP}"
        ).fetchall()


def reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_statements_reset()")


def report(before: dict, after: dict, tasks: int, rate: float, url: str | None) -> None:
    """Print one round: rate, server CPU per task by kind, WAL, table counters, SQL."""
    hz = os.sysconf("SC_CLK_TCK")
    kinds = sorted(set(before["ticks"]) | set(after["ticks"]))
    per = {
        k: (after["ticks"].get(k, 0) - before["ticks"].get(k, 0)) / hz / tasks * 1e6 for k in kinds
    }
    parts = " ".join(f"{k}={v:.1f}" for k, v in per.items() if v)
    print(f"Q1 {rate:,.0f}/s  server {sum(per.values()):.1f} us/task: {parts}")
    print(f"   WAL {(after['wal'] - before['wal']) / tasks:.0f} bytes/task")
    for old, new in zip(before["tables"], after["tables"], strict=False):
        delta = [n - o for n, o in zip(new[1:], old[1:], strict=True)]
        print(f"   {new[0]}: ins {delta[0]} upd {delta[1]} hot {delta[2]} "
              f"autovacuum {delta[3]} analyze {delta[4]}")  # fmt: skip
    for ms, calls, rows, wal, fpi, query in statements(url) if url else ():
        print(f"   {ms / tasks * 1000:6.2f} us/task {calls:6} calls {rows:7} rows "
              f"{int(wal) / tasks:6.0f} WAL B/task {fpi:5} fpi  {query}")  # fmt: skip


def _inc(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=int, nargs="?", default=20_000)
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    parser.add_argument("--no-autovacuum", action="store_true")
    parser.add_argument("--settings", default="", help="more server options")
    parser.add_argument("--plain", action="store_true", help="no statement statistics")
    parser.add_argument("--map", action="store_true", help="our map of the same tasks")
    args = parser.parse_args()
    settings = ("" if args.plain else SETTINGS) + (
        " -c autovacuum=off" if args.no_autovacuum else ""
    )
    if args.map:
        print(f"map {ours.map_rate(_inc, args.tasks):,.0f}/s", flush=True)
    with pg_server.running_server(f"{settings} {args.settings}") as server:
        url = pg_server.create_database(server.url, "qprof")
        import psycopg

        if not args.plain:
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute("CREATE EXTENSION pg_stat_statements")
        queue = ours.OurQueue(url)
        try:
            queue.ready()
            for _ in range(args.rounds):
                if not args.plain:
                    reset(url)
                before = snapshot(url, server.postmaster_pid())
                rate = queue.q1(args.tasks)
                after = snapshot(url, server.postmaster_pid())
                report(before, after, args.tasks, rate, None if args.plain else url)
        finally:
            import asyncio

            asyncio.run(queue.stop())


if __name__ == "__main__":
    main()
