"""The host's side of ``ceranubis nodes start|stop``: detached daemons and their PID files.

``cli/nodes_remote.py`` runs, over SSH, the node bootstrap (``cluster/bootstrap.BOOT``) with
the *daemon bundle* (the whole package plus dill, named by its digest, cached in the host's
``~/.cache/ceranubis`` like the node bundle) and ends it in :func:`start` or :func:`stop`
instead of the node's supervisor. Both read one JSON line of parameters from stdin (the
store URL travels there, never in a command line) and answer with lines:

- ``start``: checks that the store's driver is importable (``psycopg`` for PostgreSQL: it
  is not bundled, having compiled parts; else one ``E`` line says the command that
  installs it), then starts each daemon in a new session (``setsid``: no SSH hang-up or
  closed channel reaches it), its output in a log file, its PID and start time in
  ``~/.cache/ceranubis/daemons/<pid>.json``; waits until the daemon has checked its store,
  and says ``PID <pid>``, or ``E <why>`` with its log's last lines.
- ``stop``: SIGTERM to each recorded daemon still alive (the same PID *and* start time:
  a reused PID is never signalled), waits for them to exit (bounded), removes their
  files, and says ``R <json>``: which ended, which were gone already, which still run.

A started daemon (:func:`serve`) takes its store URL from the environment, drops it from
there before any worker starts, and runs :class:`~.node.QueueNode` until SIGTERM.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Where a host keeps its daemons' PID files and logs (under its ceranubis cache).
DAEMONS_DIR = "daemons"
# The environment variable that hands the store URL to a started daemon.
STORE_ENV = "CERANUBIS_NODE_STORE"
# Seconds a started daemon may take to open and check its store before start gives up on
# it (a loaded host imports slowly; a wrong URL fails at once, not after this).
READY_TIMEOUT = 60.0
# Seconds stop waits, by default, for the daemons to finish or release their tasks (a
# daemon drains its running tasks for up to 10 s).
STOP_TIMEOUT = 30.0
# Seconds between looks at /proc while stop waits.
STOP_POLL = 0.05
# Lines of a failed daemon's log that start reports.
LOG_TAIL_LINES = 5
# What a daemon says on its ready pipe once its store is checked.
READY_WORD = b"ready\n"
# The daemon process: the bundle first on sys.path, then serve() (argv: bundle, ready fd,
# workers, group, name).
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from ceranubis_jupyter.daemon.launch import serve; sys.exit(serve(sys.argv[2:]))"
)


def say(line: str) -> None:
    """One answer line to the client."""
    os.write(1, line.encode() + b"\n")


def daemons_dir() -> Path:
    """``$XDG_CACHE_HOME/ceranubis/daemons`` (default ``~/.cache``), made 0700."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(cache) / "ceranubis" / DAEMONS_DIR
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def driver_problem(store: str, python: str) -> str:
    """Why this host cannot reach ``store`` ("" when it can): a PostgreSQL URL needs
    psycopg, which the bundle does not carry (it has compiled parts)."""
    if not store.startswith(("postgresql://", "postgres://")):
        return ""
    import importlib.util
    import site

    if site.ENABLE_USER_SITE is not True:  # BOOT runs with -s; the daemon will not
        site.addsitedir(site.getusersitepackages())
    if importlib.util.find_spec("psycopg") is None:
        return (
            f"the PostgreSQL driver psycopg is not installed for {python} on this host; "
            f"install it with: {python} -m pip install --user 'psycopg[binary]'"
        )
    import importlib.metadata

    from ..projects.store_pg import PSYCOPG_AT_LEAST, release

    found = importlib.metadata.version("psycopg")
    if release(found) < PSYCOPG_AT_LEAST:
        return (
            f"the PostgreSQL driver psycopg on this host is {found}, older than 3.2; "
            f"upgrade it with: {python} -m pip install --user -U 'psycopg[binary]'"
        )
    return ""


def start() -> None:
    """The BOOT tail of ``nodes start`` (see the module's docstring)."""
    params = json.loads(sys.stdin.readline())
    problem = driver_problem(params["store"], sys.executable)
    if problem:
        say(f"E {problem}")
        sys.exit(8)
    for _ in range(int(params.get("count", 1))):
        pid, failure = _spawn(sys.path[0], params)
        if failure:
            say(f"E {failure}")
            sys.exit(9)
        say(f"PID {pid}")


def _spawn(bundle: str, params: dict[str, Any]) -> tuple[int, str]:
    """Start one detached daemon; its PID, and why it failed ("" when it is ready)."""
    directory = daemons_dir()
    log_path = directory / f"daemon-{time.time_ns()}.log"
    read_end, write_end = os.pipe()
    workers, group, name = (str(params.get(k) or "") for k in ("workers", "group", "name"))
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-E", "-c", _CHILD, bundle, str(write_end), workers, group, name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
            start_new_session=True,  # setsid: the SSH session's end does not reach it
            cwd=os.path.expanduser("~"),
            env={**os.environ, STORE_ENV: params["store"]},
        )
    os.close(write_end)
    record = {"pid": process.pid, "start": process_start(process.pid), "log": str(log_path)}
    (directory / f"{process.pid}.json").write_text(json.dumps(record))
    ready = _wait_ready(read_end)
    if ready:
        return process.pid, ""
    process.wait()  # it ended (or never said ready): reap it, forget it
    (directory / f"{process.pid}.json").unlink(missing_ok=True)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-LOG_TAIL_LINES:]
    return process.pid, f"the daemon did not start: {' | '.join(tail) or 'no output'}"


def _wait_ready(read_end: int) -> bool:
    """Whether the daemon said ready before it ended (or before READY_TIMEOUT)."""
    try:
        readable, _, _ = select.select([read_end], [], [], READY_TIMEOUT)
        return bool(readable) and os.read(read_end, len(READY_WORD)) == READY_WORD
    finally:
        os.close(read_end)


def serve(argv: list[str]) -> int:
    """A started daemon: ``argv`` = ready fd, workers, group, name (see :data:`_CHILD`)."""
    from ..errors import CeranubisError
    from .node import QueueNode

    ready_fd, workers, group, name = int(argv[0]), argv[1], argv[2], argv[3]
    store = os.environ.pop(STORE_ENV, "")  # the workers (and their tasks) do not inherit it
    try:
        node = QueueNode(
            store, workers=int(workers) if workers else None, group=group, name=name or None
        )
    except CeranubisError as error:
        print(f"ceranubis node: {error}", file=sys.stderr, flush=True)
        return 2
    os.write(ready_fd, READY_WORD)
    os.close(ready_fd)
    return node.serve()


def stop() -> None:
    """The BOOT tail of ``nodes stop`` (see the module's docstring)."""
    params = json.loads(sys.stdin.readline())
    timeout = float(params.get("timeout") or STOP_TIMEOUT)
    directory = daemons_dir()
    signalled, gone = [], []
    for path in sorted(directory.glob("*.json")):
        record = json.loads(path.read_text())
        pid = int(record["pid"])
        if process_start(pid) != record.get("start"):
            gone.append(pid)  # ended (or its PID now belongs to another process)
            _forget(path)
            continue
        os.kill(pid, signal.SIGTERM)
        signalled.append((pid, record, path))
    running = _wait_gone(signalled, timeout)
    for pid, _, path in signalled:
        if pid not in running:
            _forget(path)
    ended = [pid for pid, _, _ in signalled if pid not in running]
    say("R " + json.dumps({"ended": ended, "gone": gone, "running": sorted(running)}))


def _wait_gone(signalled: list[tuple[int, dict[str, Any], Path]], timeout: float) -> set[int]:
    """Wait (bounded) until every signalled daemon has exited; the PIDs still running."""
    deadline = time.monotonic() + timeout
    while True:
        running = {pid for pid, record, _ in signalled if process_start(pid) == record["start"]}
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(STOP_POLL)


def _forget(path: Path) -> None:
    """Remove a daemon's PID file and its log."""
    try:
        record = json.loads(path.read_text())
        Path(record.get("log", "")).unlink(missing_ok=True)
    except (OSError, ValueError):
        pass
    path.unlink(missing_ok=True)
