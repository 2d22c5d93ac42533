"""What ``ceranubis hosts`` shows: each host reached as the executor would, and asked about
itself by a short stdlib script (no node is started).

::

    this machine                          each host (local, or over SSH: host keys checked)
    probe_hosts([a, b]) ──► HostScript ─► PROBE: python -I -c ... DIGEST CLIENT
                      ◄── {python, cores, load, memory, cached, nodes, ours}

``cached``: the node bundle of this client (its digest) is in the host's cache, so the next
start sends nothing. ``nodes``: ceranubis nodes of this account running there; ``ours``:
those whose client runs on this machine. A host that cannot be reached is a row with its
error, never an exception.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from .bootstrap import node_bundle
from .hosts import Host
from .strays import HostScript
from .transport import CLIENT_PREFIX, NODE_MARKER, machine_id

# Seconds one host may take to answer (connection included); a slower one is a row with
# a timeout error, and the other rows do not wait for it.
PROBE_TIMEOUT = 30.0

# Runs as ``python -I -c PROBE DIGEST CLIENT_PREFIX``; stdlib only, any python3 (Linux
# /proc; elsewhere the figures that need it read as zero).
PROBE = r"""
import json, os, sys
digest, mine = sys.argv[1], sys.argv[2]
def memory():
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        total = int(fields["MemTotal"].split()[0])
        free = int(fields["MemAvailable"].split()[0])
        return round(100.0 * (total - free) / total, 1), total * 1024
    except Exception:
        return 0.0, 0
def nodes():
    found, uid = {}, os.getuid()
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            if not name.isdigit() or os.stat("/proc/" + name).st_uid != uid:
                continue
            with open("/proc/%s/cmdline" % name, "rb") as f:
                words = [w.decode("utf-8", "replace") for w in f.read().split(b"\0")]
            if @MARKER@ in words:
                with open("/proc/%s/stat" % name, "rb") as f:
                    stat = f.read()
                ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
                found[int(name)] = (ppid, any(w.startswith(mine) for w in words))
        except (OSError, ValueError, IndexError):
            continue
    tops = [mark for pid, (ppid, mark) in found.items() if ppid not in found]
    return len(tops), sum(tops)
try:
    cores = len(os.sched_getaffinity(0))
except AttributeError:
    cores = os.cpu_count() or 1
home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
percent, total = memory()
found, ours = nodes()
sys.stdout.write(json.dumps({
    "python": "%d.%d.%d" % sys.version_info[:3], "cores": cores,
    "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0,
    "memory_percent": percent, "memory_bytes": total,
    "cached": os.path.isdir(os.path.join(home, "ceranubis", digest)),
    "nodes": found, "ours": ours}))
""".replace("@MARKER@", repr(NODE_MARKER))


@dataclass(frozen=True)
class HostReport:
    """One host's row: reachable or its ``error``, and what it said about itself.

    ``cached`` is ``None`` for a local host (local nodes need no bundle).
    """

    host: str
    reachable: bool
    python: str = ""
    cores: int = 0
    load: float = 0.0
    memory_percent: float = 0.0
    memory_bytes: int = 0
    cached: bool | None = None
    nodes: int = 0
    ours: int = 0
    error: str = ""


async def probe_host(host: Host) -> HostReport:
    """Reach ``host`` and ask it; an unreachable host is a report with its error."""
    try:
        answer = await asyncio.wait_for(_ask(host), PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        return HostReport(host.name, False, error=f"no answer within {PROBE_TIMEOUT:g} s")
    except Exception as error:  # a host's failure is its row, never the whole table's
        return HostReport(host.name, False, error=str(error) or type(error).__name__)
    return HostReport(
        host.name,
        True,
        python=str(answer["python"]),
        cores=int(answer["cores"]),
        load=float(answer["load"]),
        memory_percent=float(answer["memory_percent"]),
        memory_bytes=int(answer["memory_bytes"]),
        cached=None if host.is_local else bool(answer["cached"]),
        nodes=int(answer["nodes"]),
        ours=int(answer["ours"]),
    )


async def _ask(host: Host) -> dict[str, Any]:
    mine = f"{CLIENT_PREFIX}{socket.gethostname()}:{machine_id()}:"
    async with HostScript(host, PROBE, "the host probe") as runner:
        answer: dict[str, Any] = await runner.run([node_bundle().digest, mine])
    return answer


async def probe_hosts(hosts: list[Host]) -> list[HostReport]:
    """Every host at once, in the order given."""
    return list(await asyncio.gather(*(probe_host(host) for host in hosts)))
