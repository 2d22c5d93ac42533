"""``ceranubis nodes start`` and ``ceranubis nodes stop``: queue daemons on SSH hosts.

``ceranubis nodes start --hosts h1,h2 --store URL [--workers N] [--daemons K]`` starts
``K`` daemons on each host over the same SSH transport as the executor's nodes (the
user's ssh config, agent and known_hosts; host keys always checked), detached so that they
outlive the connection; ``ceranubis nodes stop [--hosts h1,h2]`` ends them gracefully
(SIGTERM by the PIDs recorded on each host, waiting a bounded time for them to exit).

How the code gets there: the *daemon bundle*, the whole package plus dill (pure Python),
is sent once per host and version and cached by digest, exactly as the node bundle is
(``cluster/bootstrap.py``); the host needs only ``python3`` of the client's major.minor
and, for a PostgreSQL store, ``psycopg`` (not bundled: it has compiled parts), which
``start`` checks first, saying the one command that installs it. The host side is
``daemon/launch.py``. The hosts where ``start`` ran are remembered in the client's
``~/.cache/ceranubis/daemon-hosts.json``: ``stop`` without ``--hosts`` stops those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import dill

from ..cluster.bootstrap import (
    BOOT,
    ERROR_PREFIX,
    NEED,
    READY,
    Bundle,
    build_bundle,
    built_once,
    bundle_bytes,
    package_paths,
    read_files,
)
from ..cluster.hosts import Host, parse_host_list
from ..daemon.launch import STOP_TIMEOUT
from ..errors import CeranubisError, HostError

# The word after ``-c BOOT`` in the remote command line (BOOT's argv[1]): not the node
# marker, so ``kill-strays`` leaves the short-lived launcher alone.
LAUNCH_MARKER = "ceranubis-daemon-launch"
# Seconds one host may take to answer start or stop (a daemon checks its store before it
# is reported started; stop waits up to its own timeout for the daemons to exit).
HOST_ANSWER_TIMEOUT = 120.0
# Longest answer line read from a host.
MAX_LINE = 1 << 16
# What BOOT's last line runs, replaced by the launcher's entry point.
_NODE_TAIL = "from ceranubis_jupyter.node.supervisor import main\nmain()\n"
_PACKAGE = Path(__file__).resolve().parent.parent


def add_commands(subparsers: Any) -> None:
    """Add ``start`` and ``stop`` under ``nodes`` (registered by ``cli/nodes.py``)."""
    actions = subparsers.choices["nodes"].add_subparsers(dest="nodes_action", metavar="ACTION")
    start = actions.add_parser(
        "start", help="start queue daemons on SSH hosts (detached)",
        epilog="example: ceranubis nodes start --hosts gpu1,gpu2 --store "
        "postgresql://me@db/cj --workers 8",
    )  # fmt: skip
    start.add_argument("--hosts", required=True, help="comma-separated ssh hosts")
    start.add_argument("--store", required=True, help="store path or postgresql:// URL")
    start.add_argument("--workers", type=int, help="workers per daemon (default: all cores)")
    start.add_argument("--daemons", type=int, default=1, help="daemons per host (default 1)")
    start.add_argument("--group", default="", help="the daemons' group")
    start.add_argument("--python", default="python3", help="the hosts' python")
    start.set_defaults(handler=_start)
    stop = actions.add_parser(
        "stop", help="stop the queue daemons started with nodes start",
        epilog="example: ceranubis nodes stop --hosts gpu2 --timeout 60",
    )  # fmt: skip
    stop.add_argument("--hosts", help="comma-separated ssh hosts (default: where started)")
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT, help="seconds to wait")
    stop.add_argument("--python", default="python3", help="the hosts' python")
    stop.set_defaults(handler=_stop)


@built_once
def daemon_bundle() -> Bundle:
    """The whole package plus dill, as one digest-named zip (built once per process)."""
    paths = package_paths(str(_PACKAGE), _PACKAGE.name)
    paths.update(package_paths(str(Path(dill.__file__).parent), "dill"))
    return build_bundle(read_files(paths), origins=paths)


def launch_command(python: str, digest: str, entry: str) -> str:
    """The remote command: BOOT with the daemon bundle, ending in ``launch.<entry>()``."""
    if _NODE_TAIL not in BOOT:
        raise RuntimeError("cluster/bootstrap.BOOT no longer ends in the node's main()")
    boot = BOOT.replace(
        _NODE_TAIL, f"from ceranubis_jupyter.daemon.launch import {entry}\n{entry}()\n"
    )
    words = [python, "-E", "-s", "-c", boot, LAUNCH_MARKER, digest]
    return "exec " + " ".join(shlex.quote(word) for word in words)


async def run_on_host(host: Host, entry: str, params: dict[str, Any]) -> list[str]:
    """Run ``launch.<entry>`` on ``host`` with ``params``; its answer lines.

    Raises:
        HostError: the host cannot be reached, or says ``E <why>``.
    """
    from ..cluster.ssh import SSHTransport  # asyncssh only when a host is asked for

    bundle = await asyncio.to_thread(daemon_bundle)
    conn = await SSHTransport(host).connect()
    try:
        command = launch_command(host.python, bundle.digest, entry)
        process = await conn.create_process(command, encoding=None)
        return await asyncio.wait_for(_converse(host, process, bundle, params), HOST_ANSWER_TIMEOUT)
    except asyncio.TimeoutError:
        raise HostError(host.address, f"no answer within {HOST_ANSWER_TIMEOUT:g} s") from None
    finally:
        conn.close()
        await conn.wait_closed()


async def _converse(host: Host, process: Any, bundle: Bundle, params: dict[str, Any]) -> list[str]:
    line = (await process.stdout.readline()).rstrip(b"\n")
    if line == NEED:
        process.stdin.write(await bundle_bytes(bundle))
        line = (await process.stdout.readline()).rstrip(b"\n")
    if line != READY:
        raise HostError(host.address, _failure(line, await process.stderr.read(MAX_LINE)))
    process.stdin.write(json.dumps(params).encode() + b"\n")
    process.stdin.write_eof()
    answers = [raw.decode().rstrip("\n") for raw in (await process.stdout.read()).splitlines()]
    errors = [a[len(ERROR_PREFIX) :] for a in answers if a.startswith(ERROR_PREFIX.decode())]
    if errors:
        raise HostError(host.address, errors[0])
    return answers


def _failure(line: bytes, stderr: bytes) -> str:
    if line.startswith(ERROR_PREFIX):
        return line[len(ERROR_PREFIX) :].decode(errors="replace")
    said = stderr.decode(errors="replace").strip()[-300:]
    return f"the daemon launcher did not start (said {line[:200]!r}){': ' + said if said else ''}"


def _hosts(text: str, python: str) -> list[Host]:
    hosts = [Host(h.address, python=python) for h in parse_host_list(text)]
    local = [h.address for h in hosts if h.is_local]
    if local:
        raise CeranubisError(
            f"nodes start/stop is for SSH hosts; on this machine run "
            f"`ceranubis node --store URL` instead (not {', '.join(local)})"
        )
    return hosts


def _start(args: argparse.Namespace) -> int:
    try:
        hosts = _hosts(args.hosts, args.python)
        params = {"store": args.store, "workers": args.workers, "group": args.group,
                  "count": max(1, args.daemons)}  # fmt: skip
    except CeranubisError as error:
        print(f"ceranubis nodes start: {error}", file=sys.stderr)
        return 2
    results = asyncio.run(_on_each(hosts, "start", params))
    _remember(
        {h.address for h, answer in zip(hosts, results, strict=True) if isinstance(answer, list)}
    )
    status = 0
    for host, answer in zip(hosts, results, strict=True):
        if isinstance(answer, BaseException):
            print(f"ceranubis nodes start: {_said(host, answer)}", file=sys.stderr)
            status = 1
        else:
            pids = [line.split()[1] for line in answer if line.startswith("PID ")]
            print(f"{host.address}: started daemon PIDs {' '.join(pids)}")
    return status


def _stop(args: argparse.Namespace) -> int:
    try:
        hosts = _hosts(args.hosts, args.python) if args.hosts else _remembered(args.python)
    except CeranubisError as error:
        print(f"ceranubis nodes stop: {error}", file=sys.stderr)
        return 2
    results = asyncio.run(_on_each(hosts, "stop", {"timeout": args.timeout}))
    status, done = 0, set()
    for host, answer in zip(hosts, results, strict=True):
        if isinstance(answer, BaseException):
            print(f"ceranubis nodes stop: {_said(host, answer)}", file=sys.stderr)
            status = 1
            continue
        report = json.loads(next(a for a in answer if a.startswith("R "))[2:])
        print(f"{host.address}: ended {report['ended']}, already gone {report['gone']}"
              + (f", STILL RUNNING {report['running']}" if report["running"] else ""))  # fmt: skip
        if report["running"]:
            status = 1
        else:
            done.add(host.address)
    _forget(done)
    return status


def _said(host: Host, error: BaseException) -> str:
    """One line for a host's failure (a HostError already names the host)."""
    return str(error) if isinstance(error, HostError) else f"{host.address}: {error!r}"


async def _on_each(hosts: list[Host], entry: str, params: dict[str, Any]) -> list[Any]:
    return await asyncio.gather(
        *(run_on_host(host, entry, params) for host in hosts), return_exceptions=True
    )


def _record_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ceranubis" / "daemon-hosts.json"


def _read_record() -> list[str]:
    try:
        found = json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return []
    return [str(h) for h in found] if isinstance(found, list) else []


def _remember(addresses: set[str]) -> None:
    path = _record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sorted(set(_read_record()) | addresses)))


def _forget(addresses: set[str]) -> None:
    remaining = sorted(set(_read_record()) - addresses)
    if _record_path().exists():
        _record_path().write_text(json.dumps(remaining))


def _remembered(python: str) -> list[Host]:
    found = _read_record()
    if not found:
        raise CeranubisError("no hosts recorded by `ceranubis nodes start`; pass --hosts")
    return [Host(address, python=python) for address in found]
