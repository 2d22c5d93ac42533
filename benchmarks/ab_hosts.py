"""A/B of the many-hosts figures (H16): this checkout against an earlier commit, one run.

``.venv/bin/python benchmarks/ab_hosts.py --base <rev>``. Starts 16 loopback sshd once
(:mod:`sshd`), exports the earlier commit with ``git archive``, then measures both trees in
alternating blocks (A B, B A, ...), each in a fresh process that imports its own package
against the same servers. Per tree: the warm start of 16 hosts (start -> a result on every
host), the client's CPU per start, the CPU per host on the host side (every sshd session,
shell, node and worker, read from each sshd's reaped children), and W1 per item with the
client's CPU per task at 1, 4 and 16 hosts (1 worker each).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import bench_hosts
import sshd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Blocks of (A, B) pairs; each measures W1 at 1/4/16 hosts and two warm 16-host starts.
BLOCKS = 3
HOST_COUNTS = (1, 4, 16)
# Seconds one tree's measurement may take before the run is stopped.
MEASURE_TIMEOUT = 600.0
# Warm starts measured per block and tree.
STARTS = 2


def inc(x: int) -> int:
    """The tiny task (in ``__main__``: it travels by value)."""
    return x + 1


def _w1(aliases: list[str]) -> tuple[float, float]:
    """W1 per item (tasks/s) and the client's CPU µs per task."""
    import workloads as w

    ex = bench_hosts.executor_on(aliases)
    try:
        w.w1_map(ex, inc)  # warm: every node up, the function shipped
        return bench_hosts.w1_sample(ex, inc)
    finally:
        ex.shutdown(wait=True)


def measure(aliases: list[str], pids: list[int]) -> dict[str, float]:
    """One tree's figures (this process imports that tree's package)."""
    figures: dict[str, float] = {}
    bench_hosts.start_to_every_host(
        aliases, inc
    )  # untimed: a tree whose bundle is new installs it on every host
    starts = [bench_hosts.start_cost(aliases, pids, inc) for _ in range(STARTS)]
    figures["start16_s"] = statistics.median(s[0] for s in starts)
    figures["start16_client_cpu_s"] = statistics.median(s[1] for s in starts)
    figures["start16_host_cpu_ms_per_host"] = statistics.median(
        s[2] / len(aliases) * 1000 for s in starts
    )
    for n in HOST_COUNTS:
        figures[f"w1_{n}_per_s"], figures[f"w1_{n}_client_us"] = _w1(aliases[:n])
    return figures


def _export(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _run_tree(tree: Path, aliases: list[str], pids: list[int]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(Path(__file__).resolve()), "--measure"]
    command += ["--aliases", ",".join(aliases), "--pids", ",".join(map(str, pids))]
    done = subprocess.run(
        command, env=env, check=True, capture_output=True, text=True, timeout=MEASURE_TIMEOUT
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _report(samples: dict[str, dict[str, list[float]]], rev: str) -> None:
    print(f"A = {rev}, B = this checkout; medians of {len(samples['A']['start16_s'])} each")
    print(f"{'figure':<32}{'A':>12}{'B':>12}{'B/A':>8}")
    for name in samples["A"]:
        a, b = (statistics.median(samples[t][name]) for t in ("A", "B"))
        print(f"{name:<32}{a:>12,.2f}{b:>12,.2f}{b / a:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="the earlier commit (git rev)")
    parser.add_argument("--blocks", type=int, default=BLOCKS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--aliases", help=argparse.SUPPRESS)
    parser.add_argument("--pids", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        pids = [int(pid) for pid in args.pids.split(",")]
        print(json.dumps(measure(args.aliases.split(","), pids)))
        return 0
    samples: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    with tempfile.TemporaryDirectory() as folder, sshd.loopback_hosts(16) as hosts:
        trees = {"A": _export(args.base, Path(folder)), "B": ROOT}
        aliases = [server.alias for server in hosts.servers]
        pids = hosts.pids
        for block in range(args.blocks):
            for tree in ("A", "B") if block % 2 == 0 else ("B", "A"):
                figures = _run_tree(trees[tree], aliases, pids)
                for name, value in figures.items():
                    samples[tree].setdefault(name, []).append(value)
                print(f"block {block} {tree}: {figures}", flush=True)
    _report(samples, args.base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
