"""W6 over SSH, and what each part burns while 40 CPU-bound tasks of 50 ms run.

One loopback sshd, one node of 2 workers; each repeat runs W6 on ours, then on a
ProcessPoolExecutor of 2 (the control: the machine's other load lowers both alike). For ours
it prints the CPU of this process (the client), of the sshd session, of the node and of its
workers over the W6 call: what is not the workers' is what the SSH path costs the tasks.

``.venv/bin/python benchmarks/bench_w6.py`` (``run.py`` calls it in its own process: it
points ``HOME`` at a temporary client home).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

import psutil
import sshd
import workloads as w

from ceranubis_jupyter import CeranubisExecutor, Host

WORKERS = 2
PARTS = ("client", "sshd", "node", "workers")


def spin(n: int) -> int:
    """Pure-Python CPU work (in ``__main__``: it travels by value)."""
    total = 0
    for i in range(n):
        total += i
    return total


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def host_parts(sshd_pid: int) -> dict[str, float]:
    """CPU seconds so far of the sshd sessions, the node and its workers (a worker is a
    Python process whose parent is one; the node's parent is the session's shell or sshd)."""
    parts = dict.fromkeys(PARTS[1:], 0.0)
    for child in psutil.Process(sshd_pid).children(recursive=True):
        try:
            parent = child.parent()
            python_parent = parent is not None and parent.name().startswith("python")
            if child.name().startswith("sshd"):
                parts["sshd"] += _cpu(child)
            elif child.name().startswith("python"):
                parts["workers" if python_parent else "node"] += _cpu(child)
        except psutil.Error:
            continue  # ended meanwhile
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n = w.calibrate_spin(spin)
    serial = w.serial_seconds(spin, n)
    me = psutil.Process()
    ours, peer, spent = [], [], []
    with sshd.loopback_hosts(1) as hosts:
        server = hosts.servers[0]
        ex = CeranubisExecutor([Host(server.alias, python=sys.executable, workers=WORKERS)])
        pool = ProcessPoolExecutor(WORKERS)
        try:
            ex.submit(spin, 1).result()
            pool.submit(spin, 1).result()
            for _ in range(args.repeats):
                before, client = host_parts(server.process.pid), _cpu(me)
                ours.append(w.w6_efficiency(ex, spin, n, serial, WORKERS))
                after = host_parts(server.process.pid)
                used = {part: after[part] - before[part] for part in PARTS[1:]}
                spent.append({"client": _cpu(me) - client, **used})
                peer.append(w.w6_efficiency(pool, spin, n, serial, WORKERS))
        finally:
            ex.shutdown(wait=True)
            pool.shutdown()
    _report(ours, peer, spent)
    return 0


def _report(ours: list[float], peer: list[float], spent: list[dict[str, float]]) -> None:
    print(
        f"W6 efficiency over SSH {statistics.median(ours):.2f} ({min(ours):.2f}-{max(ours):.2f});"
        f" ProcessPoolExecutor in the same run {statistics.median(peer):.2f} "
        f"({min(peer):.2f}-{max(peer):.2f}); load average {psutil.getloadavg()[0]:.1f}"
    )
    cpu = {part: statistics.median(s[part] for s in spent) for part in PARTS}
    overhead = cpu["client"] + cpu["sshd"] + cpu["node"]
    print(
        "CPU per W6 run (medians): "
        + ", ".join(f"{part} {cpu[part] * 1000:.0f} ms" for part in PARTS)
        + f"; all but the workers: {overhead / max(cpu['workers'], 1e-9):.1%} of the workers'"
    )


if __name__ == "__main__":
    sys.exit(main())
