"""The rows of the project store, and whether a project's client still lives.

Plain frozen dataclasses shared by :mod:`~ceranubis_jupyter.store`, its back ends and
:mod:`~ceranubis_jupyter.project`; stdlib only.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..cluster.transport import pid_alive

# Seconds without a heartbeat after which a project's client counts as gone: several
# heartbeats (run.HEARTBEAT_SECONDS) must be missed, so a busy client is not declared
# dead, yet a crashed one on another machine is noticed within a few seconds.
STALE_SECONDS = 10.0
# The client of a queued project: the node daemons serve it, so it lives while it runs,
# whatever process committed it.
QUEUE_CLIENT = "(queue)"


@dataclass(frozen=True)
class ProjectRow:
    """A project as stored: its definition and who runs it (``client``, ``heartbeat``).

    ``version`` counts the projects of one name (1, 2, ...); ``code_hash`` and
    ``args_hash`` are the digests (``digest.py``) that say whether a re-run is the same
    project; ``changes`` says how this version differs from the one before it.
    """

    id: int
    name: str
    code: str
    target: str
    created: float
    hosts: list[str]
    state: str
    client: str
    heartbeat: float
    function: bytes | None
    version: int = 1
    code_hash: str = ""
    args_hash: str = ""
    changes: str = ""

    @property
    def live(self) -> bool:
        """True when a client process (or the queue) is running this project now."""
        if self.state != "running":
            return False
        return self.client == QUEUE_CLIENT or client_alive(self.client, self.heartbeat)

    @property
    def effective_state(self) -> str:
        """The stored state, or ``stopped`` when it says running but its client is gone."""
        return "stopped" if self.state == "running" and not self.live else self.state


@dataclass(frozen=True)
class ProjectSummary:
    """One line of :func:`~ceranubis_jupyter.project.list_projects`."""

    name: str
    id: int
    created: float
    state: str
    done: int
    total: int
    version: int = 1


@dataclass(frozen=True)
class ArgumentRow:
    """One argument tuple of a project and its outcome (blobs as stored)."""

    id: int
    position: int
    args: bytes
    result: bytes | None
    state: str
    host: str | None
    attempts: int
    started: float | None
    finished: float | None
    error: str | None
    output: str | None
    reused: bool = False  # its result is another argument's, found by content


@dataclass(frozen=True)
class Outcome:
    """What happened to one argument; ``state`` is done, failed, cancelled or pending."""

    arg_id: int
    state: str
    result: bytes | None = None
    error: str | None = None
    host: str | None = None
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    output: str | None = None

    def row(self) -> tuple[Any, ...]:
        """The parameters of the store's UPDATE, in order (the argument id last)."""
        return (
            self.state,
            self.result,
            self.error,
            self.host,
            self.attempts,
            self.started,
            self.finished,
            self.output,
            self.arg_id,
        )


@dataclass(frozen=True)
class HostStats:
    """Timings of the finished arguments that ran on one host."""

    host: str
    count: int
    mean_seconds: float
    first_started: float
    last_finished: float


def this_client() -> str:
    """This process as a project client: ``hostname:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def client_alive(client: str, heartbeat: float, now: float | None = None) -> bool:
    """Whether ``client`` (``hostname:pid``) still runs its project.

    A client on this machine is alive while its process is; any client must also have
    sent a heartbeat within :data:`STALE_SECONDS`.
    """
    host, _, pid = client.rpartition(":")
    if not host or not pid.isdigit():
        return False
    if (now if now is not None else time.time()) - heartbeat > STALE_SECONDS:
        return False
    return host != socket.gethostname() or pid_alive(int(pid))


def project_row(row: Sequence[Any]) -> ProjectRow:
    id_, name, code, target, created, hosts, state, client, heartbeat, function, *rest = row
    version, code_hash, args_hash, changes = rest
    return ProjectRow(
        int(id_),
        str(name),
        str(code),
        str(target),
        float(created),
        list(json.loads(hosts)),
        str(state),
        str(client),
        float(heartbeat),
        None if function is None else bytes(function),
        int(version),
        str(code_hash),
        str(args_hash),
        str(changes),
    )


def argument_row(row: Sequence[Any]) -> ArgumentRow:
    values = list(row)
    for index in (2, 3):
        if values[index] is not None:
            values[index] = bytes(values[index])
    values[11] = bool(values[11])
    return ArgumentRow(*values)
