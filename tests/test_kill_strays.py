"""``ceranubis kill-strays``: it ends exactly the nodes whose client died, and nothing else.

Everything runs in PID namespaces of the test's own: one for this machine (clients, the
command itself, local nodes), one for the "remote" host (its sshd and the nodes it starts),
so the command sees, and could end, only this test's processes, as on separate machines.

A stray is made honestly: a client starts nodes (one local, one over SSH), the nodes hang
(SIGSTOP: they can no longer notice that their input closed) and the client is SIGKILLed.
A second client stays alive; two decoys carry the node marker but are not ours to end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from ceranubis_jupyter.cluster.strays import is_stray
from ceranubis_jupyter.cluster.transport import MACHINE_ID_LENGTH, NODE_MARKER, machine_id
from tests.fixtures_faults import NamespaceHost, PidNamespace
from tests.fixtures_ssh import TEST_PYTHON, SSHHome, free_port
from tests.waiting import wait_for

# Seconds a client gets to bring its nodes up, and the command to finish.
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 60.0
# Workers of each client's local node and of its node on the SSH host.
LOCAL_WORKERS, REMOTE_WORKERS = 2, 1

CLIENT = """
import json, sys, time
from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
hosts = [Host("local", workers=@LOCAL@), Host(sys.argv[1], python=sys.argv[2], workers=@REMOTE@)]
executor = CeranubisExecutor(hosts)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    infos = executor.hosts()
    if len(infos) == 2 and all(info.state == "ready" for info in infos):
        break
    time.sleep(0.05)
print(json.dumps({info.host: info.pid for info in executor.hosts()}), flush=True)
time.sleep(600)
"""
CLIENT = CLIENT.replace("@LOCAL@", str(LOCAL_WORKERS)).replace("@REMOTE@", str(REMOTE_WORKERS))
DECOY = "import time; time.sleep(600)"
# A machine id of nobody's (decoys).
ID = "0" * MACHINE_ID_LENGTH


class Client:
    """A client process in the namespace with a node on each host."""

    def __init__(
        self, ns: PidNamespace, remote: NamespaceHost, env: dict[str, str] | None = None
    ) -> None:
        self.process = ns.popen(
            sys.executable, "-c", CLIENT, remote.alias, TEST_PYTHON, stdout=subprocess.PIPE, env=env
        )
        assert self.process.stdout is not None
        self.nodes: dict[str, int] = json.loads(self.process.stdout.readline())
        assert set(self.nodes) == {"local", remote.alias}, f"not every node came up: {self.nodes}"
        self.pid = ns.outer_pid(_inner_child(self.process.pid))
        spaces = {"local": ns, remote.alias: remote.namespace}
        workers = {"local": LOCAL_WORKERS, remote.alias: REMOTE_WORKERS}
        self.trees = {
            h: _tree(spaces[h].outer_pid(pid), workers[h]) for h, pid in self.nodes.items()
        }
        self.expected = {  # what kill-strays should report: (host, node) -> workers
            (host, pid): sorted(_inner(w) for w in self.trees[host][1:])
            for host, pid in self.nodes.items()
        }

    def outer_pids(self) -> set[int]:
        return {pid for tree in self.trees.values() for pid in tree}


def _inner_child(nsenter_pid: int) -> int:
    """The inner PID of the program nsenter forked (its only child)."""
    wait_for(lambda: psutil.Process(nsenter_pid).children(), 10, "nsenter's child")
    [child] = psutil.Process(nsenter_pid).children()
    with open(f"/proc/{child.pid}/status") as status:
        line = next(line for line in status if line.startswith("NSpid:"))
    return int(line.split()[-1])


def _inner(outer: int) -> int:
    with open(f"/proc/{outer}/status") as status:
        line = next(line for line in status if line.startswith("NSpid:"))
    return int(line.split()[-1])


def _tree(pid: int, workers: int) -> list[int]:
    """A node and its workers (outer PIDs), node first, once it has forked them all."""
    node = psutil.Process(pid)
    wait_for(lambda: len(node.children()) == workers, START_TIMEOUT, f"node {pid}'s workers")
    return [pid, *(child.pid for child in node.children())]


def run_command(
    ns: PidNamespace, *flags: str, hosts: str, env: dict[str, str] | None = None
) -> str:
    """Run ``ceranubis kill-strays`` inside the namespace; what it printed."""
    command = ns.command(
        sys.executable, "-m", "ceranubis_jupyter.cli", "kill-strays", "--hosts", hosts, *flags
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def kill_strays(
    ns: PidNamespace, *flags: str, hosts: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``ceranubis kill-strays --json`` inside the namespace; its answer."""
    answer: dict[str, Any] = json.loads(run_command(ns, "--json", *flags, hosts=hosts, env=env))
    assert answer["errors"] == {}
    return answer


def ended(answer: dict[str, Any]) -> dict[tuple[str, int], list[int]]:
    return {(s["host"], s["pid"]): sorted(s["workers"]) for s in answer["ended"]}


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if psutil.pid_exists(pid) and not _zombie(pid)}


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_strays_ends_exactly_the_nodes_of_dead_clients(
    pid_namespace: PidNamespace, namespace_sshd: NamespaceHost
) -> None:
    ns, hosts = pid_namespace, f"local,{namespace_sshd.alias}"
    dead, live = Client(ns, namespace_sshd), Client(ns, namespace_sshd)
    decoys = [
        ns.popen(sys.executable, "-c", DECOY, NODE_MARKER, f"client=elsewhere.invalid:{ID}:1"),
        ns.popen(sys.executable, "-c", DECOY, NODE_MARKER),
    ]
    decoy_pids = {ns.outer_pid(_inner_child(d.pid)) for d in decoys}
    for host in dead.nodes:  # hung nodes: they cannot notice that their client is gone
        os.kill(dead.trees[host][0], signal.SIGSTOP)
    os.kill(dead.pid, signal.SIGKILL)
    wait_for(lambda: not alive({dead.pid}), 10, "the client is gone")
    assert alive(dead.outer_pids()) == dead.outer_pids(), "the strays must outlive the client"

    listed = run_command(ns, "--dry-run", hosts=hosts)
    for host, pid in dead.nodes.items():
        assert f"{host}: would end node {pid} and " in listed, listed
    assert "would end 2 stray nodes" in listed and alive(dead.outer_pids()) == dead.outer_pids()

    first = kill_strays(ns, hosts=hosts)
    assert ended(first) == dead.expected, first
    wait_for(lambda: not alive(dead.outer_pids()), 10, "the strays ended")
    assert alive(live.outer_pids() | decoy_pids) == live.outer_pids() | decoy_pids

    os.kill(live.pid, signal.SIGSTOP)  # alive but frozen: it cannot restart its nodes
    every = kill_strays(ns, "--all", "--python", TEST_PYTHON, hosts=hosts)
    assert ended(every) == live.expected, every
    wait_for(lambda: not alive(live.outer_pids()), 10, "the live client's nodes ended")
    assert alive(decoy_pids) == decoy_pids, "a decoy was ended"
    os.kill(live.pid, signal.SIGKILL)
    os.kill(live.process.pid, signal.SIGCONT)  # nsenter stopped itself with its child

    assert ended(kill_strays(ns, "--all", hosts=hosts)) == {}, "nothing is left to end"
    for pid in decoy_pids:
        os.kill(pid, signal.SIGKILL)
    for process in [dead.process, live.process, *decoys]:
        process.wait(timeout=10)  # nsenter ends with the program it ran


def test_an_unreachable_host_is_reported_and_the_others_still_checked(
    pid_namespace: PidNamespace, ssh_env: SSHHome
) -> None:
    ssh_env.add_alias("cj-strays-nowhere", "127.0.0.1", free_port())
    command = pid_namespace.command(
        sys.executable, "-m", "ceranubis_jupyter.cli", "kill-strays", "--json", "--hosts"
    )
    done = subprocess.run(
        [*command, "local,cj-strays-nowhere"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert done.returncode == 1, done
    answer = json.loads(done.stdout)
    assert answer["ended"] == []
    assert list(answer["errors"]) == ["cj-strays-nowhere"]
    assert "cannot connect" in answer["errors"]["cj-strays-nowhere"]


def as_machine(cache: Path) -> dict[str, str]:
    """The environment of a client machine whose cache (and so machine id) is ``cache``."""
    return {**os.environ, "XDG_CACHE_HOME": str(cache)}


def test_two_machines_with_one_hostname_never_judge_each_others_nodes(
    pid_namespace: PidNamespace, namespace_sshd: NamespaceHost, tmp_path: Path
) -> None:
    ns, hosts = pid_namespace, f"local,{namespace_sshd.alias}"
    ours, other = as_machine(tmp_path / "machine-a"), as_machine(tmp_path / "machine-b")
    dead = Client(ns, namespace_sshd, env=ours)
    for host in dead.nodes:
        os.kill(dead.trees[host][0], signal.SIGSTOP)
    os.kill(dead.pid, signal.SIGKILL)
    wait_for(lambda: not alive({dead.pid}), 10, "the client is gone")

    # The other machine shares the hostname, and its PIDs say nothing about our client.
    assert ended(kill_strays(ns, hosts=hosts, env=other)) == {}
    assert ended(kill_strays(ns, "--all", hosts=hosts, env=other)) == {}
    assert alive(dead.outer_pids()) == dead.outer_pids(), "another machine ended our nodes"

    assert ended(kill_strays(ns, hosts=hosts, env=ours)) == dead.expected
    wait_for(lambda: not alive(dead.outer_pids()), 10, "the strays ended")
    dead.process.wait(timeout=10)


def test_the_machine_id_is_random_private_and_kept(tmp_path: Path) -> None:
    probe = "from ceranubis_jupyter.cluster.transport import machine_id; print(machine_id())"

    def machine(name: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=as_machine(tmp_path / name),
            capture_output=True,
            text=True,
            check=True,
            timeout=COMMAND_TIMEOUT,
        )
        return done.stdout.strip()

    first = machine("a")
    assert len(first) == MACHINE_ID_LENGTH and machine("a") == first != machine("b")
    stored = tmp_path / "a" / "ceranubis" / "machine-id"
    assert stored.read_text().strip() == first
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert sorted(os.listdir(stored.parent)) == ["machine-id"]  # no drafts left
    stored.write_text("damaged\n")
    assert machine("a") not in ("", first, "damaged")


def test_a_client_is_judged_only_by_its_own_machine() -> None:
    here, me = socket.gethostname(), os.getpid()
    assert is_stray(f"{here}:{machine_id()}:{me}", 0.0, everything=True)
    assert not is_stray(f"{here}:{machine_id()}:{me}", 0.0, everything=False)  # alive
    for client in (f"{here}:{ID}:{me}", f"elsewhere:{machine_id()}:{me}", f"{here}:{me}"):
        assert not is_stray(client, 0.0, everything=True), client
