"""No stray processes: nodes and workers end with the executor, and with a killed client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from ceranubis_jupyter import CeranubisExecutor
from tests.conftest import wait_until_gone
from tests.remote import by_value
from tests.waiting import marked_nap, wait_for

# The client gone, its nodes must be gone this soon (the bound).
CLIENT_DEATH_BOUND = 5.0


@by_value
def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def node_tree(executor: CeranubisExecutor) -> set[int]:
    """PIDs of every node of the executor and of their workers."""
    pids: set[int] = set()
    for info in executor.hosts():
        if not info.pid:
            continue  # not started yet
        node = psutil.Process(info.pid)
        pids.add(node.pid)
        pids.update(child.pid for child in node.children(recursive=True))
    return pids


def test_shutdown_leaves_no_process() -> None:
    executor = CeranubisExecutor(max_workers=2)
    assert list(executor.map(nap, [0.05] * 4)) == [0.05] * 4
    tree = node_tree(executor)
    assert len(tree) == 3, f"one node and two workers expected, got {tree}"
    executor.shutdown(wait=True)
    assert not wait_until_gone(tree, timeout=1.0)


def test_shutdown_with_running_work_cancelled_leaves_no_process(tmp_path: Path) -> None:
    executor = CeranubisExecutor(max_workers=2)
    markers = [tmp_path / f"running-{i}" for i in range(2)]
    futures = [executor.submit(marked_nap, str(marker), 30.0) for marker in markers]
    wait_for(lambda: all(m.exists() for m in markers), 20, "both tasks on their workers")
    tree = node_tree(executor)
    assert len(tree) == 3, f"one node and two workers expected, got {tree}"
    executor.shutdown(wait=True, stop_running=True)
    assert all(f.done() for f in futures)
    assert all(f.cancelled() or f.exception() for f in futures), "stopped, not awaited"
    assert not wait_until_gone(tree, timeout=1.0)


CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import psutil
    from ceranubis_jupyter import CeranubisExecutor

    def nap(seconds):
        import time
        time.sleep(seconds)

    ex = CeranubisExecutor(max_workers=2)
    futures = [ex.submit(nap, 60) for _ in range(4)]
    me = psutil.Process()
    deadline = time.monotonic() + 30
    while len(me.children(recursive=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the node and both of its workers
    print(json.dumps([p.pid for p in me.children(recursive=True)]), flush=True)
    time.sleep(120)
    """
)


def test_nodes_die_within_bound_when_the_client_is_sigkilled() -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        tree = set(json.loads(line))
        assert len(tree) >= 3, f"node and workers expected under the client, got {tree}"
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
    left = wait_until_gone(tree, timeout=CLIENT_DEATH_BOUND)
    assert not left, f"still alive {CLIENT_DEATH_BOUND} s after the client died: {left}"
