"""A silent partition: one of two namespace hosts loses its link mid-run, then gets it back.

The cut (our veth end goes down) sends no FIN and no RST: only the heartbeats can tell. The
client must declare the host lost within the heartbeat timeout, finish its tasks on the
other host, and take the host back when the link heals; on the cut host, the node must
give up on its silent client and exit by itself. Tasks of the cut host's group (with a
higher priority) can run nowhere else: they must wait out the partition, not fail.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

import psutil

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.executor import NodeExecutor
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.link import HEARTBEAT_INTERVAL, HostInfo
from ceranubis_jupyter.node.supervisor import LOAD_INTERVAL
from tests.fixtures_faults import PartitionHost
from tests.fixtures_ssh import TEST_PYTHON, SSHHome
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import wait_for

# The executor's heartbeat timeout here (seconds), short to keep the test short.
HEARTBEAT_TIMEOUT = 3.0
# Slack on top of a timeout for the loop ticks that notice it (client and node).
TICK_SLACK = HEARTBEAT_INTERVAL + 1.0
# Seconds a healed host may take to be ready again (capped restart backoff + connect).
REJOIN_TIMEOUT = 25.0
# Seconds any batch of results may take.
RESULT_TIMEOUT = 60.0
# Tasks of 0.1 s: the first batch outlasts the cut and its detection; the second is for
# the healed host to take a share of.
FIRST_BATCH = 200
SECOND_BATCH = 80
# The cut host's group, and the tasks only it may run.
ISLAND = "island"
ISLAND_TASKS = 4


@by_value
def square_where(x: int) -> tuple[int, str]:
    import os
    import time

    time.sleep(0.1)
    return x * x + 1, os.readlink("/proc/self/ns/net")


def info(executor: NodeExecutor, host: PartitionHost) -> HostInfo:
    """The executor's view of ``host`` (a placeholder until its link exists)."""
    found = [i for i in executor.hosts() if i.host == host.alias]
    return found[0] if found else HostInfo(host.alias)


def node_tree(pid: int) -> list[psutil.Process]:
    node = psutil.Process(pid)
    return [node, *node.children(recursive=True)]


def check_results(futures: list[Future[Any]]) -> list[str]:
    """Every result correct; returns the namespace each task ran in."""
    values = [f.result(timeout=RESULT_TIMEOUT) for f in futures]
    assert [value for value, _ in values] == [x * x + 1 for x in range(len(futures))]
    return [net for _, net in values]


def test_partition_is_detected_requeued_and_healed(
    partition_hosts: list[PartitionHost], ssh_env: SSHHome
) -> None:
    cut, other = partition_hosts
    hosts = [
        Host(cut.alias, python=TEST_PYTHON, workers=2, group=ISLAND),
        Host(other.alias, python=TEST_PYTHON, workers=2),
    ]
    with CeranubisExecutor(hosts, heartbeat_timeout=HEARTBEAT_TIMEOUT) as executor:
        wait_for(
            lambda: all(info(executor, h).state == "ready" for h in partition_hosts),
            REJOIN_TIMEOUT,
            "both hosts ready",
        )
        stranded = node_tree(info(executor, cut).pid)
        assert _netns(stranded[0].pid) == cut.net_inode, "the node runs inside the namespace"
        tasks = TaskRecords(executor)
        futures, island = start_work(tasks, cut, other)
        on_cut, done_there = cut_off(tasks, cut, stranded, futures)
        nets = check_results(futures)
        # In flight there at the cut: done there before the loss (results on their way),
        # or re-queued to the other host and run there.
        moved = [f for f in on_cut if f not in done_there]
        assert moved, "no task in flight on the cut host was re-queued"
        assert tasks.hosts(moved) == [other.alias] * len(moved), "re-queued to the other host"
        assert all(nets[futures.index(f)] == other.net_inode for f in moved)
        assert all(nets[futures.index(f)] == cut.net_inode for f in done_there)
        assert not any(f.done() for f in island), "group tasks must wait for their host"
        heal_and_share(executor, cut, other)
        assert set(check_results(island)) == {cut.net_inode}, "group tasks ran on their host"


def start_work(
    tasks: TaskRecords, cut: PartitionHost, other: PartitionHost
) -> tuple[list[Future[Any]], list[Future[Any]]]:
    """The first batch on both hosts, then urgent tasks only the cut host may run."""
    executor = tasks.executor
    futures = [executor.submit(square_where, x) for x in range(FIRST_BATCH)]
    wait_for(
        lambda: min(info(executor, h).done for h in (cut, other)) >= 3,
        RESULT_TIMEOUT,
        "both hosts doing work",
    )
    urgent = executor.options(group=ISLAND, priority=1)
    island = [urgent.submit(square_where, x) for x in range(ISLAND_TASKS)]
    wait_for(lambda: cut.alias in tasks.hosts(island), RESULT_TIMEOUT, "island task sent")
    return futures, island


def cut_off(
    tasks: TaskRecords,
    cut: PartitionHost,
    stranded: list[psutil.Process],
    futures: list[Future[Any]],
) -> tuple[list[Future[Any]], set[Future[Any]]]:
    """Cut the host (the node must exit too); returns the futures in flight there at the
    cut, and those of them done when the client declared the host lost."""
    executor = tasks.executor
    cut.cut()
    hosts = tasks.hosts(futures)
    on_cut = [
        f for f, host in zip(futures, hosts, strict=True) if host == cut.alias and not f.done()
    ]
    done_there: set[Future[Any]] = set()

    def lost() -> bool:
        if info(executor, cut).state == "ready":
            return False
        # The loop handled whatever the host sent before it declared it lost.
        done_there.update(f for f in on_cut if f.done())
        return True

    detected = wait_for(lost, HEARTBEAT_TIMEOUT + TICK_SLACK + 10, "the partition detected")
    print(f"partition detected after {detected:.2f} s ({info(executor, cut).error})")
    gone = wait_for(
        lambda: not any(_alive(p) for p in stranded),
        HEARTBEAT_TIMEOUT + LOAD_INTERVAL + TICK_SLACK,
        "the stranded node and its workers exit by themselves",
    )
    print(f"stranded node {stranded[0].pid} and workers gone {gone:.2f} s after detection")
    return on_cut, done_there


def heal_and_share(executor: CeranubisExecutor, cut: PartitionHost, other: PartitionHost) -> None:
    """Heal the link: the host must be ready again and take a share of new work."""
    done_before = info(executor, cut).done
    cut.heal()
    rejoined = wait_for(
        lambda: info(executor, cut).state == "ready", REJOIN_TIMEOUT, "the healed host rejoins"
    )
    print(f"healed host ready again after {rejoined:.2f} s")
    second = [executor.submit(square_where, x) for x in range(SECOND_BATCH)]
    nets = check_results(second)
    assert info(executor, cut).done > done_before, "the healed host took no work"
    assert cut.net_inode in nets and other.net_inode in nets


def _netns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
