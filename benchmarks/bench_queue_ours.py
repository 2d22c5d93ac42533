"""Our side of the queue benchmark: ``map`` on the embedded default, and queue mode.

Queue mode (``ceranubis node`` daemons pulling from the store) lands with the
``ceranubis_jupyter.daemon`` sub-package; until it is there ``available()`` is false and
the benchmark measures only the peers and our ``map``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from ceranubis_jupyter import CeranubisExecutor

# Tasks that start the executor's nodes and ship the function before the timed map.
WARM_UP = 1000
NODE = (sys.executable, "-m", "ceranubis_jupyter.cli", "node")
# Q1's daemons (the issue's 2 daemons x 1 worker).
Q1_DAEMONS = 2
# Seconds a daemon may take to start (50 at once on a loaded 2-core machine), or to end.
DAEMON_TIMEOUT = 180.0
# Seconds between looks at the nodes table while daemons start.
READY_POLL = 0.1
# Seconds one Q1 sample may take before it counts as stuck.
Q1_TIMEOUT = 300.0
# Seconds between counts of unfinished arguments in Q1 (as for the peers' jobs).
POLL = 0.005
# Seconds between Q2 samples: the daemons go back to their idle wait first.
Q2_IDLE = 0.1
# The tiny task as source (committed by value, as a user's notebook cell would be).
TINY_SOURCE = "def inc(x):\n    return x + 1\n"
# Q2's task: returns the moment it started, by the clock of its host (this machine).
STAMP_SOURCE = "import time\n\ndef stamp(x):\n    return time.time()\n"


def available() -> bool:
    """Whether queue mode (the daemon) is in this checkout."""
    return not why_unavailable()


def why_unavailable() -> str:
    """Why our queue rows cannot be measured ("" when they can)."""
    if importlib.util.find_spec("ceranubis_jupyter.daemon") is None:
        return "ceranubis_jupyter.daemon (queue mode) is not in this checkout yet"
    return ""


def map_rate(fn: Callable[[int], int], tasks: int) -> float:
    """Our executor's ``map`` of ``tasks`` tiny calls on the embedded default: tasks/s
    (start-up and the function's first trip excluded)."""
    with CeranubisExecutor() as ex:
        list(ex.map(fn, range(WARM_UP)))
        started = time.perf_counter()
        values = list(ex.map(fn, range(tasks)))
        elapsed = time.perf_counter() - started
    assert values[-1] == tasks, "map returned wrong values"
    return tasks / elapsed


class Daemons:
    """``ceranubis node`` daemons on one store, started by us and ended by PID."""

    def __init__(
        self, url: str, count: int, workers: int, env: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.names = [f"bench-{os.getpid()}-{i}-{url.rsplit('/', 1)[-1]}" for i in range(count)]
        self.processes = [
            subprocess.Popen(
                [*NODE, "--store", url, "--workers", str(workers), "--name", name],
                stdin=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=None if env is None else {**os.environ, **env},
            )
            for name in self.names
        ]

    def wait_running(self) -> None:
        """Return once every daemon has its ``nodes`` row in state ``running``."""
        import psycopg

        deadline = time.monotonic() + DAEMON_TIMEOUT
        with psycopg.connect(self.url, autocommit=True) as connection:
            while time.monotonic() < deadline:
                row = connection.execute(
                    "SELECT count(*) FROM nodes WHERE state = 'running' AND name = ANY(%s)",
                    (self.names,),
                ).fetchone()
                if row is not None and row[0] == len(self.names):
                    return
                dead = [p.pid for p in self.processes if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"ceranubis node ended at start (PIDs {dead})")
                time.sleep(READY_POLL)
        raise RuntimeError(f"daemons not all running after {DAEMON_TIMEOUT:.0f} s")

    async def stop(self) -> None:
        """SIGTERM each, wait for it (bounded), SIGKILL what is left."""
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(DAEMON_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def init_queue(url: str) -> None:
    """Create the queue schema (``ceranubis node --init``)."""
    done = subprocess.run(
        [*NODE, "--store", url, "--init"], capture_output=True, text=True, timeout=DAEMON_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"ceranubis node --init failed: {done.stderr.strip()}")


def q1_queue(url: str, tasks: int) -> float:
    """One Q1 sample through the queue: commit -> every outcome stored; tasks/s."""
    from ceranubis_jupyter import commit_project

    started = time.perf_counter()
    project = commit_project(
        TINY_SOURCE, "inc", [(i,) for i in range(tasks)], store=url, queue=True, reuse=False
    )
    deadline = started + Q1_TIMEOUT
    # The project's row turns "done" when a node writes its last outcome: one row read per
    # look (counting the 20,000 arguments every 5 ms would load the server it measures).
    while project.state == "running":
        if time.perf_counter() > deadline:
            raise RuntimeError(f"our queue: Q1 not done after {Q1_TIMEOUT:.0f} s")
        time.sleep(POLL)
    elapsed = time.perf_counter() - started
    assert project.status() == (tasks, tasks), project.counts()
    return tasks / elapsed


# Q2's arguments: each sample's is new, so that no stored result is reused.
_Q2_SERIALS = itertools.count()


def q2_queue(url: str, samples: int) -> list[float]:
    """Q2 through the queue: commit of one task -> it starts (its own clock), in ms."""
    from ceranubis_jupyter import commit_project

    found = []
    for _ in range(samples):
        time.sleep(Q2_IDLE)
        sent = time.time()
        project = commit_project(STAMP_SOURCE, "stamp", [(next(_Q2_SERIALS),)], store=url,
                                 queue=True)  # fmt: skip
        if not project.wait(Q1_TIMEOUT):
            raise RuntimeError(f"our queue: Q2 task not done: {project.counts()}")
        found.append((project.results()[0][1] - sent) * 1000)
    return found


class OurQueue:
    """Q1 and Q2's two daemons x 1 worker on our store, alive across the rounds (``env``:
    more of the daemons' environment, e.g. a fast path turned off)."""

    def __init__(self, url: str, env: dict[str, str] | None = None) -> None:
        self.url = url
        init_queue(url)
        self.daemons = Daemons(url, Q1_DAEMONS, 1, env)

    def ready(self) -> None:
        """Wait for the daemons, and let them load the tiny function once."""
        self.daemons.wait_running()
        q1_queue(self.url, WARM_UP)

    def q1(self, tasks: int) -> float:
        return q1_queue(self.url, tasks)

    def q2(self, samples: int) -> list[float]:
        return q2_queue(self.url, samples)

    async def stop(self) -> None:
        await self.daemons.stop()


async def idle_daemons(url: str, count: int) -> Daemons:
    """Start Q3's idle daemons (1 worker each) and wait until they all run."""
    daemons = Daemons(url, count, 1)
    try:
        daemons.wait_running()
    except BaseException:
        await daemons.stop()
        raise
    return daemons
