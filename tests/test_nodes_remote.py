"""``ceranubis nodes start|stop``: queue daemons on a real sshd host, serving a real
PostgreSQL store, detached from the SSH connection, ended by the PIDs recorded there."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import psutil
import pytest

from ceranubis_jupyter import commit_project
from ceranubis_jupyter.cli.main import main
from ceranubis_jupyter.projects.stores import open_store
from tests.conftest import wait_until_gone
from tests.fixtures_ssh import OPENSSH_ALIAS, TEST_PYTHON, OpenSSHServer, SSHHome

# Seconds a queued project of a few tiny tasks may take on a loaded machine.
PROJECT_TIMEOUT = 120.0
# Seconds for the daemons' processes to be gone after stop said they ended.
GONE_TIMEOUT = 30.0
DOUBLE = "def double(x):\n    return 2 * x\n"


@pytest.fixture
def client_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The client's cache (where start remembers its hosts), fresh for the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "client-cache"))
    return tmp_path / "client-cache"


def _recorded(server: OpenSSHServer) -> dict[int, dict[str, object]]:
    """The daemons' PID files on the ssh host (its sessions' XDG_CACHE_HOME)."""
    directory = server.cache / "ceranubis" / "daemons"
    found = {}
    for path in directory.glob("*.json") if directory.exists() else []:
        record = json.loads(path.read_text())
        found[int(record["pid"])] = record
    return found


def _family(pids: set[int]) -> set[int]:
    """The processes and all their descendants (the daemons' nodes and workers)."""
    found = set(pids)
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
    return found


def _start(url: str, *extra: str, python: str = TEST_PYTHON) -> int:
    return main(
        ["nodes", "start", "--hosts", OPENSSH_ALIAS, "--store", url, "--python", python, *extra]
    )


def test_daemons_outlive_the_connection_serve_and_stop(
    openssh_server: OpenSSHServer, ssh_env: SSHHome, pg_url: str, client_cache: Path
) -> None:
    assert main(["node", "--store", pg_url, "--init"]) == 0
    assert _start(pg_url, "--workers", "1", "--daemons", "2") == 0
    records = _recorded(openssh_server)
    assert len(records) == 2
    family = _family(set(records))
    # start returned, so its SSH connection is closed: the daemons run on, detached.
    for pid in records:
        process = psutil.Process(pid)
        assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        assert os.getsid(pid) == pid  # the leader of its own session (setsid)
    project = commit_project(
        DOUBLE, "double", [(i,) for i in range(40)], store=pg_url, queue=True, reuse=False
    )
    assert project.wait(PROJECT_TIMEOUT), project.counts()
    assert [value for _, value in project.results()] == [2 * i for i in range(40)]
    store = open_store(pg_url, create=False)
    try:
        assert {row.pid for row in store.nodes() if row.state == "running"} == set(records)
    finally:
        store.close()
    # stop without --hosts: the hosts start remembered.
    assert main(["nodes", "stop", "--python", TEST_PYTHON]) == 0
    assert wait_until_gone(family, GONE_TIMEOUT) == set()
    assert _recorded(openssh_server) == {}


def test_a_store_without_the_queue_schema_starts_nothing(
    openssh_server: OpenSSHServer,
    ssh_env: SSHHome,
    pg_url: str,
    client_cache: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = set(_recorded(openssh_server))
    assert _start(pg_url, "--workers", "1") == 1
    said = capsys.readouterr().err
    assert OPENSSH_ALIAS in said and "the daemon did not start" in said and "--init" in said
    assert set(_recorded(openssh_server)) == before


def test_a_host_python_without_psycopg_is_told_the_command(
    openssh_server: OpenSSHServer,
    ssh_env: SSHHome,
    pg_url: str,
    client_cache: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bare = "/usr/bin/python3"  # Debian's python3: no psycopg (checked below)
    if not Path(bare).exists():
        pytest.fail(f"{bare} is missing: install the python3 package")
    done = psutil.Popen([bare, "-c", "import psycopg"], stderr=-3)
    if done.wait(60) == 0:
        pytest.fail(f"{bare} has psycopg; this test needs an interpreter without it")
    before = set(_recorded(openssh_server))
    assert _start(pg_url, python=bare) == 1
    said = capsys.readouterr().err
    assert f"{bare} -m pip install --user 'psycopg[binary]'" in said
    assert set(_recorded(openssh_server)) == before
