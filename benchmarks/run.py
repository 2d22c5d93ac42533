"""Run the benchmarks: ours and its peers side by side, in one run, and print the ratios.

``make bench`` (or ``.venv/bin/python benchmarks/run.py``). Each measurement is repeated
``--repeats`` times, interleaving the systems so that drift on a shared machine hits them
alike, and the medians are compared. The task functions live here, in ``__main__``, so
they must travel by value. Results go to ``benchmarks/results/`` as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import peers
import report
import workloads as w

# Repetitions of each measurement: the median of 5 resists two noisy samples, and the
# whole run stays under ~3 minutes.
REPEATS = 5
# Seconds the project-store benchmark (its own process) may take before it is stopped.
PROJECT_BENCH_TIMEOUT = 120.0
PROJECT_BENCH = Path(__file__).resolve().parent / "bench_project.py"
RERUN_BENCH = Path(__file__).resolve().parent / "bench_rerun.py"
SYNC_BENCH = Path(__file__).resolve().parent / "bench_sync.py"
# Seconds the data-sync benchmark (its own process: 1,001 files, 200 MB, both ways) may take.
SYNC_BENCH_TIMEOUT = 600.0
# Queue mode against pgqueuer and procrastinate (Q1-Q3) on its own PostgreSQL server.
QUEUE_BENCH = Path(__file__).resolve().parent / "bench_queue.py"
# Seconds bench_queue.py may take: procrastinate's Q1 alone takes ~1 minute, and Q3 waits
# through three 30 s windows.
QUEUE_BENCH_TIMEOUT = 900.0
# The many-hosts (H16) and how-cost-grows benchmarks, each in its own process.
HOSTS_BENCH = Path(__file__).resolve().parent / "bench_hosts.py"
# W6 over SSH with the CPU of the client, sshd, node and workers (its own process).
W6_BENCH = Path(__file__).resolve().parent / "bench_w6.py"
SCALE_BENCH = Path(__file__).resolve().parent / "bench_scale.py"
# Results bench_project.py stores in one run (9 projects of 20,000): for per-result costs.
PROJECT_STORED_TASKS = 9 * 20_000
# Seconds those two may take: 16 sshd and 32 Python processes start on 2 cores; 10M items.
LONG_BENCH_TIMEOUT = 900.0
# Tasks that depend on tasks and joblib, against dask.distributed and loky (its own process).
DEPS_BENCH = Path(__file__).resolve().parent / "bench_deps.py"
# Seconds it may take: dask's 10,000-task DAG runs for tens of seconds on a loaded machine.
DEPS_BENCH_TIMEOUT = 600.0
SSHD = "/usr/sbin/sshd"


def inc(x: int) -> int:
    """The tiny task of W1-W3 and W5."""
    return x + 1


def spin(n: int) -> int:
    """Pure-Python CPU work for W6."""
    total = 0
    for i in range(n):
        total += i
    return total


class Run:
    """One benchmark run: the systems, their live executors and the samples gathered."""

    def __init__(self, systems: list[peers.System], repeats: int) -> None:
        self.systems = systems
        self.repeats = repeats
        self.samples: dict[str, defaultdict[str, list[float]]] = {
            s.name: defaultdict(list) for s in systems
        }
        self.executors: dict[str, Executor] = {}
        self.notes: list[str] = []

    def record(self, system: str, key: str, value: float) -> None:
        self.samples[system][key].append(value)

    def each(self, label: str, measure: Callable[[str, Executor], None]) -> None:
        """Run ``measure`` on every live executor, ``repeats`` times, interleaved."""
        _progress(label)
        for _ in range(self.repeats):
            for system in self.systems:
                measure(system.name, self.executors[system.name])

    def startup(self) -> None:
        """W5 on fresh executors (before the long-lived ones exist)."""
        _progress("W5 start-up")
        for _ in range(self.repeats):
            for system in self.systems:
                self.record(system.name, "w5", w.w5_startup(system.factory, inc))

    def open(self) -> None:
        for system in self.systems:
            executor = system.factory()
            executor.submit(inc, 1).result()
            self.executors[system.name] = executor

    def close(self) -> None:
        for executor in self.executors.values():
            executor.shutdown(wait=True)
        self.executors.clear()

    def steady(self) -> None:
        """Every workload that runs on a warm executor."""
        _progress("memory check")
        for system in self.systems:
            self.record(system.name, "memory", w.memory_growth(self.executors[system.name], inc))
        self.each("W1 map", lambda s, ex: self.record(s, "w1", w.w1_map(ex, inc)))
        self.each(
            "W1 map, chunksize=1000",
            lambda s, ex: self.record(s, "w1_batched", w.w1_map(ex, inc, w.W1_CHUNKSIZE)),
        )
        self.each("W2 submit", lambda s, ex: self.record(s, "w2", w.w2_submit(ex, inc)))
        self.each("W3 latency", self._latency)
        self._efficiency()
        self._throughput()

    def _latency(self, system: str, ex: Executor) -> None:
        median, p99 = w.w3_latency(ex, inc)
        self.record(system, "w3_median", median)
        self.record(system, "w3_p99", p99)

    def _efficiency(self) -> None:
        n = w.calibrate_spin(spin)
        serial = w.serial_seconds(spin, n)
        self.each(
            "W6 CPU efficiency",
            lambda s, ex: self.record(s, "w6", w.w6_efficiency(ex, spin, n, serial, peers.WORKERS)),
        )

    def ssh(self) -> None:
        """The SSH workloads (loopback sshd), or why they were skipped."""
        reason = ssh_unavailable()
        if reason:
            self.notes.append(f"SSH workloads skipped: {reason}")
            return
        import ssh_bench

        self.samples.setdefault(report.OURS_SSH, defaultdict(list))
        self.samples.setdefault(report.RAW_SSH, defaultdict(list))
        self.samples.setdefault(report.EXECNET_SSH, defaultdict(list))
        self.samples.setdefault(report.OURS_OPENSSH, defaultdict(list))
        self.notes += ssh_bench.run_ssh(self.record, inc, self.repeats, _progress)

    def _throughput(self) -> None:
        for kind, payload in w.w4_payloads().items():
            self.each(f"W4 {kind}", self._throughput_of(f"w4_{kind}", payload))

    def _throughput_of(self, key: str, payload: object) -> Callable[[str, Executor], None]:
        def measure(system: str, ex: Executor) -> None:
            self.record(system, key, w.w4_throughput(ex, payload))

        return measure


def ssh_unavailable() -> str:
    """Why the SSH workloads cannot run here ("" if they can)."""
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (make system-deps)"
    if importlib.util.find_spec("ceranubis_jupyter.cluster.ssh") is None:
        return "ceranubis_jupyter.cluster.ssh is not there yet"
    return ""


def run_store_bench(
    script: Path, *args: str, timeout: float = PROJECT_BENCH_TIMEOUT, label: str = ""
) -> str:
    """Run one benchmark script in its own process (``bench_project.py``: W1 with and without
    a project store; ``bench_rerun.py``: "Run All" of a finished sweep; ``bench_hosts.py``,
    ``bench_scale.py``) and return its report."""
    name = f"{script.name}{label}"
    try:
        done = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{name}: stopped after {timeout:.0f} s"
    status = "" if done.returncode == 0 else f" (exit {done.returncode}: {done.stderr[-500:]})"
    return f"{name}{status}:\n{done.stdout.rstrip()}"


def _project_on_postgres(server: Any) -> str:
    """``bench_project.py`` on a PostgreSQL server, and the server's CPU per result."""
    before = server.cpu_seconds()
    text = run_store_bench(PROJECT_BENCH, "--store", server.url, label=" (PostgreSQL)")
    spent = server.cpu_seconds() - before
    per_result = spent / PROJECT_STORED_TASKS * 1e6
    return (
        f"{text}\nPostgreSQL server CPU: {spent:.2f} s over the run, {per_result:.1f} us per "
        "stored result (on this machine, the cores it takes are the workers')"
    )


def run_other_benches(args: argparse.Namespace) -> list[str]:
    """The benchmarks that run in their own processes: projects vs map (SQLite, and
    PostgreSQL when its server binaries are there), re-runs, many hosts, data sync, how
    cost grows, queue mode against its peers, dependent tasks and joblib."""
    reports = []
    if not args.no_project:
        import pg

        reports.append(run_store_bench(PROJECT_BENCH, label=" (SQLite)"))
        with pg.postgres() as server:
            if server is None:
                reports.append("bench_project.py (PostgreSQL): skipped, no server binaries")
            else:
                reports.append(_project_on_postgres(server))
        reports.append(run_store_bench(RERUN_BENCH))
    if not args.no_ssh and not ssh_unavailable():
        reports.append(run_store_bench(HOSTS_BENCH, timeout=LONG_BENCH_TIMEOUT))
        reports.append(run_store_bench(W6_BENCH))
    if not args.no_ssh and not ssh_unavailable():
        reports.append(run_store_bench(SYNC_BENCH, timeout=SYNC_BENCH_TIMEOUT))
    if not args.no_scale:
        reports.append(run_store_bench(SCALE_BENCH, timeout=LONG_BENCH_TIMEOUT))
    if not args.no_queue:
        reports.append(run_store_bench(QUEUE_BENCH, timeout=QUEUE_BENCH_TIMEOUT))
    if not args.no_deps:
        reports.append(deps_bench())
    return reports


def deps_bench() -> str:
    """``bench_deps.py``'s report, or why it was skipped (dask is in the ``bench`` extra)."""
    missing = [m for m in ("distributed", "joblib") if importlib.util.find_spec(m) is None]
    if missing:
        return f"bench_deps.py skipped: {', '.join(missing)} not installed (the bench extra)"
    _progress("dependent tasks and joblib vs dask and loky")
    return run_store_bench(DEPS_BENCH, timeout=DEPS_BENCH_TIMEOUT)


def _progress(label: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {label}", file=sys.stderr, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS, help="repetitions per measurement")
    parser.add_argument("--systems", nargs="*", help="only these systems (default: all found)")
    parser.add_argument(
        "--no-project", action="store_true", help="skip bench_project.py and bench_rerun.py"
    )
    parser.add_argument("--no-ssh", action="store_true", help="skip the SSH workloads")
    parser.add_argument("--no-queue", action="store_true", help="skip bench_queue.py")
    parser.add_argument(
        "--no-scale", action="store_true", help="skip bench_scale.py (10M map, 1M project)"
    )
    parser.add_argument("--no-deps", action="store_true", help="skip bench_deps.py (dask)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run everything, print the table, write the JSON."""
    args = _parse(argv)
    systems = [s for s in peers.systems() if not args.systems or s.name in args.systems]
    bench = Run(systems, max(1, args.repeats))
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    bench.startup()
    bench.open()
    try:
        bench.steady()
    finally:
        bench.close()
    if not args.no_ssh:
        bench.ssh()
    samples = {name: dict(metrics) for name, metrics in bench.samples.items()}
    others = run_other_benches(args)
    elapsed = time.perf_counter() - started
    for section in report.SECTIONS:
        text = report.table(samples, section)
        if text:
            print(f"\n{text}")
    for line in [*bench.notes, *others]:
        if line:
            print(f"\n{line}")
    extra = {"seconds": elapsed, "repeats": bench.repeats, "notes": bench.notes}
    path = report.write_json(samples, {**extra, "other_benches": others})
    print(f"\n{elapsed:.0f} s; medians of {bench.repeats}; ratios are ours/peer; written to {path}")
    print(
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after: on a shared "
        "machine other work lowers every system's W6 alike (compare the ratios)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
