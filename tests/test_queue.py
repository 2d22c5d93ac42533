"""Queue mode on both back ends: node daemons (real processes) pull projects from the store.

Each test runs once on a SQLite file (several daemons on one machine) and once on a real
PostgreSQL server. Leases are short (``TEST_LEASE``); every wait is on a state of the store.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ceranubis_jupyter import Project, commit_project
from ceranubis_jupyter.projects.stores import is_postgres_url, open_store
from tests.queue_helpers import (
    CODE,
    DAEMON_SECONDS,
    PROJECT_SECONDS,
    REPO,
    Daemons,
    commit_in_child,
)
from tests.waiting import wait_for

# Arguments of the project whose committing process is killed.
BIG_PROJECT = 2000


def _argument_rows(url: str, project: int) -> list[tuple[int, str, str, int]]:
    """``(position, state, host, attempts)`` of each argument, by position."""
    store = open_store(url)
    try:
        rows = store.arguments(project, ["pending", "running", "done", "failed", "cancelled"])
        return [(r.position, r.state, r.host or "", r.attempts) for r in rows]
    finally:
        store.close()


def test_a_project_whose_committer_was_killed_ends_with_one_result_per_argument(
    store_url: str, daemons: Daemons
) -> None:
    committer = commit_in_child(store_url, "square", f"[(i,) for i in range({BIG_PROJECT})]",
                                "big")  # fmt: skip
    committer.send_signal(signal.SIGKILL)
    committer.wait(DAEMON_SECONDS)
    for name in ("a", "b"):
        daemons.start(store_url, name)
    project = Project.load("big", store_url)  # this process did not commit it
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    assert project.state == "done"
    assert sorted(project.results()) == [((i,), i * i) for i in range(BIG_PROJECT)]
    rows = _argument_rows(store_url, project.id)
    assert {state for _, state, _, _ in rows} == {"done"}
    assert {host for _, _, host, _ in rows} <= {"a", "b"}


def test_a_killed_daemon_s_arguments_run_elsewhere_after_its_lease(
    store_url: str, daemons: Daemons, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    doomed = daemons.start(store_url, "doomed")
    daemons.wait_serving(store_url, "doomed")
    project = commit_project(CODE, "nap", [(i, 0.5, str(marks)) for i in range(12)],
                             store=store_url, queue=True)  # fmt: skip
    wait_for(lambda: any(marks.iterdir()), DAEMON_SECONDS, "a task started on the doomed node")
    daemons.kill(doomed)
    held = {pos for pos, state, host, _ in _argument_rows(store_url, project.id)
            if host == "doomed" and state == "running"}  # fmt: skip
    daemons.start(store_url, "heir")
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    assert project.state == "done"
    assert sorted(project.results()) == [((i, 0.5, str(marks)), i) for i in range(12)]
    rows = _argument_rows(store_url, project.id)
    assert held, "the killed node held nothing: the test proves nothing"
    for position, state, host, attempts in rows:
        assert state == "done"
        if position in held:
            assert host == "heir" and attempts >= 2  # the lease ran out, an attempt counted


def test_cancel_from_a_third_process_stops_running_tasks(
    store_url: str, daemons: Daemons, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    daemons.start(store_url, "worker", workers=2)
    project = commit_project(CODE, "nap", [(i, 600, str(marks)) for i in range(4)],
                             store=store_url, queue=True, name="long")  # fmt: skip
    wait_for(lambda: len(list(marks.iterdir())) == 2, DAEMON_SECONDS, "two tasks running")
    pids = [int(mark.name.split(".")[1]) for mark in marks.iterdir()]
    script = (f"from ceranubis_jupyter import Project\n"
              f"Project.load('long', {store_url!r}).cancel()\n")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=DAEMON_SECONDS)
    # A generous bound (the machine is loaded): the daemon stops them within a second or so.
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), 30, "the tasks stopped")
    assert project.state == "cancelled"
    assert project.counts()["cancelled"] == 4
    after = commit_project(CODE, "square", [(3,)], store=store_url, queue=True)
    assert after.wait(PROJECT_SECONDS), daemons.logs()  # the daemon serves on
    assert after.results() == [((3,), 9)]


def test_priorities_then_groups_are_honoured(store_url: str, daemons: Daemons) -> None:
    clients = [
        commit_in_child(store_url, "square", "[(i,) for i in range(20)]", "low", priority=0),
        commit_in_child(store_url, "square", "[(i,) for i in range(20)]", "high", priority=5),
        commit_in_child(store_url, "where", "[(i,) for i in range(6)]", "gpu", group="gpu"),
    ]
    for client in clients:
        client.kill()
        client.wait(DAEMON_SECONDS)
    daemons.start(store_url, "plain")
    low, high = Project.load("low", store_url), Project.load("high", store_url)
    assert low.wait(PROJECT_SECONDS) and high.wait(PROJECT_SECONDS), daemons.logs()
    store = open_store(store_url)
    try:
        started_high = [r.started or 0 for r in store.arguments(high.id, ["done"])]
        started_low = [r.started or 0 for r in store.arguments(low.id, ["done"])]
    finally:
        store.close()
    assert max(started_high) <= min(started_low)  # the higher priority was claimed first
    grouped = Project.load("gpu", store_url)
    assert grouped.counts()["pending"] == 6  # no node of its group yet
    daemons.start(store_url, "gpu-node", group="gpu")
    assert grouped.wait(PROJECT_SECONDS), daemons.logs()
    assert sorted(grouped.results()) == [((i,), (i, "gpu-node")) for i in range(6)]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_daemon_with_status_zero_and_nothing_held(
    store_url: str, daemons: Daemons, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = daemons.start(store_url, "leaving")
    project = commit_project(CODE, "nap", [(i, 600, str(marks)) for i in range(3)],
                             store=store_url, queue=True)  # fmt: skip
    wait_for(lambda: any(marks.iterdir()), DAEMON_SECONDS, "a task running")
    assert daemons.stop(daemon, stop_signal) == 0, daemon.text()
    rows = _argument_rows(store_url, project.id)
    assert {state for _, state, _, _ in rows} == {"pending"}  # released, not lost
    assert {attempts for _, _, _, attempts in rows} == {0}  # a release counts no attempt
    store = open_store(store_url)
    try:
        assert [(n.name, n.state) for n in store.nodes()] == [("leaving", "stopped")]
    finally:
        store.close()


# ---------------------------------------------------------------------- bad input


def _node_command(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "ceranubis_jupyter.cli", "node", "--store", url, *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("bogus://somewhere/db", "unknown store URL"),
        ("postgresql://nobody@127.0.0.1:1/none", "cannot reach the project store"),
    ],
)
def test_a_malformed_or_unreachable_url_is_refused(url: str, said: str) -> None:
    done = _node_command(url)
    assert done.returncode == 2
    assert said in done.stderr


def test_a_store_without_the_queue_schema_is_refused(store_url: str) -> None:
    open_store(store_url).close()  # project tables, no queue schema
    done = _node_command(store_url)
    assert done.returncode == 2
    assert "has no queue schema" in done.stderr and "--init" in done.stderr
    made = _node_command(store_url, "--init")  # what the message says to do
    assert made.returncode == 0, made.stderr
    store = open_store(store_url, create=False)  # a node's check passes now
    store.close()


@pytest.mark.parametrize(("version", "said"), [("999", "upgrade ceranubis_jupyter on this host"),
                                                ("0", "upgrade the store")])  # fmt: skip
def test_a_store_of_another_queue_version_is_refused(store_url: str, version: str,
                                                     said: str) -> None:  # fmt: skip
    store = open_store(store_url)
    store.init_queue()
    store.close()
    _set_meta(store_url, version)
    done = _node_command(store_url)
    assert done.returncode == 2
    assert said in done.stderr


def _set_meta(url: str, version: str) -> None:
    sql = f"UPDATE ceranubis_meta SET value = '{version}' WHERE key = 'queue_schema'"
    if is_postgres_url(url):
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(sql.encode())
    else:
        with sqlite3.connect(url) as connection:
            connection.execute(sql)


def test_a_project_whose_code_cannot_load_fails_and_others_still_run(
    store_url: str, daemons: Daemons, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here_only = tmp_path / "here_only"
    here_only.mkdir()
    (here_only / "cj_only_here.py").write_text("def twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(here_only))  # the committer has it; the daemon has not
    source = "import cj_only_here\n\ndef f(x):\n    return cj_only_here.twice(x)\n"
    broken = commit_project(source, "f", [(1,), (2,)], store=store_url, queue=True)
    good = commit_project(CODE, "square", [(4,)], store=store_url, queue=True)
    daemons.start(store_url, "strict")
    assert broken.wait(PROJECT_SECONDS) and good.wait(PROJECT_SECONDS), daemons.logs()
    assert broken.state == "failed"
    errors = broken.errors()
    assert len(errors) == 2
    assert all("cannot load on node strict" in text and "cj_only_here" in text
               for _, text in errors)  # fmt: skip
    assert good.results() == [((4,), 16)]
