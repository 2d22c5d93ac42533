"""SSH hosts end to end: bare interpreters, the bundle cache, markers, ciphers, mixed hosts.

(The executor contract itself runs over both SSH servers from ``test_executor_contract``.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.bootstrap import node_bundle
from ceranubis_jupyter.cluster.credit import CREDIT_PER_WORKER
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.ssh import PREFERRED_CIPHER
from ceranubis_jupyter.cluster.transport import NODE_MARKER
from tests.fixtures_ssh import (
    ASYNCSSH_ALIAS,
    OPENSSH_ALIAS,
    TEST_PYTHON,
    AsyncSSHServer,
    OpenSSHServer,
    SSHHome,
    reset_cache,
    wait_until_ready,
)
from tests.remote import by_value
from tests.task_records import TaskRecords

# Seconds any single result may take in these tests.
RESULT_TIMEOUT = 30.0
# Tasks for three one-worker nodes: over their summed credit (3 x CREDIT_PER_WORKER).
TASKS_FOR_THREE = 3 * CREDIT_PER_WORKER + 12
# Connect timeout of the hanging host: far above a loopback start even on a loaded machine,
# short enough for shutdown (which waits for a starting link to give up).
HANGING_CONNECT_TIMEOUT = 10.0


@by_value
def where_am_i() -> dict[str, object]:
    import os
    import sys

    try:
        import numpy  # noqa: F401

        has_numpy = True
    except ImportError:
        has_numpy = False
    return {
        "executable": sys.executable,
        "node": sys.modules["ceranubis_jupyter.node.supervisor"].__file__,
        "dill": sys.modules["dill"].__file__,
        "numpy": has_numpy,
        "pid": os.getpid(),
        "ppid": os.getppid(),
    }


@by_value
def nap(seconds: float) -> int:
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def test_bare_python_in_an_empty_virtualenv_runs_nodes(
    ssh_env: SSHHome, openssh_server: OpenSSHServer, tmp_path: Path
) -> None:
    venv = tmp_path / "empty-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    host = Host(OPENSSH_ALIAS, python=python, workers=1)
    with CeranubisExecutor([host]) as executor:
        facts = executor.submit(where_am_i).result(timeout=RESULT_TIMEOUT)
    cache = str(openssh_server.cache / "ceranubis" / node_bundle().digest)
    assert facts["executable"] == python
    assert str(facts["node"]).startswith(cache) and str(facts["dill"]).startswith(cache)
    assert facts["numpy"] is False  # nothing is installed there, and nothing leaked in


def test_the_bundle_is_sent_once_then_found_in_the_cache(
    ssh_env: SSHHome, openssh_server: OpenSSHServer, caplog: pytest.LogCaptureFixture
) -> None:
    reset_cache(openssh_server.cache)
    host = Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=1)
    caplog.set_level(logging.INFO, logger="ceranubis.ssh")
    for _ in range(2):
        with CeranubisExecutor([host]) as executor:
            assert executor.submit(abs, -3).result(timeout=RESULT_TIMEOUT) == 3
    sends = [r for r in caplog.records if "sending the node bundle" in r.getMessage()]
    assert len(sends) == 1
    assert os.listdir(openssh_server.cache / "ceranubis") == [node_bundle().digest]


def test_every_node_process_carries_the_marker_and_none_outlives_shutdown(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    host = Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=2)
    with CeranubisExecutor([host]) as executor:
        facts = executor.submit(where_am_i).result(timeout=RESULT_TIMEOUT)
        node = psutil.Process(int(str(facts["ppid"])))
        workers = node.children()
        assert openssh_server.process is not None
        assert openssh_server.process.pid in {parent.pid for parent in node.parents()}
        assert int(str(facts["pid"])) in {worker.pid for worker in workers}
        assert len(workers) == 2
        assert all(NODE_MARKER in process.cmdline() for process in [node, *workers])
    _, alive = psutil.wait_procs([node, *workers], timeout=5)
    assert not alive


def test_the_preferred_cipher_is_chosen_unless_the_ssh_config_says_otherwise(
    ssh_env: SSHHome, openssh_server: OpenSSHServer, caplog: pytest.LogCaptureFixture
) -> None:
    chosen = "chacha20-poly1305@openssh.com"
    ssh_env.add_alias("cj-chacha", "127.0.0.1", openssh_server.port, Ciphers=chosen)
    caplog.set_level(logging.DEBUG, logger="ceranubis.ssh")
    for alias in (OPENSSH_ALIAS, "cj-chacha"):
        with CeranubisExecutor([Host(alias, python=TEST_PYTHON, workers=1)]) as executor:
            assert executor.submit(abs, -1).result(timeout=RESULT_TIMEOUT) == 1
    connected = [r.getMessage() for r in caplog.records if "connected (cipher" in r.getMessage()]
    assert connected == [
        f"[host={OPENSSH_ALIAS}] connected (cipher {PREFERRED_CIPHER})",
        f"[host=cj-chacha] connected (cipher {chosen})",
    ]


def test_local_and_both_servers_in_one_executor(
    ssh_env: SSHHome, openssh_server: OpenSSHServer, asyncssh_server: AsyncSSHServer
) -> None:
    hosts = [
        "local",
        Host(ASYNCSSH_ALIAS, python=TEST_PYTHON, workers=1),
        Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=1),
    ]
    with CeranubisExecutor(hosts, max_workers=1) as executor:
        tasks = TaskRecords(executor)
        wait_until_ready(executor, 3)
        # More tasks than the three nodes' credit together, so every node gets some.
        futures = [executor.submit(nap, 0.01) for _ in range(TASKS_FOR_THREE)]
        assert len({f.result(timeout=RESULT_TIMEOUT) for f in futures}) == 3
        landed = set(tasks.hosts(futures))
        done = {info.host: info.done for info in executor.hosts()}
    assert landed == {"local", ASYNCSSH_ALIAS, OPENSSH_ALIAS}
    assert sum(done.values()) == TASKS_FOR_THREE and all(done.values())


def test_a_hanging_host_does_not_hold_up_the_others(
    hosts_openssh: list[Host], silent_port: int
) -> None:
    hanging = Host(f"127.0.0.1:{silent_port}", connect_timeout=HANGING_CONNECT_TIMEOUT)
    with CeranubisExecutor([hanging, *hosts_openssh], max_workers=1) as executor:
        assert executor.submit(abs, -5).result(timeout=RESULT_TIMEOUT) == 5
        states = {info.host: info.state for info in executor.hosts()}
        executor.shutdown(wait=True)
    # A result while the hanging host still connects: the hosts connect concurrently.
    assert states[hanging.address] == "starting", states


def test_user_at_host_port_without_an_alias(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    address = f"{ssh_env.user}@127.0.0.1:{openssh_server.port}"
    host = Host(address, python=TEST_PYTHON, workers=1, client_keys=[str(ssh_env.key)])
    with CeranubisExecutor([host]) as executor:
        assert executor.submit(abs, -7).result(timeout=RESULT_TIMEOUT) == 7
        assert [info.host for info in executor.hosts()] == [address]


@pytest.fixture
def agent(ssh_env: SSHHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real ssh-agent holding the test key (the only way to our servers for its alias)."""
    socket_path = str(tmp_path / "agent.sock")
    process = subprocess.Popen(["ssh-agent", "-D", "-a", socket_path], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RESULT_TIMEOUT
        while not os.path.exists(socket_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": socket_path}
        subprocess.run(["ssh-add", "-q", str(ssh_env.key)], env=env, check=True, timeout=30)
        monkeypatch.setenv("SSH_AUTH_SOCK", socket_path)
        yield socket_path
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_keys_from_the_agent_are_used(
    agent: str, ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    alias = "cj-agent"
    with open(ssh_env.ssh / "config", "a") as config:  # no IdentityFile: only the agent has it
        config.write(
            f"Host {alias}\n    HostName 127.0.0.1\n    Port {openssh_server.port}\n"
            f"    User {ssh_env.user}\n    UserKnownHostsFile {ssh_env.known_hosts}\n\n"
        )
    with CeranubisExecutor([Host(alias, python=TEST_PYTHON, workers=1)]) as executor:
        assert executor.submit(abs, -9).result(timeout=RESULT_TIMEOUT) == 9
