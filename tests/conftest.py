"""Shared test set-up: a leak check after every test, plus fixture plugins per area."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ceranubis_jupyter.cluster.transport import NODE_MARKER, client_identity
from ceranubis_jupyter.config import CONFIG_ENV

# Fixture modules, one per area (ssh servers, postgres, jupyter), so areas stay apart.
pytest_plugins = [
    "tests.fixtures_ssh",
    "tests.fixtures_pg",
    "tests.fixtures_jupyter",
    "tests.fixtures_faults",
    "tests.queue_helpers",
]

# How long nodes get to go away after a test before they count as leaked.
LEAK_GRACE_SECONDS = 5.0


# Processes whose descendants this test run owns: the test process itself, plus every
# server a fixture starts (an sshd's sessions run nodes outside our own process tree).
# Fixtures add their server PIDs here; other runs' nodes on the same machine are ignored.
OWNED_ROOTS: set[int] = {os.getpid()}


def node_processes() -> set[int]:
    """PIDs of the ceranubis node and worker processes that this test run started."""
    pids = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(NODE_MARKER in part for part in cmdline) and _owned(process, cmdline):
            pids.add(process.info["pid"])
    return pids


# Nodes name their client in their command line: ours, even once orphaned (an sshd
# session that died hands its node to init, out of our process tree).
OUR_CLIENT_TAG = client_identity()


def _owned(process: psutil.Process, cmdline: list[str]) -> bool:
    if OUR_CLIENT_TAG in cmdline:
        return True
    try:
        return any(parent.pid in OWNED_ROOTS for parent in process.parents())
    except psutil.Error:
        return False


def wait_until_gone(pids: set[int], timeout: float = LEAK_GRACE_SECONDS) -> set[int]:
    """Wait for processes to end; returns those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _alive(pid)}
        if alive:
            time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_stray_nodes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves node or worker processes behind (loky-style leak check)."""
    before = node_processes()
    yield
    if request.node.get_closest_marker("allow_nodes_alive"):
        return
    leaked = wait_until_gone(node_processes() - before)
    assert not leaked, f"stray node/worker processes after the test: {sorted(leaked)}"


# Transports the executor tests run over; the SSH area adds "asyncssh" and "openssh" (the
# two servers, reached with asyncssh) and "openssh_client" (the sshd through the ssh binary)
# (each name N needs a fixture ``hosts_N`` returning the ``hosts`` argument of the executor).
TRANSPORTS = ["local", "asyncssh", "openssh", "openssh_client"]


@pytest.fixture
def hosts_local() -> None:
    """The embedded default: ``CeranubisExecutor(None)``."""
    return None


@pytest.fixture(params=TRANSPORTS)
def hosts(request: pytest.FixtureRequest) -> object:
    """The ``hosts`` argument for an executor, once per transport."""
    return request.getfixturevalue(f"hosts_{request.param}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_nodes_alive: the test hands running nodes to a later fixture"
    )
    for kind, what in SLOW_KINDS.items():
        config.addinivalue_line("markers", f"{kind}: {what} (also marked slow)")
    config.addinivalue_line("markers", "slow: needs a server, namespaces, a kernel or a browser")


# The long tests, by what they start; each is also marked ``slow``, so that
# ``pytest -m "not slow"`` is the quick subset (``make test`` runs everything).
SLOW_KINDS = {
    "ssh": "talks to a real sshd or asyncssh server",
    "netns": "builds hosts in network or PID namespaces",
    "postgres": "runs a real PostgreSQL server",
    "kernel": "runs notebooks in a real Jupyter kernel",
    "browser": "drives JupyterLab in a real Chromium",
}
_FIXTURE_KINDS = {
    "ssh_home": "ssh",
    "openssh_server": "ssh",
    "asyncssh_server": "ssh",
    "partition_hosts": "netns",
    "pid_namespace": "netns",
    "new_pid_namespace": "netns",
    "pg_server": "postgres",
    "pg_url": "postgres",
    "jupyterlab": "browser",
}
_PARAM_KINDS = {("hosts", "asyncssh"): "ssh", ("hosts", "openssh"): "ssh"}
_PARAM_KINDS[("hosts", "openssh_client")] = "ssh"
_PARAM_KINDS[("store_url", "postgresql")] = "postgres"
_MODULE_KINDS = {"test_notebooks": "kernel", "test_binder": "kernel"}


def _kinds(item: pytest.Item) -> set[str]:
    kinds = {_FIXTURE_KINDS[f] for f in getattr(item, "fixturenames", ()) if f in _FIXTURE_KINDS}
    callspec = getattr(item, "callspec", None)
    for (name, value), kind in _PARAM_KINDS.items():
        if callspec is not None and callspec.params.get(name) == value:
            kinds.add(kind)
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rsplit(".", 1)[-1] in _MODULE_KINDS:
        kinds.add(_MODULE_KINDS[module.__name__.rsplit(".", 1)[-1]])
    return kinds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kinds = _kinds(item)
        for kind in kinds:
            item.add_marker(kind)
        if kinds:
            item.add_marker("slow")


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test reads its own (absent) config file, never the user's
    ``~/.config/ceranubis/config.toml``; a test that wants one writes it there."""
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "ceranubis-config" / "config.toml"))
