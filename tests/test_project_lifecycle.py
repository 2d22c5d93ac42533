"""A project run's life: the table of moves, and the one path only an exiting process takes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from ceranubis_jupyter.projects.lifecycle import TRANSITIONS, Lifecycle, RunEvent, RunState
from ceranubis_jupyter.projects.project import Project
from ceranubis_jupyter.projects.stores import open_store

S, E = RunState, RunEvent


def _at(state: RunState) -> tuple[Lifecycle, threading.Event]:
    wake = threading.Event()
    return Lifecycle(state, wake), wake


def test_the_main_path_moves_and_wakes_the_run_thread() -> None:
    life, wake = _at(S.STARTING)
    assert life.on(E.CREATED) and life.state is S.RUNNING and wake.is_set()
    wake.clear()
    assert life.on(E.CANCEL) and life.state is S.CANCELLING and wake.is_set()
    assert not life.on(E.CANCEL) and life.state is S.CANCELLING  # asked twice: one cancel
    assert life.on(E.END) and life.state is S.FINISHED


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (S.CANCELLING, E.EXIT, S.CANCELLING),  # a cancel under way ends as one
        (S.ORPHANED, E.EXIT, S.ORPHANED),  # another client's project: not ours to stop
        (S.ORPHANED, E.CANCEL, S.ORPHANED),
        (S.EXITING, E.CANCEL, S.EXITING),  # too late: the rest stays pending
        (S.EXITING, E.CLAIM_LOST, S.ORPHANED),  # then the final state is not ours to write
        (S.STARTING, E.CANCEL, S.CANCELLING),
        (S.CANCELLING, E.CREATED, S.CANCELLING),  # cancelled before the commit
        (S.CANCELLING, E.ABANDON, S.ABANDONED),
        (S.FINISHED, E.CREATED, S.FINISHED),  # a run thread that failed early
    ],
)
def test_what_each_event_does_where_it_is_not_the_main_path(
    state: RunState, event: RunEvent, after: RunState
) -> None:
    life, _ = _at(state)
    life.on(event)
    assert life.state is after


def test_every_run_ends_and_ends_once() -> None:
    for state in RunState:
        life, _ = _at(state)
        if state is S.FINISHED:
            with pytest.raises(RuntimeError, match="END cannot happen when FINISHED"):
                life.on(E.END)
        else:
            life.on(E.END)
        assert life.state is S.FINISHED


def test_a_move_the_table_does_not_list_is_a_bug_and_changes_nothing() -> None:
    impossible = [(s, e) for s in RunState for e in RunEvent if (s, e) not in TRANSITIONS]
    # A heartbeat needs the ids; an insert fails only before it commits; a run starts once.
    assert (S.STARTING, E.CLAIM_LOST) in impossible
    assert (S.RUNNING, E.ABANDON) in impossible
    assert (S.RUNNING, E.CREATED) in impossible
    for state, event in impossible:
        life, wake = _at(state)
        with pytest.raises(RuntimeError, match=f"{event.name} cannot happen when {state.name}"):
            life.on(event)
        assert life.state is state and not wake.is_set()


# Commits long tasks, waits for a few results, and falls off the end of the script: the
# interpreter's exit stops the run (EXITING).
LEAVER = """
import sys, time
from ceranubis_jupyter.projects.commit import commit_project
code = "import time\\ndef work(x):\\n    time.sleep(0.05 if x < 4 else 30)\\n    return x + 1\\n"
project = commit_project(code, "work", [(x,) for x in range(20)], name="left", store=sys.argv[1])
deadline = time.monotonic() + 60
while project.status()[0] < 4:
    assert time.monotonic() < deadline, project.counts()
    time.sleep(0.02)
print("leaving", flush=True)
"""


def test_a_run_left_at_interpreter_exit_is_stopped_and_resumable(store_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LEAVER), store_url],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=90,
    )
    assert done.returncode == 0 and "leaving" in done.stdout, done.stderr
    project = Project.load("left", open_store(store_url))
    assert project.state == "stopped"
    counts = project.counts()
    assert counts["done"] >= 4 and counts["failed"] == counts["cancelled"] == 0
    assert counts["pending"] == 20 - counts["done"]  # left to a resume, none lost
    assert project.results()[:4] == [((x,), x + 1) for x in range(4)]
