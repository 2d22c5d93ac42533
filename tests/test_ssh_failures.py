"""Every way an SSH host can fail at connect, with the message the user gets.

Each failure is real: a closed port, a server that never speaks, a key the server does not
accept, a host key that is unknown or has changed, a python that is missing or too old, a
cache that cannot be written, a node from another protocol version. One bad host never
stops the others; with no usable host at all the executor says so.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter import (
    AuthError,
    BootstrapError,
    BrokenCeranubisExecutor,
    CeranubisExecutor,
    HostError,
    HostKeyError,
    HostUnreachable,
    NoHostsAvailable,
)
from ceranubis_jupyter.cluster.bootstrap import _bundle_files, build_bundle
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.scheduler import Scheduler
from ceranubis_jupyter.cluster.ssh import SSHTransport
from ceranubis_jupyter.cluster.tasks import TaskRecord
from ceranubis_jupyter.errors import HostVersionMismatch
from ceranubis_jupyter.wire import protocol as p
from tests.fixtures_ssh import (
    OPENSSH_ALIAS,
    TEST_PYTHON,
    AsyncSSHServer,
    OpenSSHServer,
    SSHHome,
    free_port,
    keygen,
    make_asyncssh_server,
)

# Seconds any failure may take to surface (connect timeouts in these tests are shorter).
FAILURE_DEADLINE = 30.0


def only_error(hosts: list[Host]) -> HostError:
    """Run one task on ``hosts`` (all bad); return the single host error the executor gives."""
    with CeranubisExecutor(hosts) as executor:
        try:
            error = executor.submit(abs, -1).exception(timeout=FAILURE_DEADLINE)
        except BrokenCeranubisExecutor as broken:
            error = broken
    assert isinstance(error, BrokenCeranubisExecutor), error
    cause = error.__cause__
    assert isinstance(cause, NoHostsAvailable), cause
    assert "no host could be used" in str(cause)
    assert len(cause.errors) == 1
    return cause.errors[0]


@pytest.fixture(scope="module")
def bad_aliases(openssh_server: OpenSSHServer, ssh_home: SSHHome) -> dict[str, str]:
    """ssh-config aliases for the loopback sshd that each break one thing."""
    port = openssh_server.port
    wrong_key = ssh_home.ssh / "cj_wrong_key"
    if not wrong_key.exists():
        keygen(wrong_key)
    empty = ssh_home.ssh / "known_hosts_empty"
    empty.write_text("")
    other = ssh_home.ssh / "known_hosts_other"
    other.write_text("")
    ssh_home.trust("127.0.0.1", port, wrong_key.with_suffix(".pub"), known_hosts=other)
    aliases = {"badkey": "cj-badkey", "unknown": "cj-unknownkey", "changed": "cj-changedkey"}
    ssh_home.add_alias(aliases["badkey"], "127.0.0.1", port, identity=wrong_key)
    ssh_home.add_alias(aliases["unknown"], "127.0.0.1", port, known_hosts=empty)
    ssh_home.add_alias(aliases["changed"], "127.0.0.1", port, known_hosts=other)
    return aliases


def test_closed_port_is_unreachable(ssh_env: SSHHome) -> None:
    address = f"127.0.0.1:{free_port()}"
    error = only_error([Host(address)])
    assert isinstance(error, HostUnreachable) and error.host == address
    assert "cannot connect" in str(error) and f"ssh {address}" in str(error)


def test_a_task_queued_just_as_the_executor_broke_fails_instead_of_waiting(
    ssh_env: SSHHome,
) -> None:
    # submit checks for a broken executor, then queues: the break may fall in between.
    with CeranubisExecutor([Host(f"127.0.0.1:{free_port()}")]) as executor:
        first = executor.submit(abs, -1).exception(timeout=FAILURE_DEADLINE)
        assert isinstance(first, BrokenCeranubisExecutor)
        scheduler = executor.scheduler
        late: Future[Any] = Future()
        record = TaskRecord(scheduler.next_task_id(), late, 1, p.CALL, p.PICKLE, b"")
        with scheduler._idle:  # what submit_threadsafe does before it queues
            scheduler.outstanding += 1
        scheduler.incoming.append(record)
        scheduler.loop_thread.call_threadsafe(scheduler._take_incoming)
        assert isinstance(late.exception(timeout=5), BrokenCeranubisExecutor)
        assert scheduler.outstanding == 0


def test_a_server_that_never_answers_times_out(ssh_env: SSHHome, silent_port: int) -> None:
    address = f"127.0.0.1:{silent_port}"
    started = time.monotonic()
    error = only_error([Host(address, connect_timeout=1)])
    assert time.monotonic() - started < 10
    assert isinstance(error, HostUnreachable)
    assert str(error).startswith(f"{address}: no ssh answer within 1 s")


def test_refused_key_is_an_auth_error(ssh_env: SSHHome, bad_aliases: dict[str, str]) -> None:
    alias = bad_aliases["badkey"]
    error = only_error([Host(alias)])
    assert isinstance(error, AuthError) and not error.transient
    assert str(error).startswith(f"{alias}: the host refused our ssh credentials")
    assert "IdentityFile" in str(error)


def test_unknown_host_key_is_refused(
    ssh_env: SSHHome, bad_aliases: dict[str, str], openssh_server: OpenSSHServer
) -> None:
    alias = bad_aliases["unknown"]
    error = only_error([Host(alias)])
    assert isinstance(error, HostKeyError) and not error.transient
    fingerprint = _fingerprint(openssh_server.host_key.with_suffix(".pub"))
    assert fingerprint in str(error)
    assert "is not in known_hosts" in str(error) and f"ssh {alias}" in str(error)


def test_changed_host_key_is_refused(
    ssh_env: SSHHome, bad_aliases: dict[str, str], openssh_server: OpenSSHServer
) -> None:
    alias = bad_aliases["changed"]
    error = only_error([Host(alias)])
    assert isinstance(error, HostKeyError)
    assert "host key has changed" in str(error)
    assert _fingerprint(openssh_server.host_key.with_suffix(".pub")) in str(error)
    assert f"ssh-keygen -R '[127.0.0.1]:{openssh_server.port}'" in str(error)


def test_an_unknown_key_on_the_way_is_refused_too(
    ssh_env: SSHHome, bad_aliases: dict[str, str], openssh_server: OpenSSHServer
) -> None:
    alias = "cj-via-unknown"  # the target's key is known; the jump host's is not
    ssh_env.add_alias(alias, "127.0.0.1", openssh_server.port, ProxyJump=bad_aliases["unknown"])
    error = only_error([Host(alias, python=TEST_PYTHON)])
    assert isinstance(error, HostKeyError)
    assert "a host key was refused" in str(error) and "ProxyJump hosts too" in str(error)


def _fingerprint(public_key: Path) -> str:
    import asyncssh

    return str(asyncssh.read_public_key(str(public_key)).get_fingerprint())


def test_known_hosts_none_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="known_hosts=None would turn off host-key checking"):
        CeranubisExecutor([Host("somewhere", known_hosts=None)])


def test_missing_python_is_a_bootstrap_error(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    error = only_error([Host(OPENSSH_ALIAS, python="/nonexistent/python3")])
    assert isinstance(error, BootstrapError) and error.host == OPENSSH_ALIAS
    assert "cannot run python '/nonexistent/python3' there" in str(error)
    assert "python='/path/to/python3." in str(error)


def test_too_old_python_is_a_bootstrap_error(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    # Debian's pypy3 implements Python 3.9 (installed by .ci/install-system-deps).
    error = only_error([Host(OPENSSH_ALIAS, python="pypy3")])
    assert isinstance(error, BootstrapError)
    assert "python 3.9 is too old for ceranubis (needs 3.10+)" in str(error)


def test_unwritable_cache_is_a_bootstrap_error(ssh_env: SSHHome, tmp_path: Path) -> None:
    server = make_asyncssh_server(tmp_path / "server", ssh_env)
    try:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        server.env["XDG_CACHE_HOME"] = str(blocker)
        error = only_error([_host_for(server, ssh_env, "cj-nocache")])
    finally:
        server.stop()
    assert isinstance(error, BootstrapError)
    assert f"could not write the node bundle to {blocker}/ceranubis" in str(error)


def _host_for(server: AsyncSSHServer, home: SSHHome, alias: str) -> Host:
    home.add_alias(alias, "127.0.0.1", server.port)
    home.trust("127.0.0.1", server.port, server.host_key.with_suffix(".pub"))
    return Host(alias, python=TEST_PYTHON)


def _error_of_patched_node(files: dict[str, bytes]) -> object:
    """Start a real node from a modified bundle on the OpenSSH host; its host's error."""
    transport = SSHTransport(Host(OPENSSH_ALIAS, python=TEST_PYTHON), bundle=build_bundle(files))
    scheduler = Scheduler([transport])
    try:
        deadline = time.monotonic() + FAILURE_DEADLINE
        while scheduler.broken is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return scheduler.host_errors.get(OPENSSH_ALIAS)
    finally:
        scheduler.close_threadsafe()


def test_node_of_another_protocol_version_is_refused(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    files = _bundle_files()
    source = files["ceranubis_jupyter/wire/protocol.py"].decode()
    ours = f"\nPROTOCOL_VERSION = {p.PROTOCOL_VERSION}\n"
    assert ours in source
    files["ceranubis_jupyter/wire/protocol.py"] = source.replace(
        ours, "\nPROTOCOL_VERSION = 99\n"
    ).encode()
    error = _error_of_patched_node(files)
    assert isinstance(error, HostVersionMismatch) and not error.transient
    assert "protocol version 99" in str(error)
    assert f"speaks {p.PROTOCOL_VERSION}" in str(error)


def test_one_bad_host_does_not_stop_the_others(
    ssh_env: SSHHome, bad_aliases: dict[str, str], openssh_server: OpenSSHServer
) -> None:
    bad = bad_aliases["badkey"]
    with CeranubisExecutor([Host(bad), Host(OPENSSH_ALIAS, python=TEST_PYTHON)]) as executor:
        assert list(executor.map(abs, range(-20, 0))) == list(range(20, 0, -1))
        deadline = time.monotonic() + FAILURE_DEADLINE
        while time.monotonic() < deadline:
            info = {h.host: h for h in executor.hosts()}
            if info[bad].state == "failed":
                break
            time.sleep(0.05)
    assert info[bad].state == "failed" and "refused our ssh credentials" in info[bad].error
    assert info[OPENSSH_ALIAS].done == 20


def test_node_of_another_python_is_refused_naming_both_versions(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    files = _bundle_files()
    source = files["ceranubis_jupyter/node/hostinfo.py"].decode()
    reported = 'python=f"{version.major}.{version.minor}.{version.micro}",'
    assert reported in source
    patched = source.replace(reported, 'python="3.99.1",')
    files["ceranubis_jupyter/node/hostinfo.py"] = patched.encode()
    error = _error_of_patched_node(files)
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert isinstance(error, HostVersionMismatch) and not error.transient
    assert f"remote Python is 3.99.1 but the client runs {ours}" in str(error)
    assert OPENSSH_ALIAS in str(error)
