"""``ceranubis run --queue``, ``--detach`` and ``ceranubis cancel``, as subprocesses, with a
node daemon (a real process) on a SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ceranubis_jupyter import Project
from ceranubis_jupyter.projects.stores import open_store
from tests.cli_support import Workdir, make_workdir
from tests.queue_helpers import Daemons


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    return make_workdir(tmp_path)


def test_run_queue_is_served_by_a_daemon_and_writes_the_output(
    workdir: Workdir, daemons: Daemons
) -> None:
    daemons.start(str(workdir.store), "d1")
    done = workdir.run("run", "work.py:square", "--range", "40", "--queue", "--name", "q",
                       "-o", "out.json", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr + daemons.logs()
    assert "queued q" in done.stdout
    assert json.loads((workdir.path / "out.json").read_text()) == [
        {"args": [i], "result": i * i} for i in range(40)
    ]
    project = Project.load("q", str(workdir.store))
    assert project.state == "done"
    store = open_store(str(workdir.store))
    try:
        assert {row.host for row in store.arguments(project.id, ["done"])} == {"d1"}
    finally:
        store.close()


def test_detach_returns_at_once_and_cancel_stops_the_queued_project(workdir: Workdir) -> None:
    queued = workdir.run("run", "work.py:square", "--range", "5", "--queue", "--detach",
                         "--name", "later", "--priority", "3")  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    project = Project.load("later", str(workdir.store))
    assert project.status() == (0, 5)  # no daemon: nothing ran, nothing here ran it
    cancelled = workdir.run("cancel", "later")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "later: cancelled" in cancelled.stdout
    assert Project.load("later", str(workdir.store)).state == "cancelled"


def test_cancel_of_an_unknown_project_is_one_line(workdir: Workdir) -> None:
    missing = workdir.run("cancel", "nothing-here")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "nothing-here" in missing.stderr
