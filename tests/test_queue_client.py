"""Queue mode from the client's side: the executor's commit, the magic, the views, the CLI.

Each commits with ``queue=True``, checks that nothing ran in this process, then lets a
node daemon (a real process) run the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ceranubis_jupyter import CeranubisExecutor, Project
from ceranubis_jupyter.jupyter.session import queue_hosts
from ceranubis_jupyter.projects.queue_listen import RECONNECTED, Listener, QueueNodes, watch
from ceranubis_jupyter.projects.queue_store import PROGRESS_CHANNEL
from ceranubis_jupyter.projects.stores import open_store
from tests.queue_helpers import DAEMON_SECONDS, PROJECT_SECONDS, REPO, Daemons
from tests.waiting import wait_for


def cube(x: int) -> int:
    return x**3


def test_executor_commit_with_queue_runs_nothing_here(store_url: str, daemons: Daemons) -> None:
    with CeranubisExecutor(max_workers=1) as executor:
        project = executor.commit(cube, [(i,) for i in range(5)], store=store_url, queue=True,
                                  name="cubes")  # fmt: skip
        assert executor.scheduler.in_flight_threadsafe() == []
        assert project.counts()["pending"] == 5 and project.state == "running"
    daemons.start(store_url, "n1")
    again = Project.load("cubes", store_url)
    assert again.wait(PROJECT_SECONDS), daemons.logs()
    assert again.results() == [((i,), i**3) for i in range(5)]


def test_the_magic_queues_with_priority_and_group(
    ipshell: Any, store_url: str, daemons: Daemons
) -> None:
    line = f"double over range(4) --name magic --store {store_url} --queue --priority 2 " \
           "--group g1 --no-wait"  # fmt: skip
    ipshell.run_cell_magic("ceranubis", line, "def double(x):\n    return 2 * x\n")
    project = ipshell.user_ns["magic"]
    assert project.counts()["pending"] == 4
    daemons.start(store_url, "g1-node", group="g1")
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    assert project.results() == [((i,), 2 * i) for i in range(4)]
    store = open_store(store_url)
    try:
        assert {r.host for r in store.arguments(project.id, ["done"])} == {"g1-node"}
    finally:
        store.close()


def test_the_views_show_the_daemons_as_hosts_and_the_cli_lists_them(
    store_url: str, daemons: Daemons
) -> None:
    with CeranubisExecutor(max_workers=1) as executor:
        project = executor.commit(cube, [(2,)], store=store_url, queue=True)
    daemons.start(store_url, "shown", workers=1)
    daemons.wait_serving(store_url, "shown")
    nodes = queue_hosts(project)
    assert isinstance(nodes, QueueNodes)
    rows = nodes.hosts()
    assert [(r.host, r.state, r.workers) for r in rows] == [("shown", "ready", 1)]
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    store = open_store(store_url)
    try:  # the next heartbeat counts the outcome written
        wait_for(lambda: store.nodes()[0].done == 1, DAEMON_SECONDS, "the heartbeat counts it")
    finally:
        store.close()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "ceranubis_jupyter.cli", "nodes", "--store", store_url]
    table = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert table.returncode == 0 and "shown" in table.stdout and "HELD" in table.stdout
    listed = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    [node] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (node["name"], node["workers"], node["state"]) == ("shown", 1, "running")
    assert (node["claimed"], node["done"], node["held"], node["dropped"]) == (1, 1, 0, 0)


def test_a_queued_project_s_events_reach_a_watcher_through_listen(
    pg_url: str, daemons: Daemons
) -> None:
    with CeranubisExecutor(max_workers=1) as executor:
        project = executor.commit(cube, [(i,) for i in range(3)], store=pg_url, queue=True)
    heard = threading.Event()
    listener = watch(project.store, project.id, heard.set)
    assert listener is not None
    try:
        wait_for(listener.connected.is_set, DAEMON_SECONDS, "the watcher listening")
        heard.clear()  # its first call says it (re)connected
        daemons.start(pg_url, "talker")
        wait_for(heard.is_set, PROJECT_SECONDS, f"an outcome event:\n{daemons.logs()}")
        assert project.wait(PROJECT_SECONDS)
    finally:
        listener.stop()


def test_a_daemon_s_listener_hears_commits_and_cancels_but_not_the_views_progress(
    pg_url: str,
) -> None:
    store = open_store(pg_url)
    store.ensure_queue()
    heard: list[str] = []
    arrived = threading.Event()

    def on_event(payload: str) -> None:
        heard.append(payload)
        arrived.set()

    listener = Listener(pg_url, on_event)  # the daemons' channel only
    listener.start()
    try:
        wait_for(listener.connected.is_set, DAEMON_SECONDS, "the listener listening")
        store.notify("outcome:7", PROGRESS_CHANNEL)  # sent first, on the views' channel
        store.notify("cancel:7")
        wait_for(lambda: "cancel:7" in heard, DAEMON_SECONDS, "the cancel heard")
        assert heard == [RECONNECTED, "cancel:7"]  # the progress event never reached it
    finally:
        listener.stop()
        store.close()


def test_projects_of_the_same_code_run_one_after_another_on_one_daemon(
    pg_url: str, daemons: Daemons
) -> None:
    daemons.start(pg_url, "reuser")
    with CeranubisExecutor(max_workers=1) as executor:
        first = executor.commit(cube, [(2,)], store=pg_url, queue=True)
        assert first.wait(PROJECT_SECONDS), daemons.logs()
        second = executor.commit(cube, [(3,)], store=pg_url, queue=True)  # its code, loaded
        assert second.wait(PROJECT_SECONDS), daemons.logs()
    assert (first.results(), second.results()) == ([((2,), 8)], [((3,), 27)])


def test_a_project_queued_on_sqlite_has_no_watcher(tmp_path: Path) -> None:
    with CeranubisExecutor(max_workers=1) as executor:
        project = executor.commit(cube, [(1,)], store=str(tmp_path / "s.sqlite"), queue=True)
    assert watch(project.store, project.id, lambda: None) is None  # SQLite: views poll
