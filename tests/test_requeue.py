"""A lost node's tasks: the one that may have been running uses up a retry, the rest do not."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor, NodeLost
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import marked_nap, wait_for


@by_value
def nap(seconds: float, value: Any = None) -> Any:
    import time

    time.sleep(seconds)
    return value


def test_queued_tasks_of_a_lost_node_keep_their_retries(tmp_path: Path) -> None:
    marker = tmp_path / "running"
    with CeranubisExecutor(max_workers=1, retries=0) as executor:
        tasks = TaskRecords(executor)
        executor.submit(nap, 0.0).result(timeout=30)
        running = executor.submit(marked_nap, str(marker), 30.0, "running")
        queued = [executor.submit(nap, 0.01, i) for i in range(3)]
        link = executor.scheduler.links[0]
        wait_for(lambda: len(link.inflight) >= 2, 20, "running + queued on the node")
        wait_for(marker.exists, 20, "the first task on the worker")
        os.kill(executor.hosts()[0].pid, signal.SIGKILL)
        with pytest.raises(NodeLost, match=r"lost with its node 1 times"):
            running.result(timeout=30)
        assert [f.result(timeout=30) for f in queued] == [0, 1, 2]
        assert all(tasks.of(f).attempts == 0 for f in queued)
