"""``ceranubis demo``: a short real job on the embedded default (Monte-Carlo π)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..cluster.hosts import HostSpec, parse_host_list
from ..errors import ConfigError
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


def run_demo(
    tasks: int = 64, darts: int = 1_000_000, hosts: Sequence[HostSpec] | None = None
) -> float:
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
    parser = subparsers.add_parser(
        "demo",
        help="estimate pi on the local cores",
        description="Estimate pi by throwing random darts at a square, spread over the "
        "cores of the hosts: a quick check that everything works.",
    )
    parser.add_argument(
        "--tasks", type=_positive, default=64, help="tasks to spread (default: %(default)s)"
    )
    parser.add_argument(
        "--darts", type=_positive, default=1_000_000, help="darts per task (default: %(default)s)"
    )
    parser.add_argument("--hosts", default=None, help="comma-separated hosts (default: local)")
    parser.set_defaults(handler=_handle)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _handle(args: argparse.Namespace) -> int:
    try:
        hosts = None if args.hosts is None else parse_host_list(args.hosts)
    except ConfigError as error:
        print(f"ceranubis demo: {error}", file=sys.stderr)
        return 2
    run_demo(args.tasks, args.darts, hosts)
    return 0
