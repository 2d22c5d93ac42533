"""What the user's ssh config may not change: host keys are checked, nothing is forwarded,
no terminal. Each test writes the offending lines into the test HOME's ``~/.ssh/config``
and connects to the real loopback sshd, as a user's config would reach a real host.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ceranubis_jupyter import BrokenCeranubisExecutor, CeranubisExecutor, HostKeyError
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.ssh import SSHTransport
from ceranubis_jupyter.errors import ConfigError
from tests.fixtures_ssh import (
    SERVER_START_TIMEOUT,
    TEST_PYTHON,
    OpenSSHServer,
    SSHHome,
)
from tests.remote import by_value

# Seconds a result or a refusal may take.
RESULT_TIMEOUT = 30.0
# What the node side reports about its session: the agent socket sshd set, if any, and
# whether the node's stdin (the SSH session) is a terminal.
PROBE = 'echo "agent=${SSH_AUTH_SOCK:-}"; if [ -t 0 ]; then echo tty; else echo no-tty; fi'


@by_value
def session_facts() -> dict[str, object]:
    """On a worker: the agent socket it inherited and what its node's stdin is."""
    import os

    return {
        "agent": os.environ.get("SSH_AUTH_SOCK"),
        "node_stdin": os.readlink(f"/proc/{os.getppid()}/fd/0"),
    }


@pytest.fixture
def ssh_agent(ssh_env: SSHHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real ssh-agent (no keys) as the client's SSH_AUTH_SOCK; stopped by PID after."""
    socket_path = str(tmp_path / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", socket_path], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not os.path.exists(socket_path):
            assert agent.poll() is None and time.monotonic() < deadline, "no ssh-agent socket"
            time.sleep(0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", socket_path)
        yield socket_path
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def connect_and_run(host: Host, command: str) -> str:
    """Connect as ``kill-strays`` does and run one command; its output."""

    async def run() -> str:
        conn = await SSHTransport(host).connect()
        try:
            result = await asyncio.wait_for(conn.run(command), RESULT_TIMEOUT)
            return str(result.stdout)
        finally:
            conn.close()
            await conn.wait_closed()

    return asyncio.run(run())


def refusal(host: Host) -> HostKeyError:
    """The HostKeyError that connecting to ``host`` gives, through the executor too."""
    with pytest.raises(HostKeyError) as direct:
        connect_and_run(host, "true")
    with CeranubisExecutor([host]) as executor:
        try:
            error = executor.submit(abs, -1).exception(timeout=RESULT_TIMEOUT)
        except BrokenCeranubisExecutor as broken:
            error = broken
    assert isinstance(error, BrokenCeranubisExecutor), error
    assert [type(e) for e in error.__cause__.errors] == [HostKeyError]  # type: ignore[union-attr]
    return direct.value


def test_user_known_hosts_file_none_in_the_ssh_config_is_refused(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    alias = "cj-no-host-keys"
    ssh_env.add_alias(alias, "127.0.0.1", openssh_server.port, known_hosts=Path("none"))
    error = refusal(Host(alias, python=TEST_PYTHON))
    assert error.host == alias
    assert "UserKnownHostsFile none" in str(error) and "never connects" in str(error)


def test_a_jump_host_without_host_key_checks_is_refused(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    jump, target = "cj-jump-unchecked", "cj-behind-unchecked-jump"
    ssh_env.add_alias(jump, "127.0.0.1", openssh_server.port, known_hosts=Path("none"))
    ssh_env.add_alias(target, "127.0.0.1", openssh_server.port, ProxyJump=jump)
    error = refusal(Host(target, python=TEST_PYTHON))
    assert error.host == target and f"the jump host {jump}" in str(error)


def test_a_checked_jump_host_still_works(ssh_env: SSHHome, openssh_server: OpenSSHServer) -> None:
    jump, target = "cj-jump-checked", "cj-behind-checked-jump"
    ssh_env.add_alias(jump, "127.0.0.1", openssh_server.port)
    ssh_env.add_alias(target, "127.0.0.1", openssh_server.port, ProxyJump=jump)
    assert connect_and_run(Host(target), "echo through").strip() == "through"


def test_host_options_that_weaken_a_connection_are_refused_at_once() -> None:
    # (a Host without known hosts is refused the same way: test_ssh_failures)
    with pytest.raises(ConfigError, match="request_pty would give the node a terminal"):
        SSHTransport(Host("somewhere", request_pty="force"))


def test_forward_agent_in_the_ssh_config_does_not_reach_the_node(
    ssh_env: SSHHome, openssh_server: OpenSSHServer, ssh_agent: str
) -> None:
    alias = "cj-forward-agent"
    ssh_env.add_alias(alias, "127.0.0.1", openssh_server.port, ForwardAgent="yes")
    host = Host(alias, python=TEST_PYTHON, workers=1)
    assert connect_and_run(host, PROBE).split() == ["agent=", "no-tty"]
    with CeranubisExecutor([host]) as executor:
        facts = executor.submit(session_facts).result(timeout=RESULT_TIMEOUT)
    assert facts["agent"] is None


def test_agent_forwarding_asked_for_in_host_options_is_honoured(
    ssh_env: SSHHome, openssh_server: OpenSSHServer, ssh_agent: str
) -> None:
    alias = "cj-forward-agent-asked"
    ssh_env.add_alias(alias, "127.0.0.1", openssh_server.port)
    host = Host(alias, python=TEST_PYTHON, workers=1, agent_forwarding=True)
    agent_line = connect_and_run(host, PROBE).split()[0]
    assert agent_line.startswith("agent=/") and agent_line != f"agent={ssh_agent}"
    with CeranubisExecutor([host]) as executor:
        facts = executor.submit(session_facts).result(timeout=RESULT_TIMEOUT)
    assert str(facts["agent"]).startswith("/")


def test_request_tty_in_the_ssh_config_gives_the_node_no_terminal(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    alias = "cj-request-tty"
    ssh_env.add_alias(alias, "127.0.0.1", openssh_server.port, RequestTTY="force")
    host = Host(alias, python=TEST_PYTHON, workers=1)
    assert connect_and_run(host, PROBE).split() == ["agent=", "no-tty"]
    with CeranubisExecutor([host]) as executor:
        facts = executor.submit(session_facts).result(timeout=RESULT_TIMEOUT)
    assert not str(facts["node_stdin"]).startswith("/dev/"), facts
