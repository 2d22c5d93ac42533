"""No stray processes on a host: nodes die with their client, even one killed by SIGKILL.

A client runs in its own process (as a notebook kernel would), starts a node over SSH with
busy workers, and is then SIGKILLed (no shutdown, no goodbye) or SIGSTOPped (its connection
stays open but goes silent). The node and its workers must be gone soon after, without any
SSH signal request (OpenSSH refuses those for root).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from ceranubis_jupyter.cluster.link import SILENCE_TIMEOUT
from ceranubis_jupyter.cluster.transport import NODE_MARKER
from tests.fixtures_ssh import ASYNCSSH_ALIAS, OPENSSH_ALIAS, TEST_PYTHON, SSHHome

# Seconds the client gets to start its node and report it.
CLIENT_START_TIMEOUT = 30.0
# Seconds for a node to notice a dead client: sshd sees the TCP close at once.
DEATH_NOTICE = 10.0

CLIENT = """
import os, sys, time
from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
executor = CeranubisExecutor([Host(sys.argv[1], python=sys.argv[2], workers=2)])
node = executor.submit(os.getppid).result(timeout=60)
busy = [executor.submit(time.sleep, 600) for _ in range(2)]
print(node, flush=True)
time.sleep(600)
"""


@pytest.fixture
def client(ssh_env: SSHHome, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    """A client process with a node on the host named by the test's ``alias`` param."""
    alias = request.param
    request.getfixturevalue("openssh_server" if alias == OPENSSH_ALIAS else "asyncssh_server")
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT, alias, TEST_PYTHON],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def node_of(client: subprocess.Popen[str]) -> list[psutil.Process]:
    """The client's node and its workers, once the node is running work."""
    assert client.stdout is not None
    line = _readline(client, CLIENT_START_TIMEOUT)
    node = psutil.Process(int(line))
    workers = node.children()
    assert len(workers) == 2
    processes = [node, *workers]
    assert all(NODE_MARKER in " ".join(process.cmdline()) for process in processes)
    return processes


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"the client said nothing within {timeout} s")
    return process.stdout.readline().strip()


@pytest.mark.parametrize("client", [OPENSSH_ALIAS, ASYNCSSH_ALIAS], indirect=True)
def test_nodes_die_with_a_sigkilled_client(client: subprocess.Popen[str]) -> None:
    processes = node_of(client)
    client.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(processes, timeout=DEATH_NOTICE)
    assert not alive, f"left on the host after the client was killed: {alive}"


@pytest.mark.parametrize("client", [OPENSSH_ALIAS], indirect=True)
def test_nodes_leave_a_client_that_went_silent(client: subprocess.Popen[str]) -> None:
    processes = node_of(client)
    client.send_signal(signal.SIGSTOP)  # the connection stays open; nothing more comes
    try:
        _, alive = psutil.wait_procs(processes, timeout=SILENCE_TIMEOUT + DEATH_NOTICE)
    finally:
        client.send_signal(signal.SIGKILL)
    assert not alive, f"still running {SILENCE_TIMEOUT + DEATH_NOTICE:.0f} s into silence"
