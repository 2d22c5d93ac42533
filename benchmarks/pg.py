"""A throw-away PostgreSQL server on loopback for the store benchmarks (nothing from tests/).

:func:`postgres` runs ``initdb`` and ``pg_ctl start`` in a temporary folder (as an
unprivileged account when we are root: PostgreSQL refuses root), yields the URL of its
``postgres`` database, and stops it after. ``None`` when the server binaries are missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

# The unprivileged account that owns the cluster when the benchmark runs as root.
PG_USER = "cjpg"
# Seconds pg_ctl may take to start or stop the server.
PG_CTL_TIMEOUT = 60


def _as_pg_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    """A running server: its URL and its data folder."""

    url: str
    data: str

    def cpu_seconds(self) -> float:
        """CPU seconds the server used so far: the postmaster, its ended backends (reaped
        by it) and its live ones; what the store costs a machine beside the client."""
        with open(os.path.join(self.data, "postmaster.pid")) as pid_file:
            postmaster = psutil.Process(int(pid_file.readline()))
        times = postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in postmaster.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total


@contextlib.contextmanager
def postgres() -> Iterator[Server | None]:
    """A running server, or ``None`` without PostgreSQL's server binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        yield None
        return
    bin_dir = os.path.dirname(found[-1])
    if os.geteuid() == 0 and subprocess.run(["id", "-u", PG_USER], capture_output=True).returncode:
        subprocess.run(["useradd", "-r", "-m", PG_USER], check=True, timeout=30)
    base = tempfile.mkdtemp(prefix="cj-bench-pg-")
    if os.geteuid() == 0:
        shutil.chown(base, PG_USER)
    data, port = os.path.join(base, "data"), _free_port()
    ctl = [f"{bin_dir}/pg_ctl", "-D", data, "-t", str(PG_CTL_TIMEOUT), "-w"]
    try:
        _run([f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"])
        options = f"-k {base} -p {port} -c listen_addresses=127.0.0.1"
        _run([*ctl, "-o", options, "-l", os.path.join(base, "log"), "start"])
        yield Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", data)
    finally:
        subprocess.run(
            _as_pg_user([*ctl, "-m", "fast", "stop"]),
            capture_output=True,
            timeout=PG_CTL_TIMEOUT + 10,
        )
        shutil.rmtree(base, ignore_errors=True)


def _run(command: list[str]) -> None:
    done = subprocess.run(
        _as_pg_user(command), capture_output=True, text=True, timeout=PG_CTL_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
