"""Whose turn it is to claim a commit first: one daemon claims at once, the others a
moment later.

Every daemon that serves a project hears its commit. Were they all to claim at once, each
claim (a daemon and a server back end waking) would contend for the cores with the one
claim that gets the work: with two idle daemons on a 2-core machine, the task of a
one-argument commit started 0.2 ms later than with one (``bench_q2.py``: 3.48 against
3.28 ms with the second daemon deaf to commits).

The daemons agree without a word between them (rendezvous hashing): each scores the
project id against the name of every live daemon that serves it (``queue_events.score``,
which a small commit's hand uses too), from the ``nodes`` table (read again every
:data:`PEERS_SECONDS`, and when a daemon says it started or stopped), and the best score
claims at once. The others claim :data:`STAGGER_SECONDS` later whatever is still
pending: a first daemon that is busy, slow, or gone since its last heartbeat costs a
commit that delay, never its work. A large commit loses nothing either: its other
daemons join in after the delay.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence

from ..projects.queue_events import NODE_EVENT, parse_commit, score
from ..projects.queue_listen import TIMER
from ..projects.queue_store import NODE_SILENT_SECONDS, NodeRow

log = logging.getLogger("ceranubis")

# Seconds between reads of the live daemons (at a heartbeat): a daemon started since is
# not scored by the others until then (it and one other may then both claim at once).
PEERS_SECONDS = 30.0
# Seconds the daemons whose turn it is not wait before they claim a commit: longer than
# a woken claim takes on a loaded machine (~1-3 ms here), short against a task's start.
STAGGER_SECONDS = 0.005


class Turns:
    """One daemon's view of whose turn a commit is, and the commits it deferred.

    Args:
        name: this daemon's name in the ``nodes`` table.
        stagger: seconds a commit that is another daemon's turn waits.
    """

    def __init__(self, name: str, stagger: float = STAGGER_SECONDS) -> None:
        self.name, self.stagger = name, stagger
        self._peers: tuple[tuple[str, str], ...] = ()  # live daemons: (name, group)
        self.read_at = -math.inf  # monotonic time of the last read of the nodes table
        self._deferred: deque[tuple[float, tuple[int, int]]] = deque()
        self._lock = threading.Lock()

    def due_for_peers(self, now: float) -> bool:
        """Whether the live daemons should be read again."""
        return now - self.read_at >= PEERS_SECONDS

    def set_peers(self, nodes: Sequence[NodeRow], now: float) -> None:
        """Take the live daemons from ``nodes`` (just after this daemon's own heartbeat,
        so its row's time is the database's now): running, and heard from lately."""
        mine = next((node.heartbeat for node in nodes if node.name == self.name), None)
        if mine is None:
            return
        peers = tuple(
            (node.name, node.group)
            for node in nodes
            if node.state == "running" and mine - node.heartbeat <= NODE_SILENT_SECONDS
        )
        if peers != self._peers:
            log.info("node %s: nodes serving now: %s", self.name, " ".join(n for n, _ in peers))
        self._peers, self.read_at = peers, now

    def heard(self, payload: str, group: str) -> list[tuple[int, int]]:
        """What a daemon of ``group`` claims now on hearing ``payload`` (a commit, the
        listener's :data:`TIMER` or its reconnection): ``(project, priority)`` pairs;
        ``(-1, 0)``: look at every project. A commit of another group is not for it; one
        that is another daemon's turn is deferred. A daemon that started or stopped makes
        the live ones due to be read (:meth:`due_for_peers`)."""
        if payload == TIMER:
            return self.take_due()
        if payload.startswith(NODE_EVENT):
            self.read_at = -math.inf  # a daemon started or stopped: read them again
            return []
        commit = parse_commit(payload)
        if commit is None:
            return [(-1, 0)]  # the listener (re)connected: what was sent meanwhile is lost
        project, priority, committed_for = commit
        if committed_for not in ("", group):
            return []
        if not self.first(project, committed_for):
            self.defer((project, priority))
            return []
        return [(project, priority)]

    def first(self, project: int, group: str) -> bool:
        """Whether this daemon claims ``project`` (committed for ``group``; ``""``: any)
        at once: it scores best among the live daemons that serve it."""
        names = {name for name, served in self._peers if not group or served == group}
        names.add(self.name)
        return max(names, key=lambda name: score(project, name)) == self.name

    def defer(self, commit: tuple[int, int]) -> None:
        """Claim ``commit`` (project, priority) after the stagger."""
        with self._lock:
            self._deferred.append((time.monotonic() + self.stagger, commit))

    def seconds_to_next(self) -> float:
        """Seconds until the first deferred commit is due (``inf``: none)."""
        with self._lock:
            return self._deferred[0][0] - time.monotonic() if self._deferred else math.inf

    def take_due(self) -> list[tuple[int, int]]:
        """The deferred commits now due, taken."""
        now, due = time.monotonic(), []
        with self._lock:
            while self._deferred and self._deferred[0][0] <= now:
                due.append(self._deferred.popleft()[1])
        return due


__all__ = ["PEERS_SECONDS", "STAGGER_SECONDS", "Turns"]
