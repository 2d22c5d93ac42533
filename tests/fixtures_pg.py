"""A real PostgreSQL server for the store tests (testing.md §4), one per session.

The server runs as an unprivileged user (PostgreSQL refuses root), listens on loopback
only, and each test gets a fresh database. A missing server makes the tests fail with
what to install, never skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import pytest

# The unprivileged account that owns the test cluster when the tests run as root.
PG_USER = "cjpg"
# Seconds pg_ctl may take to start or stop the server.
PG_CTL_TIMEOUT = 60


def _pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/initdb); "
            "run .ci/install-system-deps (installs the postgresql package)",
            pytrace=False,
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
    done = subprocess.run(command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A running PostgreSQL server; yields the URL of its ``postgres`` database."""
    bin_dir = _pg_bin()
    _ensure_user()
    base = tempfile.mkdtemp(prefix="cj-pg-")
    if os.geteuid() == 0:
        shutil.chown(base, PG_USER)
    data, port = os.path.join(base, "data"), _free_port()
    _run(_as_pg_user([f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"]))
    options = f"-k {base} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=200"
    _run(
        _as_pg_user(
            [
                f"{bin_dir}/pg_ctl",
                "-D",
                data,
                "-o",
                options,
                "-l",
                os.path.join(base, "log"),
                "-t",
                str(PG_CTL_TIMEOUT),
                "start",
                "-w",
            ]
        )
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_pg_user(
                [
                    f"{bin_dir}/pg_ctl",
                    "-D",
                    data,
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(PG_CTL_TIMEOUT),
                    "stop",
                ]
            ),
            capture_output=True,
            timeout=PG_CTL_TIMEOUT + 10,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped after the test."""
    import psycopg

    name = f"cj_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_server, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: str) -> str:
    """A project store, once per back end: a new SQLite file, then a new PG database."""
    if request.param == "sqlite":
        return os.path.join(str(tmp_path), "store", "projects.sqlite")
    url: str = request.getfixturevalue("pg_url")
    return url
