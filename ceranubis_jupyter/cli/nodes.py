"""``ceranubis node`` (a queue-mode node daemon) and ``ceranubis nodes`` (list them).

``ceranubis node --store URL [--workers N] [--group NAME] [--name NAME] [--lease S]
[--poll S] [--stagger S]`` serves the store until SIGTERM or SIGINT (then exits 0);
``--init`` instead creates the queue schema (as a role that may create tables) and
exits. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import time
from typing import Any

from ..daemon.node import QueueNode
from ..daemon.tunables import LEASE_SECONDS
from ..daemon.turns import STAGGER_SECONDS
from ..errors import CeranubisError
from ..projects.queue_store import NODE_SILENT_SECONDS, NodeRow
from ..projects.stores import open_store


def add_commands(subparsers: Any) -> None:
    """Register ``node`` and ``nodes``."""
    parser = subparsers.add_parser("node", help="run a queue node daemon on a store")
    parser.add_argument("--store", required=True, help="store path or postgresql:// URL")
    parser.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    parser.add_argument("--group", default="", help="serve this group's projects too")
    parser.add_argument("--name", help="this node's name (default: host:pid)")
    parser.add_argument("--lease", type=float, default=LEASE_SECONDS, help="lease seconds")
    parser.add_argument("--poll", type=float, help="seconds between looks for work unwoken")
    parser.add_argument(
        "--stagger", type=float, default=STAGGER_SECONDS,
        help="seconds before claiming a commit that is another node's turn",
    )  # fmt: skip
    parser.add_argument("--init", action="store_true", help="create the queue schema, exit")
    parser.set_defaults(handler=_node)
    parser = subparsers.add_parser("nodes", help="list the queue node daemons of a store")
    parser.add_argument("--store", help="store path or postgresql:// URL")
    parser.add_argument("--json", action="store_true", help="one JSON object per node")
    parser.set_defaults(handler=_nodes)


def _node(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: where each thread is
    try:
        if args.init:
            store = open_store(args.store)
            store.init_queue()
            print(f"queue schema ready in {store.url}")
            store.close()
            return 0
        node = QueueNode(args.store, workers=args.workers, group=args.group, name=args.name,
                         lease=args.lease, poll=args.poll, stagger=args.stagger)  # fmt: skip
    except CeranubisError as error:
        print(f"ceranubis node: {error}", file=sys.stderr)
        return 2
    return node.serve()


def _nodes(args: argparse.Namespace) -> int:
    try:
        store = open_store(args.store, create=False)
        rows, now = store.nodes(), store.database_time()
    except CeranubisError as error:
        print(f"ceranubis nodes: {error}", file=sys.stderr)
        return 2
    if args.json:
        for row in rows:
            print(json.dumps({**row.__dict__, "seen_seconds_ago": round(now - row.heartbeat, 3)}))
        return 0
    head = ["NAME", "HOST", "PID", "WORKERS", "GROUP", "LOAD", "LAST BEAT", "CLAIMED", "HELD",
            "DONE", "DROPPED", "STATE"]  # fmt: skip
    lines = [head, *(_cells(row, now) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def _cells(row: NodeRow, now: float) -> list[str]:
    """One node's line: a node silent for long is shown so (it may be gone)."""
    fresh = row.state == "stopped" or now - row.heartbeat <= NODE_SILENT_SECONDS
    beat = time.strftime("%H:%M:%S", time.localtime(row.heartbeat))
    numbers = (row.pid, row.workers)
    counts = (row.claimed, row.held, row.done, row.dropped)
    return [row.name, row.host, *map(str, numbers), row.group or "-", f"{row.load:.2f}", beat,
            *map(str, counts), row.state if fresh else f"silent ({row.state})"]  # fmt: skip
