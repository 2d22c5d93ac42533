"""H16: many hosts. 16 loopback sshd (each its own port and bundle cache) x 1 worker.

Prints, each against our own 1-host figure from the same run: start to a first result on
every host (cold caches, then warm; one task pinned to each host), the client's CPU and the
host side's CPU per host of a warm start, W1 per item at 1, 4 and 16 hosts, and the client's CPU
time per task at 1, 4 and 16 hosts (user + system of this process over the W1 map).

The start is measured twice: on hosts that log in to this account's shell (whose
``~/.bashrc`` runs ``pyenv init`` for every ssh command) and run this virtualenv's Python,
then on plain hosts: a shell that does no rc-file work for commands (``sshd.py``'s
``plain_shell``) and the system's ``python3``, as on a fresh Debian machine.

``.venv/bin/python benchmarks/bench_hosts.py`` (``run.py`` calls it in its own process: it
points ``HOME`` at a temporary client home).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import wait

import sshd
import workloads as w

from ceranubis_jupyter import CeranubisExecutor, Host

HOST_COUNTS = (1, 4, 16)
# Seconds the start measurement waits for a first result on every host before giving up.
START_LIMIT = 120.0
# The plain hosts' Python: the system's, as a fresh Debian machine has it.
SYSTEM_PYTHON = "/usr/bin/python3"


def inc(x: int) -> int:
    """The tiny task (in ``__main__``: it travels by value)."""
    return x + 1


def executor_on(aliases: list[str]) -> CeranubisExecutor:
    return CeranubisExecutor([Host(a, python=sys.executable, workers=1) for a in aliases])


def start_cost(
    aliases: list[str], pids: list[int], task: Callable[[int], int] = inc, python: str = ""
) -> tuple[float, float, float]:
    """A warm start: its seconds, the client's CPU seconds and the CPU seconds on the host
    side (every sshd session, shell, node and worker), once every session has ended."""
    sshd.wait_reaped(pids)
    client, hosts = time.process_time(), sshd.host_side_cpu(pids)
    elapsed = start_to_every_host(aliases, task, python)
    sshd.wait_reaped(pids)
    return elapsed, time.process_time() - client, sshd.host_side_cpu(pids) - hosts


def start_to_every_host(
    aliases: list[str], task: Callable[[int], int] = inc, python: str = ""
) -> float:
    """Seconds from constructing the executor to a first result from every host (which
    run ``python``, by default this one).

    Each host is its own group and gets one task of its own: a probe that spun maps over
    the hosts already up would burn the 2 cores the other hosts start on.
    """
    python = python or sys.executable
    start = time.perf_counter()
    ex = CeranubisExecutor([Host(a, python=python, workers=1, group=a) for a in aliases])
    try:
        probes = [ex.options(group=alias).submit(task, 1) for alias in aliases]
        wait(probes, timeout=START_LIMIT)
        for probe in probes:
            probe.result(timeout=0)  # a host that failed (or did not answer) says so here
        return time.perf_counter() - start
    finally:
        ex.shutdown(wait=True)


def per_item(aliases: list[str], rounds: int) -> dict[int, tuple[float, float]]:
    """W1 per item (tasks/s) and client CPU µs per task at each of :data:`HOST_COUNTS`,
    medians over ``rounds``. One executor per count, all up at once, and each
    round runs W1 on every count in turn: the machine's load changes between rounds, not
    between the counts compared."""
    executors = {n: executor_on(aliases[:n]) for n in HOST_COUNTS}
    samples: dict[int, list[tuple[float, float]]] = {n: [] for n in HOST_COUNTS}
    try:
        for ex in executors.values():
            w.w1_map(ex, inc)  # warm: every node up, the function shipped
        for _ in range(rounds):
            for n, ex in executors.items():
                samples[n].append(w1_sample(ex))
    finally:
        for ex in executors.values():
            ex.shutdown(wait=True)
    return {
        n: (statistics.median(r for r, _ in got), statistics.median(c for _, c in got))
        for n, got in samples.items()
    }


def w1_sample(ex: CeranubisExecutor, task: Callable[[int], int] = inc) -> tuple[float, float]:
    """One W1 map of ``task``: tasks/s and this process's CPU µs per task (user + system,
    every thread). Read from the process CPU clock (nanoseconds): the kernel's per-process
    user and system counters move in 10 ms ticks, 0.5 µs per task of W1's 20,000."""
    before = time.process_time()
    rate = w.w1_map(ex, task)
    return rate, (time.process_time() - before) / w.W1_ITEMS * 1e6


def print_starts(label: str, hosts: sshd.Loopback, repeats: int, python: str = "") -> None:
    """Start to a first result on every host, cold then warm, and on one host (warm)."""
    aliases = [server.alias for server in hosts.servers]
    cold = start_to_every_host(aliases, python=python)
    warm = [start_cost(aliases, hosts.pids, python=python) for _ in range(repeats)]
    one = statistics.median(start_to_every_host(aliases[:1], python=python) for _ in range(repeats))
    print(
        f"{label}: start -> first result on every host, {len(aliases)} hosts: cold "
        f"{cold:.2f} s, warm {statistics.median(s[0] for s in warm):.2f} s (target <= 1.5 s);"
        f" 1 host warm {one:.2f} s"
    )
    print(
        f"  per warm {len(aliases)}-host start: client CPU "
        f"{statistics.median(s[1] for s in warm):.2f} s; host side (sshd sessions, shells, "
        f"nodes, workers) {statistics.median(s[2] for s in warm) / len(aliases) * 1000:.0f}"
        " ms CPU per host"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="starts of each kind")
    parser.add_argument("--rounds", type=int, default=5, help="W1 rounds over 1, 4, 16 hosts")
    args = parser.parse_args(argv)
    most = max(HOST_COUNTS)
    with sshd.loopback_hosts(most) as hosts:
        aliases = [server.alias for server in hosts.servers]
        print_starts("this account's shell (pyenv init), this venv's Python", hosts, args.repeats)
        figures = per_item(aliases, args.rounds)
    if os.path.exists(SYSTEM_PYTHON):
        with sshd.loopback_hosts(most, plain_shell=True) as hosts:
            label = f"plain hosts: no rc-file work in the shell, {SYSTEM_PYTHON}"
            print_starts(label, hosts, args.repeats, SYSTEM_PYTHON)
    else:
        print(f"plain hosts: not measured, {SYSTEM_PYTHON} is missing")
    base_rate, base_cpu = figures[1]
    print(
        f"{'hosts':>6}{'W1 tasks/s':>14}{'vs 1 host':>11}{'client CPU µs/task':>21}"
        f"{'vs 1 host':>11}"
    )
    for n, (rate, cpu) in figures.items():
        print(f"{n:>6}{rate:>14,.0f}{rate / base_rate:>10.2f}x{cpu:>21.1f}{cpu / base_cpu:>10.2f}x")
    print("targets: W1 at 16 hosts >= 1x the 1-host figure; client CPU per task flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
