"""Two real hosts with their own addresses (network namespaces), each with its own sshd.

Addresses are in 198.18.0.0/15 only (reserved for benchmarking), one /24 per host; names
carry this run's PID; everything is torn down in the fixture's ``finally``. Traffic goes only
to the namespaces this module creates.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ceranubis_jupyter import CeranubisExecutor, HostUnreachable
from ceranubis_jupyter.cluster.credit import CREDIT_PER_WORKER
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.link import SILENCE_TIMEOUT
from tests.fixtures_ssh import (
    TEST_PYTHON,
    OpenSSHServer,
    SSHHome,
    make_openssh_server,
    wait_until_ready,
)
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.test_ssh_failures import only_error
from tests.waiting import wait_for

# Numbers each fixture's aliases: other test modules make these hosts too (importing the
# fixture), and the ssh config keeps every alias it was given.
_ALIAS_SERIAL = itertools.count(1)
# Seconds any result may take here.
RESULT_TIMEOUT = 30.0
# Third octets tried for this run's /24s (198.18.N.0/24), starting at a PID-derived one.
OCTETS = range(10, 250)
# Tasks for three one-worker nodes: over their summed credit, so every node gets some.
TASKS_FOR_THREE = 3 * CREDIT_PER_WORKER + 12
# Length of the tasks running when a host is cut off: long enough to be caught mid-run.
PARTITION_TASK_SECONDS = 2.0


@dataclass
class NetnsHost:
    """A network namespace with a veth to us and an sshd inside."""

    netns: str
    link: str
    address: str
    alias: str
    server: OpenSSHServer

    @property
    def net_inode(self) -> str:
        """The namespace as ``/proc/<pid>/ns/net`` names it (``net:[inode]``)."""
        return f"net:[{os.stat(f'/run/netns/{self.netns}').st_ino}]"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _free_octets(count: int) -> list[int]:
    """Third octets of 198.18.N.0/24 networks that no interface or route uses yet."""
    used = subprocess.run(
        ["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True
    ).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    start = os.getpid() % len(OCTETS)
    ordered = [OCTETS[(start + i) % len(OCTETS)] for i in range(len(OCTETS))]
    free = [n for n in ordered if f"198.18.{n}." not in used]
    assert len(free) >= count, "no free /24 left in 198.18.0.0/16"
    return free[:count]


def _make_host(index: int, octet: int, home: SSHHome, directory: Path) -> NetnsHost:
    prefix = f"cj{os.getpid()}"
    netns, link = f"{prefix}h{index}", f"{prefix}v{index}"
    peer, address = f"{link}p", f"198.18.{octet}.2"
    _ip("netns", "add", netns)
    _ip("link", "add", link, "type", "veth", "peer", "name", peer)
    _ip("link", "set", peer, "netns", netns)
    _ip("addr", "add", f"198.18.{octet}.1/24", "dev", link)
    _ip("link", "set", link, "up")
    _ip("netns", "exec", netns, "ip", "addr", "add", f"{address}/24", "dev", peer)
    _ip("netns", "exec", netns, "ip", "link", "set", peer, "up")
    _ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
    server = make_openssh_server(directory, home, address, netns, also_listen=("127.0.0.1",))
    alias = f"{prefix}-h{index}-{next(_ALIAS_SERIAL)}"  # each fixture's own (config entries stay)
    home.add_alias(alias, address, server.port)
    home.trust(address, server.port, server.host_key.with_suffix(".pub"))
    return NetnsHost(netns, link, address, alias, server)


def _remove(prefix: str, index: int) -> None:
    for args in (("netns", "del", f"{prefix}h{index}"), ("link", "del", f"{prefix}v{index}")):
        subprocess.run(["ip", *args], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def netns_hosts(
    ssh_home: SSHHome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[NetnsHost]]:
    """Two namespace hosts, 198.18.A.2 and 198.18.B.2, each running its own sshd."""
    hosts: list[NetnsHost] = []
    octets = _free_octets(2)
    try:
        for index, octet in enumerate(octets, 1):
            directory = tmp_path_factory.mktemp(f"netns{index}")
            hosts.append(_make_host(index, octet, ssh_home, directory))
        yield hosts
    finally:
        for host in hosts:
            host.server.stop()
        for index in range(1, len(octets) + 1):
            _remove(f"cj{os.getpid()}", index)


@by_value
def whereabouts() -> tuple[int, str]:
    import os

    return os.getppid(), os.readlink("/proc/self/ns/net")


def test_work_lands_on_local_and_two_namespace_hosts(
    netns_hosts: list[NetnsHost], ssh_env: SSHHome
) -> None:
    remote = [Host(h.alias, python=TEST_PYTHON, workers=1) for h in netns_hosts]
    with CeranubisExecutor(["local", *remote], max_workers=1) as executor:
        tasks = TaskRecords(executor)
        wait_until_ready(executor, 3)
        futures = [executor.submit(whereabouts) for _ in range(TASKS_FOR_THREE)]
        results = [f.result(timeout=RESULT_TIMEOUT) for f in futures]
        hosts = tasks.hosts(futures)
        places = dict(zip(hosts, results, strict=True))
        done = {info.host: info.done for info in executor.hosts()}
    assert set(places) == {"local", *(h.alias for h in netns_hosts)}
    for host in netns_hosts:  # each alias's work really ran inside that host's namespace
        assert places[host.alias][1] == host.net_inode
    assert places["local"][1] == os.readlink("/proc/self/ns/net")
    assert sum(done.values()) == TASKS_FOR_THREE and all(done.values())


def test_proxyjump_from_the_ssh_config_is_honoured(
    netns_hosts: list[NetnsHost], ssh_env: SSHHome
) -> None:
    # 127.0.0.1:<port> is the first host's own loopback: reachable only by jumping there.
    jump = netns_hosts[0]
    alias = f"{jump.alias}-inner"
    ssh_env.add_alias(alias, "127.0.0.1", jump.server.port, ProxyJump=jump.alias)
    ssh_env.trust("127.0.0.1", jump.server.port, jump.server.host_key.with_suffix(".pub"))
    with CeranubisExecutor([Host(alias, python=TEST_PYTHON, workers=1)]) as executor:
        _, net = executor.submit(whereabouts).result(timeout=RESULT_TIMEOUT)
    assert net == jump.net_inode
    error = only_error([Host(f"127.0.0.1:{jump.server.port}")])  # the same, without the jump
    assert isinstance(error, HostUnreachable) and "cannot connect" in str(error)


@by_value
def nap_where(seconds: float) -> tuple[int, str]:
    import os
    import time

    time.sleep(seconds)
    return os.getppid(), os.readlink("/proc/self/ns/net")


def test_a_partitioned_host_loses_its_node_and_its_work_moves(
    netns_hosts: list[NetnsHost], ssh_env: SSHHome
) -> None:
    kept, cut = netns_hosts
    hosts = [Host(h.alias, python=TEST_PYTHON, workers=1) for h in netns_hosts]
    with CeranubisExecutor(hosts) as executor:
        tasks = TaskRecords(executor)
        wait_until_ready(executor, 2)
        node = psutil.Process({i.host: i.pid for i in executor.hosts()}[cut.alias])
        processes = [node, *node.children()]
        slow = []
        for _ in range(4):  # one at a time, so the credit-based dispatch alternates hosts
            slow.append(executor.submit(nap_where, PARTITION_TASK_SECONDS))
            wait_for(lambda: tasks.host(slow[-1]) is not None, RESULT_TIMEOUT, "the task sent")
        on_cut = [f for f, host in zip(slow, tasks.hosts(slow), strict=True) if host == cut.alias]
        assert on_cut, "no task reached the host before the cut; the test would prove nothing"
        # No FIN, no RST: a silent partition. The namespace's end goes down, so our route to
        # the host stays and reconnects die on the veth; downing our end would drop the
        # route and send them to the default gateway, off this machine.
        peer = ("netns", "exec", cut.netns, "ip", "link", "set", f"{cut.link}p")
        _ip(*peer, "down")
        try:
            results = [f.result(timeout=SILENCE_TIMEOUT + RESULT_TIMEOUT) for f in slow]
            _, alive = psutil.wait_procs(processes, timeout=SILENCE_TIMEOUT + 5)
        finally:
            _ip(*peer, "up")
    assert {net for _, net in results} == {kept.net_inode}  # cut host's share moved over
    assert not alive, "the partitioned node did not give up on its silent client"
