"""Queue mode on PostgreSQL only: a server restart, a network-namespace node, roles.

This module runs its own PostgreSQL server (it stops and starts it) that listens on
loopback and on the host end of a veth to a network namespace (198.18.0.0/15 only, named
with this run's PID), where one node daemon runs: it reaches the server over the veth,
and the test cuts it off by taking the namespace's end down (no FIN, no RST). Everything
is torn down in the fixtures' ``finally``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from ceranubis_jupyter import Project, commit_project
from ceranubis_jupyter.projects.stores import open_store
from tests.fixtures_pg import PG_CTL_TIMEOUT, PG_USER
from tests.queue_helpers import CODE, DAEMON_SECONDS, PROJECT_SECONDS, Daemons, commit_in_child
from tests.waiting import wait_for

# Its own PostgreSQL server, reachable from a network namespace (fixtures below).
pytestmark = [pytest.mark.postgres, pytest.mark.netns, pytest.mark.slow]

# Third octets tried for this module's /24 (198.18.N.0/24).
OCTETS = range(10, 250)
BIG_PROJECT = 2000


@dataclass
class Namespace:
    """A network namespace joined to us by a veth: we are ``host_address`` on it."""

    netns: str
    link: str
    host_address: str


@dataclass
class Server:
    """A PostgreSQL server this module owns (it may stop and start it)."""

    bin_dir: str
    data: str
    base: str
    port: int
    listen: str

    def ctl(self, *args: str) -> None:
        command = [f"{self.bin_dir}/pg_ctl", "-D", self.data, "-w", "-t", str(PG_CTL_TIMEOUT),
                   *args]  # fmt: skip
        if os.geteuid() == 0:
            command = ["runuser", "-u", PG_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT + 10)
        assert done.returncode == 0, f"pg_ctl {args} failed: {done.stdout}{done.stderr}"

    def start(self) -> None:
        options = f"-k {self.base} -p {self.port} -c listen_addresses='{self.listen}'"
        self.ctl("-o", options, "-l", os.path.join(self.base, "log"), "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")

    def url(self, database: str, host: str = "127.0.0.1", user: str = "postgres") -> str:
        return f"postgresql://{user}@{host}:{self.port}/{database}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _free_octet() -> int:
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    start = (os.getpid() * 7) % len(OCTETS)
    for i in range(len(OCTETS)):
        octet = OCTETS[(start + i) % len(OCTETS)]
        if f"198.18.{octet}." not in used:
            return octet
    raise AssertionError("no free /24 left in 198.18.0.0/16")


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    octet = _free_octet()
    prefix = f"cq{os.getpid()}"
    netns, link = f"{prefix}n", f"{prefix}v"
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
        _ip("link", "set", f"{link}p", "netns", netns)
        _ip("addr", "add", f"198.18.{octet}.1/24", "dev", link)
        _ip("link", "set", link, "up")
        inside = ("netns", "exec", netns, "ip")
        _ip(*inside, "addr", "add", f"198.18.{octet}.2/24", "dev", f"{link}p")
        _ip(*inside, "link", "set", f"{link}p", "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield Namespace(netns, link, f"198.18.{octet}.1")
    finally:
        for args in (("netns", "del", netns), ("link", "del", link)):
            subprocess.run(["ip", *args], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def server(namespace: Namespace) -> Iterator[Server]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL server binaries are missing: run .ci/install-system-deps"
    bin_dir = os.path.dirname(found[-1])
    base = tempfile.mkdtemp(prefix="cj-qpg-")
    if os.geteuid() == 0:
        shutil.chown(base, PG_USER)
    data = os.path.join(base, "data")
    initdb = [f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"]
    if os.geteuid() == 0:
        initdb = ["runuser", "-u", PG_USER, "--", *initdb]
    subprocess.run(initdb, check=True, capture_output=True, timeout=PG_CTL_TIMEOUT)
    with open(os.path.join(data, "pg_hba.conf"), "a") as hba:
        hba.write("host all all 198.18.0.0/15 trust\n")  # the namespace node
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    running = Server(bin_dir, data, base, port, f"127.0.0.1,{namespace.host_address}")
    running.start()
    try:
        yield running
    finally:
        subprocess.run(
            ["runuser", "-u", PG_USER, "--", f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate",
             "stop"] if os.geteuid() == 0 else [f"{bin_dir}/pg_ctl", "-D", data, "-m",
             "immediate", "stop"],
            capture_output=True, timeout=PG_CTL_TIMEOUT,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database(server: Server) -> Iterator[str]:
    """A fresh database on the module's server, with the queue schema; its name."""
    name = f"cq_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}".encode())
    store = open_store(server.url(name))
    store.init_queue()
    store.close()
    yield name
    with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def _cut(namespace: Namespace, state: str) -> None:
    """Take the namespace's end of the veth down (a silent partition) or up again."""
    _ip("netns", "exec", namespace.netns, "ip", "link", "set", f"{namespace.link}p", state)


def test_three_daemons_one_in_a_namespace_finish_a_killed_committer_s_project(
    server: Server, namespace: Namespace, database: str, daemons: Daemons
) -> None:
    url = server.url(database)
    daemons.start(url, "local-a")
    daemons.start(url, "local-b")
    daemons.start(server.url(database, namespace.host_address), "netns-c", netns=namespace.netns)
    daemons.wait_serving(url, "local-a", "local-b", "netns-c")
    committer = commit_in_child(url, "where", f"[(i,) for i in range({BIG_PROJECT})]", "big")
    committer.send_signal(signal.SIGKILL)
    committer.wait(DAEMON_SECONDS)
    project = Project.load("big", url)
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    assert project.state == "done"
    results = sorted(project.results())
    assert [args for args, _ in results] == [(i,) for i in range(BIG_PROJECT)]
    assert all(value[0] == args[0] for args, value in results)
    ran_on = {value[1] for _, value in results}
    assert ran_on <= {"local-a", "local-b", "netns-c"}


def test_daemons_reconnect_after_a_server_restart_and_lose_nothing(
    server: Server, database: str, daemons: Daemons, tmp_path: Path
) -> None:
    url = server.url(database)
    marks = tmp_path / "marks"
    marks.mkdir()
    nodes = [daemons.start(url, name) for name in ("r1", "r2")]
    daemons.wait_serving(url, "r1", "r2")
    project = commit_project(CODE, "nap", [(i, 0.2, str(marks)) for i in range(60)],
                             store=url, queue=True)  # fmt: skip
    wait_for(lambda: len(list(marks.iterdir())) >= 4, PROJECT_SECONDS, "some tasks ran")
    server.stop()
    server.start()
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    assert project.state == "done"
    assert sorted(project.results()) == [((i, 0.2, str(marks)), i) for i in range(60)]
    assert all(node.process.poll() is None for node in nodes), daemons.logs()


def test_a_cut_off_namespace_daemon_loses_its_lease_and_its_late_outcomes_are_dropped(
    server: Server, namespace: Namespace, database: str, daemons: Daemons, tmp_path: Path
) -> None:
    url = server.url(database)
    marks = tmp_path / "marks"  # the namespace shares our file system
    marks.mkdir()
    daemons.start(server.url(database, namespace.host_address), "cut", netns=namespace.netns)
    daemons.wait_serving(url, "cut")
    project = commit_project(CODE, "nap", [(i, 3, str(marks)) for i in range(4)],
                             store=url, queue=True)  # fmt: skip
    wait_for(lambda: any(marks.iterdir()), DAEMON_SECONDS, "a task running on the cut node")
    _cut(namespace, "down")
    try:
        daemons.start(url, "rescuer", workers=2)
        assert project.wait(PROJECT_SECONDS), daemons.logs()
    finally:
        _cut(namespace, "up")
    assert sorted(project.results()) == [((i, 3, str(marks)), i) for i in range(4)]
    store = open_store(url)
    try:

        def dropped() -> int:
            return {n.name: n.dropped for n in store.nodes()}.get("cut", 0)

        # Healed: it writes what it held, finds every row finished, and counts them.
        wait_for(lambda: dropped() > 0, PROJECT_SECONDS, f"late outcomes:\n{daemons.logs()}")
        rows = store.arguments(project.id, ["done"])
    finally:
        store.close()
    assert len(rows) == 4 and {r.host for r in rows} == {"rescuer"}


def _grant_nodes_role(url: str, role: str) -> None:
    """The nodes' role, as the README gives it (least privilege)."""
    statements = [
        f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT ON projects, queue_projects, ceranubis_meta TO {role}",
        f"GRANT UPDATE (state) ON projects TO {role}",
        f"GRANT UPDATE (next_id, lowered, rewound) ON queue_projects TO {role}",
        f"GRANT SELECT, UPDATE ON arguments TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON nodes, queue_leases TO {role}",
        f"GRANT USAGE ON SEQUENCE queue_leases_id_seq TO {role}",  # a daemon's lease row
    ]
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement.encode())


def test_a_daemon_works_under_the_nodes_role(
    server: Server, database: str, daemons: Daemons
) -> None:
    url = server.url(database)
    role = f"cj_node_{uuid.uuid4().hex[:8]}"
    _grant_nodes_role(url, role)
    with psycopg.connect(url, autocommit=True) as connection:
        # No temporary tables either: a daemon's flush of outcomes needs none.
        connection.execute(f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC".encode())
    try:
        daemons.start(server.url(database, user=role), "least", init=False)
        project = commit_project(CODE, "square", [(i,) for i in range(30)], store=url, queue=True)
        assert project.wait(PROJECT_SECONDS), daemons.logs()
        assert sorted(project.results()) == [((i,), i * i) for i in range(30)]
        node_url = server.url(database, user=role)
        with (
            psycopg.connect(node_url, autocommit=True) as connection,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            connection.execute(b"DELETE FROM projects")  # a node cannot remove projects
    finally:
        daemons.close()
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP OWNED BY {role}".encode())
            connection.execute(f"DROP ROLE {role}".encode())


def _grant_clients_role(url: str, role: str) -> None:
    """The clients' role, as the README gives it: commit, read, cancel, remove; no DDL."""
    statements = [
        f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON projects, arguments, queue_projects TO {role}",
        f"GRANT USAGE ON SEQUENCE projects_id_seq, arguments_id_seq TO {role}",
        f"GRANT SELECT ON nodes, ceranubis_meta TO {role}",
        f"GRANT SELECT, UPDATE (expires) ON queue_leases TO {role}",  # a commit's hand
    ]
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement.encode())


def test_a_client_commits_and_reads_under_the_clients_role(
    server: Server, database: str, daemons: Daemons
) -> None:
    url = server.url(database)
    role = f"cj_client_{uuid.uuid4().hex[:8]}"
    _grant_clients_role(url, role)
    client_url = server.url(database, user=role)
    try:
        daemons.start(url, "owner-node", init=False)
        project = commit_project(CODE, "square", [(i,) for i in range(5)], store=client_url,
                                 queue=True, name="by-client")  # fmt: skip
        assert project.wait(PROJECT_SECONDS), daemons.logs()
        assert Project.load("by-client", client_url).results() == [((i,), i * i) for i in range(5)]
    finally:
        daemons.close()
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP OWNED BY {role}".encode())
            connection.execute(f"DROP ROLE {role}".encode())


def test_a_commit_after_a_server_restart_goes_out_on_a_new_connection(
    server: Server, database: str
) -> None:
    url = server.url(database)
    first = commit_project(CODE, "square", [(1,)], store=url, queue=True)
    server.stop()
    server.start()
    # The process's shared store saw its idle connection closed: no error, nothing lost.
    second = commit_project(CODE, "square", [(2,)], store=url, queue=True)
    assert second.id > first.id and second.counts()["pending"] == 1
    assert Project.load(first.id, url).counts()["pending"] == 1
