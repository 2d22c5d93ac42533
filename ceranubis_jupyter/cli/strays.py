"""``ceranubis kill-strays``: the shell verb over :mod:`~ceranubis_jupyter.cluster.strays`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from typing import Any

from ..cluster.hosts import Host, parse_host_list
from ..cluster.strays import Stray, kill_strays
from ..errors import CeranubisError


def add_commands(subparsers: Any) -> None:
    """Register ``ceranubis kill-strays``."""
    parser = subparsers.add_parser(
        "kill-strays",
        help="end node processes left on hosts by a client that died",
        description=(
            "End the node processes whose client ran on this machine and is gone. A node "
            "of another machine (told apart by hostname and machine id) is never ended; "
            "run kill-strays on the machine its client ran on."
        ),
    )
    parser.add_argument("--hosts", default="local", help="comma-separated hosts (default: local)")
    parser.add_argument(
        "--all",
        action="store_true",
        help="end every node of a client on this machine, even live (never another machine's)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only list what would be ended")
    parser.add_argument(
        "--python", default="python3", help="the interpreter on remote hosts (default: python3)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    try:
        hosts = [Host(h.address, python=args.python) for h in parse_host_list(args.hosts)]
    except CeranubisError as error:
        print(f"ceranubis kill-strays: {error}", file=sys.stderr)
        return 2
    ended, errors = asyncio.run(kill_strays(hosts, args.all, args.dry_run))
    if args.json:
        print(json.dumps({"ended": [asdict(s) for s in ended], "errors": errors}))
    else:
        _report(ended, errors, args.dry_run)
    return 1 if errors else 0


def _report(ended: list[Stray], errors: dict[str, str], dry_run: bool) -> None:
    verb = "would end" if dry_run else "ended"
    for stray in ended:
        print(
            f"{stray.host}: {verb} node {stray.pid} and {len(stray.workers)} workers "
            f"{list(stray.workers)} (client {stray.client})"
        )
    for host, error in errors.items():
        print(f"{host}: {error}", file=sys.stderr)
    print(f"{verb} {len(ended)} stray nodes")
