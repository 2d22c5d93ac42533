"""Heartbeats on the embedded default: short timeouts, and a frozen node.

A node that is idle must never look lost, however short the heartbeat timeout (both ends
beat more often when it is short). A node that freezes (SIGSTOP: alive, connected, silent)
must be declared lost within the timeout, dropped (killed, not waited for), and replaced,
and the task it held must finish on its successor.
"""

from __future__ import annotations

import os
import signal
import time

import psutil

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.link import HostInfo
from tests.conftest import wait_until_gone
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import wait_for

# Seconds any single result may take here.
RESULT_TIMEOUT = 30.0
# Slack over a heartbeat timeout for detection (loop ticks, a loaded CI machine).
DETECTION_SLACK = 1.0


@by_value
def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def only_host(executor: CeranubisExecutor) -> HostInfo:
    infos = executor.hosts()
    assert len(infos) <= 1
    return infos[0] if infos else HostInfo("local")


def test_idle_nodes_survive_a_heartbeat_timeout_shorter_than_a_second() -> None:
    timeout = 0.5
    with CeranubisExecutor(max_workers=1, heartbeat_timeout=timeout) as executor:
        assert executor.submit(nap, 0.0).result(timeout=RESULT_TIMEOUT) == 0.0
        node = only_host(executor).pid
        link = executor.scheduler.links[0]
        idle_since = time.monotonic()
        wait_for(  # idle: only heartbeats keep the node alive; they still come
            lambda: link.last_heard > idle_since + 6 * timeout,
            RESULT_TIMEOUT,
            "the idle node heard from six timeouts on",
        )
        assert (only_host(executor).state, only_host(executor).pid) == ("ready", node)
        assert only_host(executor).error == ""
        assert executor.submit(nap, 0.0).result(timeout=RESULT_TIMEOUT) == 0.0


def test_a_frozen_node_is_detected_dropped_and_replaced() -> None:
    timeout = 1.0
    with CeranubisExecutor(max_workers=1, heartbeat_timeout=timeout) as executor:
        tasks = TaskRecords(executor)
        wait_for(lambda: only_host(executor).state == "ready", RESULT_TIMEOUT, "node ready")
        frozen = psutil.Process(only_host(executor).pid)
        tree = {frozen.pid}
        future = executor.submit(nap, 1.5)
        wait_for(lambda: only_host(executor).busy == 1, RESULT_TIMEOUT, "the task running")
        tree |= {child.pid for child in frozen.children()}
        os.kill(frozen.pid, signal.SIGSTOP)
        errors: list[str] = []

        def lost() -> bool:
            info = only_host(executor)
            errors.append(info.error)
            return info.state != "ready"

        detected = wait_for(lost, timeout + DETECTION_SLACK + 5, "the frozen node declared lost")
        assert "(heartbeat timeout 1 s)" in errors[-1], errors[-1]  # by its silence
        assert future.result(timeout=RESULT_TIMEOUT) == 1.5
        assert only_host(executor).pid != frozen.pid
        assert tasks.of(future).attempts == 1, "lost once with its node, then re-run"
        assert not wait_until_gone(tree, timeout=5.0), "the frozen node was not dropped"
    print(f"frozen node detected after {detected:.2f} s")
