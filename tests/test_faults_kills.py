"""Nothing lost: a project over a real OpenSSH host survives SIGKILLs of its machinery.

While the project runs, the test SIGKILLs a worker (three times), the node supervisor, and
the sshd session process that carries the node. After each fault the work must go on, and
at the end the store must hold exactly one ``done`` row per argument with the right value.
And ``retries`` bounds it: a task that loses its node once more than allowed fails alone.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import psutil

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.link import HostInfo
from ceranubis_jupyter.errors import NodeLost
from ceranubis_jupyter.projects.commit import commit_function
from ceranubis_jupyter.projects.project import Project
from ceranubis_jupyter.projects.rows import decode
from tests.fixtures_ssh import OPENSSH_ALIAS, TEST_PYTHON, OpenSSHServer, SSHHome
from tests.remote import by_value
from tests.waiting import wait_for

# Arguments of the project: enough work (0.05 s each on two workers) to outlast the faults.
ARGUMENTS = 400
# Seconds a node may take to come back after its supervisor or session is killed.
REJOIN_TIMEOUT = 20.0
# Results that must arrive after a fault before the next one (the work really goes on).
PROGRESS_STEP = 5
# Seconds the whole project may take.
PROJECT_TIMEOUT = 90.0


@by_value
def slow_square(x: int) -> int:
    import time

    time.sleep(0.05)
    return x * x + 1


def only_host(executor: CeranubisExecutor) -> HostInfo:
    """The executor's one host (a placeholder until its link exists)."""
    infos = executor.hosts()
    assert len(infos) <= 1
    return infos[0] if infos else HostInfo("?")


def ready_node(executor: CeranubisExecutor, old_pid: int = 0) -> psutil.Process:
    """The host's node once it is ready (a new one if ``old_pid`` is given)."""
    took = wait_for(
        lambda: only_host(executor).state == "ready" and only_host(executor).pid != old_pid,
        REJOIN_TIMEOUT,
        "the node is ready again",
    )
    if old_pid:
        print(f"node {old_pid} replaced by {only_host(executor).pid} in {took:.2f} s")
    return psutil.Process(only_host(executor).pid)


def progress(project: Project, steps: int = PROGRESS_STEP) -> None:
    """Wait until ``steps`` more arguments are done (and the project is not yet finished)."""
    target = project.status()[0] + steps
    wait_for(lambda: project.status()[0] >= target, REJOIN_TIMEOUT, f"{steps} more results")
    assert project.status()[0] < ARGUMENTS, "the project ended before the faults did"


def kill_a_worker(node: psutil.Process) -> int:
    """SIGKILL one of the node's workers (they are always busy here); returns its PID."""
    wait_for(lambda: len(node.children()) == 2, REJOIN_TIMEOUT, "two workers")
    victim = node.children()[0].pid
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: victim not in {c.pid for c in node.children()} and len(node.children()) == 2,
        REJOIN_TIMEOUT,
        "the dead worker replaced",
    )
    return victim


def stored_rows(path: Path, project_id: int) -> list[tuple[int, str, bytes, int]]:
    """(position, state, result, attempts) of every argument row, read straight from SQLite."""
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT position, state, result, attempts FROM arguments WHERE project = ? "
            "ORDER BY position",
            (project_id,),
        ).fetchall()


def test_project_survives_sigkills_of_workers_node_and_sshd_session(
    openssh_server: OpenSSHServer, ssh_env: SSHHome, tmp_path: Path
) -> None:
    store = tmp_path / "projects.sqlite"
    host = Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=2)
    args = [(x,) for x in range(ARGUMENTS)]
    with CeranubisExecutor([host], retries=8) as executor:
        node = ready_node(executor)
        project = commit_function(executor, slow_square, args, store=str(store), name="kills")
        progress(project)
        killed_workers = []
        for _ in range(3):
            killed_workers.append(kill_a_worker(node))
            progress(project)
        node.send_signal(signal.SIGKILL)
        node = ready_node(executor, old_pid=node.pid)
        progress(project)
        session = node.parent()
        assert session is not None and session.name() == "sshd", "the node runs under sshd"
        assert session.ppid() != 1 and psutil.Process(session.ppid()).name() == "sshd"
        session.send_signal(signal.SIGKILL)
        ready_node(executor, old_pid=node.pid)
        progress(project)
        assert project.wait(PROJECT_TIMEOUT), "the project did not finish"
    assert len(killed_workers) == 3
    assert project.state == "done"
    rows = stored_rows(store, project.id)
    assert [position for position, *_ in rows] == list(range(ARGUMENTS)), "one row per argument"
    assert all(state == "done" for _, state, _, _ in rows)
    assert [decode(result) for _, _, result, _ in rows] == [x * x + 1 for x in range(ARGUMENTS)]
    retried = [position for position, _, _, attempts in rows if attempts > 1]
    assert retried, "the faults hit no running task"


@by_value
def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_retries_bound_how_often_a_task_may_lose_its_node() -> None:
    with CeranubisExecutor(max_workers=1, retries=1) as executor:
        future = executor.submit(nap, 60.0)
        for attempt in range(2):  # the first loss is retried, the second is final
            wait_for(lambda: only_host(executor).busy == 1, REJOIN_TIMEOUT, "the task running")
            node = only_host(executor).pid
            os.kill(node, signal.SIGKILL)
            if attempt == 0:
                ready_node(executor, old_pid=node)
        error = future.exception(timeout=REJOIN_TIMEOUT)
        assert isinstance(error, NodeLost), error
        assert error.host == "local" and "lost with its node 2 times" in str(error)
        assert executor.submit(nap, 0.0).result(timeout=REJOIN_TIMEOUT) == 0.0
