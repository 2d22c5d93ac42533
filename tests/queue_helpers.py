"""Queue-mode test helpers: node daemons as real processes, and the projects they run.

Each daemon is ``python -m ceranubis_jupyter.cli node`` in its own process (optionally
inside a network namespace), with its log in a file the test's failure message quotes.
Every daemon a test starts is ended in :meth:`Daemons.close` by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ceranubis_jupyter.projects.stores import open_store
from tests.waiting import wait_for

# Short leases so a lost node's work moves on quickly here (outcomes are asserted, not
# timings).
TEST_LEASE = 2.0
# Seconds a daemon may take to start, or to stop after SIGTERM.
DAEMON_SECONDS = 60.0
# Seconds a queued project of the tests may take to finish (within pytest's timeout).
PROJECT_SECONDS = 90.0
REPO = Path(__file__).resolve().parent.parent

# The code of the tests' projects (run by the daemons from the store).
CODE = """
import os, time

def square(x):
    return x * x

def nap(x, seconds, directory):
    open(os.path.join(directory, f"{x}.{os.getpid()}"), "w").close()
    time.sleep(seconds)
    return x

def where(x):
    import socket
    return x, os.environ.get("CJ_NODE_NAME", "?")

def hold(x, path):
    for _ in range(6000):  # until the test makes the file (at most a minute)
        if os.path.exists(path):
            return x * 10
        time.sleep(0.01)
    raise TimeoutError(path)
"""


@dataclass
class Daemon:
    """A node daemon process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Daemons:
    """Starts node daemons for one test and ends them all (by PID) at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Daemon] = []

    def start(
        self,
        url: str,
        name: str,
        *,
        workers: int = 1,
        lease: float = TEST_LEASE,
        group: str = "",
        netns: str | None = None,
        init: bool = True,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> Daemon:
        """Start ``ceranubis node`` on ``url`` (inside ``netns`` when given), once the
        store has its queue schema (as its owner makes it: ``ceranubis node --init``;
        ``init=False``: the test made it); ``extra``: more of its options; ``env``: more
        of its environment."""
        if init:
            store = open_store(url)
            try:
                store.init_queue()
            finally:
                store.close()
        command = [sys.executable, "-m", "ceranubis_jupyter.cli", "node", "--store", url,
                   "--workers", str(workers), "--name", name, "--lease", str(lease)]  # fmt: skip
        if group:
            command += ["--group", group]
        command += extra
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        env = dict(os.environ, PYTHONPATH=str(REPO), CJ_NODE_NAME=name, **(env or {}))
        log = self.directory / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        daemon = Daemon(name, process, log)
        self.started.append(daemon)
        return daemon

    def wait_serving(self, url: str, *names: str) -> None:
        """Wait until each named daemon's heartbeat row says running."""
        store = open_store(url, create=False)
        try:

            def serving() -> bool:
                rows = {row.name: row.state for row in store.nodes()}
                return all(rows.get(name) == "running" for name in names)

            wait_for(serving, DAEMON_SECONDS, f"daemons {names} serving:\n{self.logs()}")
        finally:
            store.close()

    def stop(self, daemon: Daemon, stop_signal: int = signal.SIGTERM) -> int:
        """SIGTERM (or ``stop_signal``), then wait for the exit status."""
        daemon.process.send_signal(stop_signal)
        return daemon.process.wait(DAEMON_SECONDS)

    def kill(self, daemon: Daemon) -> None:
        """SIGKILL the daemon (its local node's processes notice and leave)."""
        daemon.process.kill()
        daemon.process.wait(DAEMON_SECONDS)

    def logs(self) -> str:
        return "\n".join(f"--- {d.name}\n{d.text()[-3000:]}" for d in self.started)

    def close(self) -> None:
        for daemon in self.started:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
        for daemon in self.started:
            try:
                daemon.process.wait(DAEMON_SECONDS)
            except subprocess.TimeoutExpired:
                _kill_tree(daemon.process.pid)
                daemon.process.wait(DAEMON_SECONDS)


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for process in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def commit_in_child(
    url: str, target: str, args: str, name: str, priority: int = 0, group: str = ""
) -> subprocess.Popen[bytes]:
    """Commit a queued project of :data:`CODE` from a new process, which then stays alive
    (so a test may SIGKILL it); returns the process once the project is in the store.
    ``args``: a Python expression of the argument list."""
    script = (
        "import sys, time\n"
        "from ceranubis_jupyter import commit_project\n"
        f"p = commit_project({CODE!r}, {target!r}, {args}, store={url!r}, queue=True, "
        f"name={name!r}, priority={priority}, group={group!r})\n"
        "print('committed', p.id, flush=True)\n"
        "time.sleep(3600)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert line.startswith("committed"), f"the committing process said {line!r}"
    return process


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Node daemons for one test, all ended (by PID) when it ends."""
    started = Daemons(tmp_path)
    try:
        yield started
    finally:
        started.close()
