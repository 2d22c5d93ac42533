"""``ceranubis demo``: a short real job on the embedded default (Monte-Carlo π)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..projects.executor import CeranubisExecutor


def throw_darts(seed: int, darts: int) -> int:
    """Count how many of ``darts`` random points in the unit square land in the circle."""
    import random

    rng = random.Random(seed)
    hits = 0
    for _ in range(darts):
        x, y = rng.random(), rng.random()
        hits += x * x + y * y <= 1.0
    return hits


def run_demo(tasks: int = 64, darts: int = 1_000_000, hosts: list[str] | None = None) -> float:
    """Estimate π with ``tasks`` tasks of ``darts`` darts each; prints a report."""
    started = time.perf_counter()
    with CeranubisExecutor(hosts) as executor:
        hits = sum(executor.map(throw_darts, range(tasks), [darts] * tasks))
        workers = sum(info.workers for info in executor.hosts())
    elapsed = time.perf_counter() - started
    estimate = 4.0 * hits / (tasks * darts)
    print(f"pi ≈ {estimate:.6f} from {tasks * darts:,} darts")
    print(f"{tasks} tasks on {workers} workers ({os.cpu_count()} cores here) in {elapsed:.2f} s")
    return estimate


def add_commands(subparsers: Any) -> None:
    """Register ``ceranubis demo``."""
    parser = subparsers.add_parser("demo", help="estimate pi on the local cores")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--darts", type=int, default=1_000_000)
    parser.add_argument("--hosts", default=None, help="comma-separated hosts (default: local)")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    hosts = args.hosts.split(",") if args.hosts else None
    run_demo(args.tasks, args.darts, hosts)
    return 0
