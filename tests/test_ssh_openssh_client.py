"""The OpenSSH transport (``CERANUBIS_SSH_CLIENT=openssh``): the ``ssh`` binary over pipes.

The executor contract runs over it from ``test_executor_contract`` (the ``openssh_client``
transport); here: the bootstrap, the options it forces, the config it writes, and each way
ssh can refuse a host becoming the right error.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import psutil
import pytest

from ceranubis_jupyter import CeranubisExecutor, ConfigError
from ceranubis_jupyter.cluster.bootstrap import node_bundle
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.openssh import (
    FORCED_OPTIONS,
    PREFERRED_CIPHER,
    PREFERRED_KEX,
    SSH_CLIENT_ENV,
    OpenSSHTransport,
    classify_ssh_error,
    client_config,
    config_text,
)
from ceranubis_jupyter.cluster.reach import transport_for
from ceranubis_jupyter.errors import AuthError, HostError, HostKeyError, HostUnreachable
from tests.fixtures_ssh import (
    OPENSSH_ALIAS,
    TEST_PYTHON,
    OpenSSHServer,
    SSHHome,
    free_port,
    keygen,
    reset_cache,
)
from tests.remote import by_value

# Seconds any single result may take in these tests.
RESULT_TIMEOUT = 30.0


@by_value
def parent_pid() -> int:
    import os

    return os.getppid()


def _start(host: Host) -> None:
    """Start a node through the transport and close it (raises what the start raised)."""

    async def start() -> None:
        channel = await OpenSSHTransport(host).start()
        await channel.close()

    asyncio.run(start())


def test_the_environment_picks_the_ssh_binary(
    ssh_env: SSHHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = Host(OPENSSH_ALIAS, python=TEST_PYTHON)
    assert type(transport_for(host)).__name__ == "SSHTransport"
    monkeypatch.setenv(SSH_CLIENT_ENV, "openssh")
    assert isinstance(transport_for(host), OpenSSHTransport)
    monkeypatch.setenv(SSH_CLIENT_ENV, "putty")
    with pytest.raises(ConfigError, match="CERANUBIS_SSH_CLIENT='putty': use one of"):
        transport_for(host)


def test_asyncssh_options_are_refused(ssh_env: SSHHome) -> None:
    with pytest.raises(ConfigError, match="client_keys are asyncssh options"):
        OpenSSHTransport(Host(OPENSSH_ALIAS, client_keys=["/nowhere"]))


def test_a_cold_then_warm_start_runs_tasks_and_leaves_nothing_behind(
    hosts_openssh_client: list[Host], openssh_server: OpenSSHServer
) -> None:
    reset_cache(openssh_server.cache)  # the first start sends the bundle (NEED)
    for _ in range(2):
        with CeranubisExecutor(hosts_openssh_client, max_workers=2) as executor:
            assert [executor.submit(abs, -i).result(RESULT_TIMEOUT) for i in range(50)] == list(
                range(50)
            )
            assert list(executor.map(abs, range(-500, 0), chunksize=7)) == list(range(500, 0, -1))
            node = psutil.Process(executor.submit(parent_pid).result(RESULT_TIMEOUT))
            ssh = [p for p in psutil.Process().children() if p.name() == "ssh"]
            assert len(ssh) == 1
        _, alive = psutil.wait_procs([node, *ssh], timeout=10)
        assert not alive
    assert (openssh_server.cache / "ceranubis" / node_bundle().digest).is_dir()


def test_the_command_forces_the_safe_options(ssh_env: SSHHome) -> None:
    host = Host(f"someone@127.0.0.1:{free_port()}", python=TEST_PYTHON)
    argv = OpenSSHTransport(host).command("digest")
    forced = [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]
    assert forced == list(FORCED_OPTIONS)
    assert "StrictHostKeyChecking=yes" in forced and "BatchMode=yes" in forced
    assert argv[argv.index("-l") + 1] == "someone" and argv[argv.index("--") + 1] == "127.0.0.1"


def test_the_user_config_wins_over_the_written_defaults(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    chosen = "chacha20-poly1305@openssh.com"
    ssh_env.add_alias("cj-chacha-client", "127.0.0.1", openssh_server.port, Ciphers=chosen)
    text = config_text(str(ssh_env.path))
    assert text.index("Include") < text.index("Host *")

    def resolved(alias: str, name: str) -> str:
        shown = subprocess.run(
            ["ssh", "-F", str(client_config()), "-G", alias],
            capture_output=True,
            text=True,
            check=True,
            timeout=RESULT_TIMEOUT,
        ).stdout
        return next(line.split()[1] for line in shown.splitlines() if line.startswith(name + " "))

    assert resolved(OPENSSH_ALIAS, "ciphers").split(",")[0] == PREFERRED_CIPHER
    assert resolved(OPENSSH_ALIAS, "kexalgorithms").split(",")[0] == PREFERRED_KEX
    assert resolved("cj-chacha-client", "ciphers") == chosen


def test_an_unknown_host_key_is_refused(
    ssh_env: SSHHome, openssh_server: OpenSSHServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh_env.add_alias("cj-unknown-key", "127.0.0.1", openssh_server.port, known_hosts=empty)
    with pytest.raises(HostKeyError, match=r"(?i)host key verification failed.*never connects"):
        _start(Host("cj-unknown-key", python=TEST_PYTHON))


def test_a_key_the_host_does_not_accept_is_an_auth_error(
    ssh_env: SSHHome, openssh_server: OpenSSHServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger_key"
    keygen(stranger)
    ssh_env.add_alias("cj-stranger", "127.0.0.1", openssh_server.port, identity=stranger)
    with pytest.raises(AuthError, match=r"(?i)permission denied.*ssh-add -l"):
        _start(Host("cj-stranger", python=TEST_PYTHON))


def test_a_closed_port_is_unreachable(ssh_env: SSHHome) -> None:
    with pytest.raises(HostUnreachable, match=r"(?i)connection refused"):
        _start(Host(f"127.0.0.1:{free_port()}", python=TEST_PYTHON))


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("Host key verification failed.", HostKeyError),
        ("root@h: Permission denied (publickey).", AuthError),
        ("ssh: Could not resolve hostname nowhere: Name or service not known", HostUnreachable),
        ("kex_exchange_identification: read: Connection reset by peer", HostUnreachable),
        ("something new", HostUnreachable),
    ],
)
def test_ssh_messages_become_host_errors(stderr: str, kind: type[HostError]) -> None:
    error = classify_ssh_error("h", stderr)
    assert type(error) is kind and stderr in str(error) and "h" in str(error)
