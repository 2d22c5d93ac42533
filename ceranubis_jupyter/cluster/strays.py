"""``ceranubis kill-strays``: end the node processes that a dead client left on its hosts.

::

    this machine                               each host (local, or over SSH)
    ────────────                               ──────────────────────────────
    kill-strays --hosts a,b ──► list ───────►  SCRIPT list: our nodes from /proc
      decide: is the node's client     ◄────   [{pid, start, age, client, workers}]
      (client=<hostname>:<machine id>:<pid>)
      on this machine, and gone?
                              ──► kill ───────►  SCRIPT kill PID:START ...: SIGKILL each node
                                       ◄────    and its workers if its start time still matches

Every node carries ``ceranubis-node client=<hostname>:<machine id>:<pid>`` in its command
line (``transport.client_identity``). A node is a stray when its client names this machine
(its hostname *and* its random machine id, ``transport.machine_id``) and that process is
gone (or is a newer process with a reused PID). ``--all`` ends every node whose client is
on this machine, alive or not. A node of another machine is never ended, not even with
``--all``: its client's PID means nothing here, and two machines may share a hostname and
an account. Run ``kill-strays`` on the machine the client ran on. The same stdlib-only
script runs on every host, through the same SSH connection code as the executor (host
keys always checked, nothing forwarded).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import HostError
from .hosts import Host
from .transport import CLIENT_PREFIX, NODE_MARKER, machine_id, pid_alive

# Seconds one listing or kill command may take on a host.
COMMAND_TIMEOUT = 30.0
# Seconds of clock disagreement tolerated when telling a reused client PID from the client.
START_SLACK = 1.0

# Runs on each host as ``python -I -c SCRIPT list`` or ``... kill PID:START ...``. Stdlib
# only, Linux /proc, any python3. Only the caller's own processes are listed or touched.
SCRIPT = r"""
import json, os, signal, sys
MARKER, PREFIX = @MARKER@, @PREFIX@
def node(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        words = [w.decode("utf-8", "replace") for w in f.read().split(b"\0")]
    if MARKER not in words:
        return None
    tail = words[words.index(MARKER) + 1:]
    client = [w[len(PREFIX):] for w in tail if w.startswith(PREFIX)]
    if not client:
        return None
    with open("/proc/%d/stat" % pid, "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return {"pid": pid, "ppid": int(fields[1]), "start": int(fields[19]), "client": client[0]}
def nodes():
    found, uid = {}, os.getuid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    info = node(int(name))
                    if info:
                        found[info["pid"]] = info
            except (OSError, ValueError, IndexError):
                pass
    return found
def listing():
    found = nodes()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    for pid, info in sorted(found.items()):
        if info["ppid"] not in found:
            info["age"] = uptime - info["start"] / float(ticks)
            info["workers"] = sorted(w for w, i in found.items() if i["ppid"] == pid)
            out.append(info)
    return out
def kill(words):
    found, ended = nodes(), []
    for word in words:
        pid, start = [int(part) for part in word.split(":")]
        if pid in found and found[pid]["start"] == start:
            group = [pid] + [w for w, i in found.items() if i["ppid"] == pid]
            for target in group:
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass
            ended.append(group)
    return ended
sys.stdout.write(json.dumps(listing() if sys.argv[1] == "list" else kill(sys.argv[2:])))
"""
SCRIPT = SCRIPT.replace("@MARKER@", repr(NODE_MARKER)).replace("@PREFIX@", repr(CLIENT_PREFIX))


@dataclass(frozen=True)
class Stray:
    """A node ended (or to be ended) on a host, with its workers."""

    host: str
    pid: int
    workers: tuple[int, ...]
    client: str


class HostScript:
    """Runs a stdlib-only Python ``script`` (default :data:`SCRIPT`) on one host: a local
    subprocess, or a command over SSH (``probe.py`` runs its own through it)."""

    def __init__(self, host: Host, script: str = SCRIPT, what: str = "the stray check") -> None:
        self.host = host
        self.script = script
        self.what = what
        self.conn: Any = None

    async def __aenter__(self) -> HostScript:
        if not self.host.is_local:
            from .ssh import SSHTransport  # asyncssh only when a remote host is asked for

            self.conn = await SSHTransport(self.host).connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()
            await asyncio.wait_for(self.conn.wait_closed(), COMMAND_TIMEOUT)

    async def run(self, args: list[str]) -> Any:
        """Run the script with ``args``; its JSON answer."""
        if self.conn is None:
            out, err, status = await self._run_local(args)
        else:
            command = shlex.join([self.host.python, "-I", "-c", self.script, *args])
            result = await asyncio.wait_for(self.conn.run(command), COMMAND_TIMEOUT)
            out, err, status = str(result.stdout), str(result.stderr), result.exit_status
        if status != 0:
            raise HostError(self.host.address, f"{self.what} failed ({status}): {err[-300:]}")
        return json.loads(out)

    async def _run_local(self, args: list[str]) -> tuple[str, str, int | None]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-c",
            self.script,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
        return out.decode(), err.decode(errors="replace"), process.returncode


def is_stray(client: str, node_age: float, everything: bool) -> bool:
    """Whether a node whose client is ``client`` (``hostname:machine-id:pid``) should be
    ended here."""
    parts = client.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        return False  # an unknown form: not ours to judge
    hostname, machine, pid = parts
    if (hostname, machine) != (socket.gethostname(), machine_id()):
        return False  # another machine's client (maybe of the same hostname): not ours to judge
    return everything or not _client_alive(int(pid), node_age)


def _client_alive(pid: int, node_age: float) -> bool:
    """The client process lives, and is older than its node (not a reused PID)."""
    if not pid_alive(pid):
        return False
    age = _process_age(pid)
    return age is None or age + START_SLACK >= node_age


def _process_age(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime") as uptime:
            now = float(uptime.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return now - int(fields[19]) / os.sysconf("SC_CLK_TCK")


async def kill_strays_on(host: Host, everything: bool, dry_run: bool) -> list[Stray]:
    """End the stray nodes on one host; returns what was ended (or would be)."""
    async with HostScript(host) as runner:
        nodes = await runner.run(["list"])
        chosen = [n for n in nodes if is_stray(n["client"], n["age"], everything)]
        if dry_run or not chosen:
            return [_stray(host, n["pid"], n["workers"], n["client"]) for n in chosen]
        clients = {n["pid"]: n["client"] for n in chosen}
        ended = await runner.run(["kill", *(f"{n['pid']}:{n['start']}" for n in chosen)])
    return [_stray(host, group[0], group[1:], clients[group[0]]) for group in ended]


def _stray(host: Host, pid: int, workers: list[int], client: str) -> Stray:
    return Stray(host.address, pid, tuple(workers), client)


async def kill_strays(
    hosts: list[Host], everything: bool = False, dry_run: bool = False
) -> tuple[list[Stray], dict[str, str]]:
    """End stray nodes on every host at once; returns what was ended and per-host errors."""
    outcomes = await asyncio.gather(
        *(kill_strays_on(host, everything, dry_run) for host in hosts), return_exceptions=True
    )
    ended: list[Stray] = []
    errors: dict[str, str] = {}
    for host, outcome in zip(hosts, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            errors[host.address] = str(outcome) or type(outcome).__name__
        else:
            ended += outcome
    return ended, errors
