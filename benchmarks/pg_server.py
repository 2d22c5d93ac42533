"""A throwaway PostgreSQL server for the queue benchmarks, and what its processes cost.

The same recipe as the tests' fixture (``tests/fixtures_pg.py``, which benchmarks do not
import): ``initdb`` into a temporary directory, run as an unprivileged user (PostgreSQL
refuses root), listen on loopback only, stop with ``pg_ctl -m fast`` and remove the
directory. ``server_cpu_seconds`` sums the user and system CPU time of the postmaster and
every process it forked (the backends that serve the consumers, and the server's own
background workers), read from ``/proc``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The unprivileged account that owns the benchmark's cluster when run as root (the tests
# use the same one).
PG_USER = "cjpg"
# Seconds pg_ctl may take to start or stop the server.
PG_CTL_TIMEOUT = 60
# Connections the server accepts: 50 idle consumers of Q3 plus their pools and ours, with
# room to spare (each idle connection costs the server a few MB, nothing else).
MAX_CONNECTIONS = 400


@dataclass(frozen=True)
class Server:
    """A running server: its URL (database ``postgres``) and its data directory."""

    url: str
    data: Path

    def postmaster_pid(self) -> int:
        """The PID of the server's main process (first line of ``postmaster.pid``)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])


def _bin_dir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit(
            "PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/initdb): "
            "run .ci/install-system-deps (installs the postgresql package)"
        )
    return os.path.dirname(found[-1])


def _as_pg_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *command] if os.geteuid() == 0 else command


def _ensure_user() -> None:
    if os.geteuid() != 0:
        return
    if subprocess.run(["id", "-u", PG_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-r", "-m", PG_USER], check=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT + 10)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def _pg_ctl(bin_dir: str, data: str, *args: str) -> list[str]:
    return _as_pg_user([f"{bin_dir}/pg_ctl", "-D", data, "-t", str(PG_CTL_TIMEOUT), "-w", *args])


@contextmanager
def running_server(settings: str = "") -> Iterator[Server]:
    """Start a fresh server for the duration of the block, then stop it and remove it;
    ``settings``: more server options (``-c name=value ...``)."""
    bin_dir = _bin_dir()
    _ensure_user()
    base = tempfile.mkdtemp(prefix="cj-bench-pg-")
    if os.geteuid() == 0:
        shutil.chown(base, PG_USER)
    data, port = os.path.join(base, "data"), _free_port()
    _run(_as_pg_user([f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"]))
    options = (
        f"-k {base} -p {port} -c listen_addresses=127.0.0.1 -c max_connections={MAX_CONNECTIONS}"
        f" {settings}"
    )
    _run(_pg_ctl(bin_dir, data, "-o", options, "-l", os.path.join(base, "log"), "start"))
    try:
        yield Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", Path(data))
    finally:
        subprocess.run(
            _pg_ctl(bin_dir, data, "-m", "fast", "stop"),
            capture_output=True,
            timeout=PG_CTL_TIMEOUT + 10,
        )
        shutil.rmtree(base, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """Create an empty database ``name`` on the server of ``server_url`` (any of its
    databases) and return its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (index 0 = state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def server_cpu_ticks(server: Server) -> dict[int, int]:
    """utime + stime, in clock ticks, of the postmaster and each of its children, by PID."""
    root = server.postmaster_pid()
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # After the name: state, ppid, ..., utime is field 14 and stime 15 of the line.
        if fields is not None and (int(entry) == root or int(fields[1]) == root):
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """Server CPU seconds spent between two snapshots (a process born in between counts
    whole; one that ended in between is lost, which idle consumers do not cause)."""
    spent = sum(ticks - before.get(pid, 0) for pid, ticks in after.items())
    return spent / os.sysconf("SC_CLK_TCK")
