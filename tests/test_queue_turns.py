"""Whose turn a commit is (``daemon/turns.py``): of the daemons that hear a commit, the one
whose name scores best for the project claims at once, the others after a stagger; a turn
of a daemon that is gone costs the stagger, never the work."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest

from ceranubis_jupyter import commit_project
from ceranubis_jupyter.cluster.fastpaths import FAST_PATHS_OFF_ENV
from ceranubis_jupyter.daemon.turns import Turns
from ceranubis_jupyter.projects.queue_events import commit_payload, node_payload, score
from ceranubis_jupyter.projects.queue_listen import TIMER
from ceranubis_jupyter.projects.queue_store import NODE_SILENT_SECONDS, NodeRow
from ceranubis_jupyter.projects.stores import open_store
from tests.queue_helpers import CODE, DAEMON_SECONDS, PROJECT_SECONDS, Daemon, Daemons
from tests.waiting import wait_for

# A stagger and an unwoken poll no test outlives: whoever claims, claims at once.
NEVER = "3600"


def _row(name: str, group: str = "", heartbeat: float = 1000.0, state: str = "running") -> NodeRow:
    return NodeRow(name, "h", 1, 1, group, 0.0, "v", 4, 0, 0, 0, 0, 0.0, heartbeat, state)


def test_the_score_is_the_same_in_every_process() -> None:
    pairs = [(1, "a"), (2, "gpu-node:17"), (123456, "b")]
    script = (
        "from ceranubis_jupyter.projects.queue_events import score\n"
        f"print([score(p, n) for p, n in {pairs!r}])"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    printed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert printed.strip() == str([score(p, n) for p, n in pairs])
    assert len({score(p, "a") for p in range(100)}) == 100


def test_exactly_one_daemon_that_serves_a_project_goes_first() -> None:
    rows = [_row("a"), _row("b", "gpu"), _row("c", "gpu")]
    turns = {name: Turns(name) for name in ("a", "b", "c")}
    for one in turns.values():
        one.set_peers(rows, now=0.0)
    for project in range(200):
        assert sum(one.first(project, "") for one in turns.values()) == 1
        assert [name for name in ("b", "c") if turns[name].first(project, "gpu")] in (["b"], ["c"])
    firsts = [name for name in "abc" for p in range(200) if turns[name].first(p, "")]
    assert set(firsts) == {"a", "b", "c"}  # every daemon gets turns


def test_stopped_and_silent_daemons_get_no_turn() -> None:
    turns = Turns("a")
    silent = 1000.0 - NODE_SILENT_SECONDS - 1
    turns.set_peers([_row("a"), _row("b", state="stopped"), _row("c", heartbeat=silent)], 0.0)
    assert all(turns.first(project, "") for project in range(100))
    turns.set_peers([_row("b")], 1.0)  # its own row missing: nothing read
    assert turns.read_at == 0.0


def test_heard_events_a_timer_and_a_daemon_coming() -> None:
    turns = Turns("a", stagger=0.0)
    turns.set_peers([_row("a"), _row("b")], now=time.monotonic())
    mine = next(p for p in range(100) if turns.first(p, ""))
    theirs = next(p for p in range(100) if not turns.first(p, ""))
    assert turns.heard(commit_payload(mine, 3, ""), "") == [(mine, 3)]
    assert turns.heard(commit_payload(theirs, 2, ""), "") == []  # deferred
    assert turns.heard(commit_payload(mine, 0, "gpu"), "") == []  # another group's
    assert turns.seconds_to_next() <= 0
    assert turns.heard(TIMER, "") == [(theirs, 2)]
    assert turns.seconds_to_next() == math.inf and turns.heard(TIMER, "") == []
    assert turns.heard("listening", "") == [(-1, 0)]
    assert not turns.due_for_peers(time.monotonic())
    assert turns.heard(node_payload("c"), "") == [] and turns.due_for_peers(time.monotonic())


def _serving_together(daemons: Daemons, *started: Daemon) -> None:
    """Wait until each daemon's log says it sees every one of ``started`` serving."""
    names = " ".join(sorted(d.name for d in started))
    line = f"nodes serving now: {names}"
    wait_for(lambda: all(line in d.text() for d in started), DAEMON_SECONDS,
             f"each daemon sees {names}:\n{daemons.logs()}")  # fmt: skip


def _where(url: str, x: int) -> tuple[int, str]:
    project = commit_project(CODE, "where", [(x,)], store=url, queue=True)
    assert project.wait(PROJECT_SECONDS), project.counts()
    result = project.results()[0][1]
    return int(project.id), result[1]


# Daemons that commits hand nothing (queue_events.Hand): they claim what they hear.
NO_HANDS = {FAST_PATHS_OFF_ENV: "queue_hands"}


@pytest.mark.parametrize("hands", [True, False], ids=["handed", "claimed"])
def test_a_commit_is_claimed_by_the_daemon_whose_turn_it_is(
    pg_url: str, daemons: Daemons, hands: bool
) -> None:
    # Handed: the commit picks the daemon by the same score, in the server.
    extra = ("--stagger", NEVER, "--poll", NEVER)  # the other one never claims here
    env = None if hands else NO_HANDS
    started = [daemons.start(pg_url, name, extra=extra, env=env) for name in ("turn-a", "turn-b")]
    _serving_together(daemons, *started)
    ran = [_where(pg_url, x) for x in range(8)]
    for project, node in ran:
        assert node == max(("turn-a", "turn-b"), key=lambda name: score(project, name))


def test_the_turn_of_a_daemon_that_is_gone_is_taken_after_the_stagger(
    pg_url: str, daemons: Daemons
) -> None:
    alone = daemons.start(pg_url, "turn-alone", extra=("--poll", NEVER), env=NO_HANDS)
    _serving_together(daemons, alone)
    first, _ = _where(pg_url, 0)
    coming = first + 1  # this client alone commits: the next id
    ghost = next(f"gone-{n}" for n in range(1000)
                 if score(coming, f"gone-{n}") > score(coming, alone.name))  # fmt: skip
    store = open_store(pg_url, create=False)
    try:
        store.beat(_row(ghost, heartbeat=0.0))  # it beat just now (the database's clock)
        store.notify(node_payload(ghost))
        line = f"nodes serving now: {' '.join(sorted([ghost, alone.name]))}"
        wait_for(lambda: line in alone.text(), DAEMON_SECONDS, f"{ghost} seen:\n{alone.text()}")
        project, node = _where(pg_url, 1)
    finally:
        store.close()
    assert project == coming and node == alone.name
