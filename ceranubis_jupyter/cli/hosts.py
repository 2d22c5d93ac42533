"""``ceranubis hosts``: one row per host (reachable, Python, cores, load, memory, bundle
cached, our nodes there), once or refreshed with ``--watch``; ``--json`` for scripts."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from ..cluster.hosts import Host, parse_host_list
from ..cluster.probe import HostReport, probe_hosts
from ..config import load_config
from .output import printable

# Seconds between refreshes with --watch (each one reaches every host again).
WATCH_SECONDS = 2.0
# Clear the terminal and go home, before each --watch frame.
_CLEAR_SCREEN = "\x1b[H\x1b[2J"
_HEAD = ["host", "reachable", "python", "cores", "load", "memory", "bundle", "nodes", "ours"]


def add_commands(subparsers: Any) -> None:
    """Register ``ceranubis hosts``."""
    parser = subparsers.add_parser(
        "hosts",
        help="check hosts: reachable, python, cores, load, memory, bundle, nodes",
        description="Reach each host as the executor would (host keys checked) and show "
        "what it has. Without --hosts: every host of every group in the config file, "
        "else local.",
        epilog="example: ceranubis hosts --hosts @gpu,local --watch",
    )
    parser.add_argument("--hosts", help="comma-separated hosts or @groups")
    parser.add_argument("--python", help="the interpreter on remote hosts (default: python3)")
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(handler=_handle)


def _hosts(args: argparse.Namespace) -> list[Host]:
    if args.hosts:
        hosts = parse_host_list(args.hosts)
    else:
        groups = load_config().host_groups
        names = sorted({spec for specs in groups.values() for spec in specs}) or ["local"]
        hosts = parse_host_list(",".join(names))
        hosts = list({host.name: host for host in hosts}.values())
    if args.python:
        hosts = [h if h.is_local else Host(h.address, python=args.python) for h in hosts]
    return hosts


def _handle(args: argparse.Namespace) -> int:
    hosts = _hosts(args)
    while True:
        reports = asyncio.run(probe_hosts(hosts))
        if args.watch and not args.json:
            sys.stdout.write(_CLEAR_SCREEN)
        print(_as_json(reports) if args.json else table(reports), flush=True)
        if not args.watch:
            return 0 if all(r.reachable for r in reports) else 1
        time.sleep(WATCH_SECONDS)  # a refresh period, not a wait for a state


def _as_json(reports: list[HostReport]) -> str:
    return json.dumps([asdict(r) for r in reports], indent=1)


def table(reports: list[HostReport]) -> str:
    """The rows as an aligned table; unreachable hosts' errors below it."""
    rows = [_row(r) for r in reports]
    widths = [max(len(row[i]) for row in [_HEAD, *rows]) for i in range(len(_HEAD))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [_HEAD, *rows]
    ]
    lines += [f"{printable(r.host)}: {printable(r.error)}" for r in reports if r.error]
    return "\n".join(lines)


def _row(report: HostReport) -> list[str]:
    name = printable(report.host)
    if not report.reachable:
        return [name, "no", *["-"] * (len(_HEAD) - 2)]
    bundle = "-" if report.cached is None else "cached" if report.cached else "not yet"
    memory = f"{report.memory_percent:.0f}% of {report.memory_bytes / 2**30:.0f} GiB"
    return [
        name, "yes", report.python, str(report.cores), f"{report.load:.2f}", memory, bundle,
        str(report.nodes), str(report.ours),
    ]  # fmt: skip
