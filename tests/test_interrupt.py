"""A kernel interrupt during a waiting ``%%ceranubis`` cell cancels the project cleanly:
pending arguments cancelled, running ones stopped (their workers killed), finished
results kept. Real kernel (jupyter_client), real SIGINT, real nodes.

Each task writes ``start-N`` (holding its worker's PID) when it begins and ``end-N`` just
before it returns; once the workers of the tasks stopped mid-way are gone, no new ``end-``
file may have appeared (nothing kept running) and the ``end-`` files are exactly the
project's finished arguments.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.jupyter_support import execute, reply_of, running_kernel
from tests.waiting import wait_for

TASKS = 40
TASK_SECONDS = 1.0
# Seconds for a few tasks to finish, for a worker to end, for the kernel to settle.
DEADLINE = 60.0

CELL = f"""%%ceranubis marked over [(i,) for i in range({TASKS})] --name interrupted --workers 2
import os, pathlib, time
def marked(i):
    pid = pathlib.Path(MARKS, f".pid-{{i}}")
    pid.write_text(str(os.getpid()))
    pid.rename(pathlib.Path(MARKS, f"start-{{i}}"))  # whole, with its worker's PID
    time.sleep({TASK_SECONDS})
    pathlib.Path(MARKS, f"end-{{i}}").touch()
    return i
"""

REPORT = """
import json
from ceranubis_jupyter.jupyter.session import POOL
p = interrupted
print(json.dumps({"state": p.state, "counts": p.counts(),
                  "done": sorted(a[0] for a, _ in p.results()),
                  "busy": [h.busy for h in POOL.get(None, 2).hosts()]}))
"""


def marks(directory: Path, kind: str) -> set[int]:
    return {int(path.name.split("-")[1]) for path in directory.glob(f"{kind}-*")}


def stopped_workers_gone(directory: Path) -> bool:
    """Whether every worker of a task started and not ended is gone (none can end it now)."""
    for task in marks(directory, "start") - marks(directory, "end"):
        text = (directory / f"start-{task}").read_text()
        try:
            if psutil.Process(int(text)).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def report(client: Any) -> dict[str, Any]:
    """The project and pool as the kernel sees them (see REPORT)."""
    reply, text = execute(client, REPORT)
    assert reply["status"] == "ok", reply
    state: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return state


@pytest.mark.timeout(180)
def test_interrupt_cancels_the_project_and_keeps_results(
    tmp_path: Path, jupyter_env: dict[str, str]
) -> None:
    directory = tmp_path / "marks"
    directory.mkdir()
    with running_kernel(jupyter_env, tmp_path) as (manager, client):
        execute(client, f"%load_ext ceranubis_jupyter\nMARKS = {str(directory)!r}")
        msg_id = client.execute(CELL)
        wait_for(lambda: len(marks(directory, "end")) >= 4, DEADLINE, "a few tasks finished")
        manager.interrupt_kernel()
        reply, text = reply_of(client, msg_id, 60)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        assert "cancelled" in text, (reply, text)
        ended_at_interrupt = marks(directory, "end")
        # Once the workers of the stopped tasks are gone, no task can end any more.
        wait_for(lambda: stopped_workers_gone(directory), DEADLINE, "stopped workers gone")
        wait_for(lambda: not any(report(client)["busy"]), DEADLINE, "no worker busy")
        state = report(client)
    counts = state["counts"]
    assert state["state"] == "cancelled", state
    assert counts["running"] == 0 and counts["pending"] == 0, counts
    assert counts["done"] >= 4 and counts["cancelled"] > 0, counts
    assert counts["done"] + counts["cancelled"] + counts.get("failed", 0) == TASKS, counts
    assert set(state["done"]) == marks(directory, "end"), state  # results kept, all of them
    assert marks(directory, "end") == ended_at_interrupt, "a task went on after the interrupt"
    assert marks(directory, "start") - marks(directory, "end"), "no task was stopped mid-way"
    assert not any(state["busy"]), state


def cancel_button_comm(client: Any, msg_id: str, timeout: float = 30) -> str:
    """The comm id of the Cancel button the cell ``msg_id`` displayed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = client.get_iopub_msg(timeout=timeout)
        content = msg["content"]
        if msg["msg_type"] == "comm_open" and msg["parent_header"].get("msg_id") == msg_id:
            state = content.get("data", {}).get("state", {})
            # the CSS class comes in a later update; the model opens with its description
            if state.get("_model_name") == "ButtonModel" and state.get("description") == "Cancel":
                comm_id: str = content["comm_id"]
                return comm_id
    raise AssertionError("the cell showed no Cancel button")


@pytest.mark.timeout(180)
def test_cancel_button_works_while_the_cell_waits(
    tmp_path: Path, jupyter_env: dict[str, str]
) -> None:
    directory = tmp_path / "marks"
    directory.mkdir()
    with running_kernel(jupyter_env, tmp_path) as (_manager, client):
        execute(client, f"%load_ext ceranubis_jupyter\nMARKS = {str(directory)!r}")
        msg_id = client.execute(CELL)
        comm_id = cancel_button_comm(client, msg_id)
        wait_for(lambda: len(marks(directory, "end")) >= 4, DEADLINE, "a few tasks finished")
        click = {"method": "custom", "content": {"event": "click"}}
        client.shell_channel.send(
            client.session.msg("comm_msg", {"comm_id": comm_id, "data": click})
        )
        reply, _text = reply_of(client, msg_id, 60)
        ended_at_reply = marks(directory, "end")
        state = report(client)
    assert reply["status"] == "ok", reply
    # the click ended the wait: the cell returned with work not done (not after it all)
    assert len(ended_at_reply) < TASKS, ended_at_reply
    assert state["state"] == "cancelled", state
    assert state["counts"]["running"] == 0 and state["counts"]["cancelled"] > 0, state
    assert set(state["done"]) == marks(directory, "end"), state
