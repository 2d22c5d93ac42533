"""Fixtures for the fault tests: partitionable namespace hosts and bounded waiting.

A :class:`PartitionHost` is a network namespace with a veth pair to us and a real OpenSSH
sshd inside, on its own /24 in 198.19.0.0/16 (inside 198.18.0.0/15, the benchmarking range;
the SSH area's namespace hosts use 198.18.0.0/16, so the two never pick the same network).
``cut()`` takes our end of the veth down: no FIN, no RST, the packets just stop, as when a
cable is pulled. The kernel then drops the /24's route, and packets for the host would take
the default route off this machine; a standing ``unreachable`` route of our own for the /24
(a higher metric, so it only applies while the link is down) keeps them here. Names carry
this run's PID; teardown removes every namespace, link and route, and ends the sshd and
the sessions it forked, by PID.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.fixtures_ssh import (
    SSHD,
    OpenSSHServer,
    SSHHome,
    _sshd_config,
    free_port,
    keygen,
    make_openssh_server,
    wait_for_port,
)
from tests.waiting import wait_for

# Third octets tried for this run's networks (198.19.N.0/24), from a PID-derived start.
OCTETS = range(10, 250)
# Metric of the standing ``unreachable`` route for a host's /24 (the link's own route is 0).
FALLBACK_METRIC = "4000"
# Seconds an ``ip`` command may take.
IP_TIMEOUT = 30.0


def ip(*args: str) -> None:
    """Run ``ip`` with ``args``; fail loudly."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_TIMEOUT)


@dataclass
class PartitionHost:
    """A namespace host: veth ``link`` (our end) to ``address``, sshd inside as ``alias``."""

    netns: str
    link: str
    address: str
    alias: str
    server: OpenSSHServer

    @property
    def net_inode(self) -> str:
        """The namespace as ``/proc/<pid>/ns/net`` names it (``net:[inode]``)."""
        return f"net:[{os.stat(f'/run/netns/{self.netns}').st_ino}]"

    def cut(self) -> None:
        """Pull the cable: our end of the veth goes down (a silent partition)."""
        ip("link", "set", self.link, "down")
        route = subprocess.run(["ip", "route", "get", self.address], capture_output=True, text=True)
        assert route.returncode != 0 or "unreachable" in route.stdout, (
            f"{self.address} would leave this machine: {route.stdout}{route.stderr}"
        )

    def heal(self) -> None:
        """Plug it back in."""
        ip("link", "set", self.link, "up")


def _free_octets(count: int) -> list[int]:
    """Third octets of 198.19.N.0/24 networks no interface or route uses yet."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    start = (os.getpid() * 7) % len(OCTETS)
    ordered = [OCTETS[(start + i) % len(OCTETS)] for i in range(len(OCTETS))]
    free = [n for n in ordered if f"198.19.{n}." not in used]
    assert len(free) >= count, "no free /24 left in 198.19.0.0/16"
    return free[:count]


def _names(index: int) -> tuple[str, str]:
    prefix = f"cjf{os.getpid()}"
    return f"{prefix}h{index}", f"{prefix}v{index}"


def _make_host(index: int, octet: int, home: SSHHome, directory: Path) -> PartitionHost:
    netns, link = _names(index)
    peer, address = f"{link}p", f"198.19.{octet}.2"
    ip("netns", "add", netns)
    ip("link", "add", link, "type", "veth", "peer", "name", peer)
    ip("link", "set", peer, "netns", netns)
    ip("addr", "add", f"198.19.{octet}.1/24", "dev", link)
    ip("link", "set", link, "up")
    ip("netns", "exec", netns, "ip", "addr", "add", f"{address}/24", "dev", peer)
    ip("netns", "exec", netns, "ip", "link", "set", peer, "up")
    ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
    ip("route", "add", "unreachable", f"198.19.{octet}.0/24", "metric", FALLBACK_METRIC)
    server = make_openssh_server(directory, home, address, netns)
    alias = f"cjf{os.getpid()}-h{index}"
    home.add_alias(alias, address, server.port)
    home.trust(address, server.port, server.host_key.with_suffix(".pub"))
    return PartitionHost(netns, link, address, alias, server)


def _remove(index: int, octet: int) -> None:
    netns, link = _names(index)
    fallback = ("route", "del", "unreachable", f"198.19.{octet}.0/24", "metric", FALLBACK_METRIC)
    for args in (("netns", "del", netns), ("link", "del", link), fallback):
        subprocess.run(["ip", *args], capture_output=True, timeout=IP_TIMEOUT)


@pytest.fixture(scope="module")
def partition_hosts(
    ssh_home: SSHHome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[PartitionHost]]:
    """Two namespace hosts on 198.19.A.2 and 198.19.B.2, each with its own sshd."""
    hosts: list[PartitionHost] = []
    octets = _free_octets(2)
    try:
        for index, octet in enumerate(octets, 1):
            directory = tmp_path_factory.mktemp(f"partition{index}")
            hosts.append(_make_host(index, octet, ssh_home, directory))
        yield hosts
    finally:
        for host in hosts:
            host.server.stop()  # ends the sessions it forked, stranded ones included
        for index, octet in enumerate(octets, 1):
            _remove(index, octet)


# ---------------------------------------------------------------------- a PID namespace

# The namespace's PID 1: reaps every orphan (as init does), so ended processes vanish.
_INIT = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.05)
"""


@dataclass
class PidNamespace:
    """A PID and mount namespace (its own /proc): what runs inside sees only its own.

    Tests that end processes by what /proc shows (``kill-strays``) run there, so they can
    never touch a process of another test run on this machine. Ending ``unshare`` ends
    the namespace's PID 1, and the kernel then kills everything inside.
    """

    unshare: subprocess.Popen[bytes]
    init_pid: int
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def command(self, *args: str) -> list[str]:
        """``args`` as a command run inside the namespace."""
        return ["nsenter", "-t", str(self.init_pid), "-p", "-m", "--", *args]

    def popen(self, *args: str, **options: object) -> subprocess.Popen[str]:
        """Start ``args`` inside the namespace (text mode)."""
        process = subprocess.Popen(self.command(*args), text=True, **options)  # type: ignore[call-overload]
        self.started.append(process)
        return process  # type: ignore[no-any-return]

    def end(self) -> None:
        """End the namespace: first the nsenters we started (a stopped one would never reap
        its child, and the namespace cannot end with an unreaped zombie), then PID 1."""
        for process in self.started:
            process.kill()
            process.wait(timeout=10)
        self.unshare.kill()
        self.unshare.wait(timeout=10)

    def outer_pid(self, inner: int) -> int:
        """Our PID for the process that is ``inner`` inside the namespace."""
        target = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        for name in os.listdir("/proc"):
            if name.isdigit() and _inner_pid(int(name), target) == inner:
                return int(name)
        raise LookupError(f"no process {inner} in the namespace")


def _inner_pid(pid: int, namespace: str) -> int | None:
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
            return None
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class NamespaceHost:
    """An ssh alias whose sshd (and every node it starts) lives in ``namespace``."""

    alias: str
    namespace: PidNamespace


@contextlib.contextmanager
def new_pid_namespace() -> Iterator[PidNamespace]:
    """A fresh PID namespace with a reaping PID 1; everything in it ends on exit."""
    unshare = subprocess.Popen(
        ["unshare", "--pid", "--mount-proc", "--kill-child", sys.executable, "-c", _INIT],
        stdin=subprocess.DEVNULL,
    )
    init: list[psutil.Process] = []
    namespace = None
    try:
        wait_for(lambda: psutil.Process(unshare.pid).children(), 10, "the namespace's PID 1")
        init = psutil.Process(unshare.pid).children()
        namespace = PidNamespace(unshare, init[0].pid)
        yield namespace
    finally:
        if namespace is not None:
            namespace.end()
        unshare.kill()
        unshare.wait(timeout=10)
        # PID 1 gone, the kernel ends everything inside; a zombie is gone for our purpose.
        wait_for(lambda: not any(_running(p) for p in init), 10, "the namespace ended")


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def pid_namespace() -> Iterator[PidNamespace]:
    """A PID namespace of the test's own (the client machine's view of processes)."""
    with new_pid_namespace() as namespace:
        yield namespace


@pytest.fixture
def namespace_sshd(pid_namespace: PidNamespace, ssh_env: SSHHome, tmp_path: Path) -> Iterator[str]:
    """A real sshd inside ``pid_namespace`` (its sessions run there); yields its alias."""
    directory = tmp_path / "ns-sshd"
    directory.mkdir(mode=0o700)
    keygen(directory / "host_key")
    authorized = directory / "authorized_keys"
    authorized.write_text(ssh_env.key.with_suffix(".pub").read_text())
    (directory / "cache").mkdir()
    server = OpenSSHServer(
        directory, "127.0.0.1", free_port(), directory / "host_key", directory / "cache"
    )
    (directory / "sshd_config").write_text(_sshd_config(server, authorized))
    log = str(directory / "sshd.log")
    with new_pid_namespace() as namespace:
        sshd = namespace.popen(SSHD, "-D", "-f", str(directory / "sshd_config"), "-E", log)
        try:
            wait_for_port("127.0.0.1", server.port)
            alias = f"cjs{os.getpid()}-{server.port}"
            ssh_env.add_alias(alias, "127.0.0.1", server.port)
            ssh_env.trust("127.0.0.1", server.port, directory / "host_key.pub")
            yield NamespaceHost(alias, namespace)
        finally:
            sshd.kill()  # nsenter; the sshd itself ends with the namespace
            sshd.wait(timeout=10)
