"""A fake node that speaks the real handshake, takes tasks, then sends garbage.

The peer is fake, the client is real: one executor with a real local node gets fake hosts
added one by one. Each fake says ``Hello``, waits for a batch of tasks, writes it down, then
writes bytes from hypothesis that the protocol must refuse. The client must stay up, log a
``RemoteProtocolError`` naming that host, drop only that node, and finish the fake's tasks
on the real node. A fake that sends garbage instead of its Hello fails its host alone.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.link import HostInfo
from ceranubis_jupyter.cluster.transport import (
    NODE_MARKER,
    Channel,
    Transport,
    start_process_channel,
)
from ceranubis_jupyter.errors import RemoteProtocolError, VersionMismatch
from ceranubis_jupyter.wire import protocol as p
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import wait_for

# Fake nodes tried per run (each costs a fraction of a second).
EXAMPLES = 10
# Seconds for a fake node to be ready, be dropped, and for the results to come back.
STEP_TIMEOUT = 30.0
# Fake nodes that send garbage instead of their Hello.
EARLY_EXAMPLES = 5
# Tasks submitted while a fake node is up (some go to it, some to the real node).
TASKS = 12
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])

# The fake node: the real handshake with the real protocol module, then garbage (or, in
# "early" mode, garbage instead of its Hello). A restarted fake (its record file exists)
# leaves at once: only the first one is the test.
FAKE_NODE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from ceranubis_jupyter.wire import protocol as p
garbage, record, early = bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4] == "early"
if os.path.exists(record):
    sys.exit(0)
if early:
    open(record, "w").close()
    os.write(1, garbage)
    while os.read(0, 1 << 20):
        pass
    sys.exit(0)
conn = p.Connection(p.NODE)
version = "%d.%d.%d" % sys.version_info[:3]
hello = p.Hello(p.PROTOCOL_VERSION, version, "0", "fake", 1, os.getpid())
os.write(1, b"".join(bytes(c) for c in conn.send(hello)))
tasks = []
while not tasks:
    data = os.read(0, 1 << 20)
    if not data:
        sys.exit(0)
    conn.receive_data(data)
    while (message := conn.next_event()) is not None:
        if isinstance(message, p.Tasks):
            tasks += [task.task_id for task in message.tasks]
with open(record, "w") as out:
    out.write(" ".join(map(str, tasks)))
os.write(1, garbage)
while os.read(0, 1 << 20):
    pass
"""


class FakeNodeTransport(Transport):
    """Starts the fake node over pipes, exactly as the local transport starts a real one."""

    def __init__(self, host: str, garbage: bytes, record: Path, early: bool = False) -> None:
        self.host = host
        self.workers = 1
        self.garbage = garbage
        self.record = record
        self.early = early

    async def start(self) -> Channel:
        argv = [
            sys.executable,
            "-c",
            FAKE_NODE,
            _PACKAGE_PARENT,
            self.garbage.hex(),
            str(self.record),
            "early" if self.early else "after-hello",
            NODE_MARKER,  # the leak check covers fakes too
        ]
        return await start_process_channel(self.host, argv, new_session=False)


class Records(logging.Handler):
    """Keeps the client's log records (hypothesis runs many examples in one test call)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@by_value
def triple(x: int) -> int:
    import time

    time.sleep(0.02)  # busy long enough that the real node is not always the idlest
    return 3 * x


def refused(garbage: bytes, after_hello: bool = True) -> bool:
    """Whether the protocol itself refuses ``garbage`` (sans-IO, no client): as a plain
    protocol error, not as a version mismatch (which the client reports differently)."""
    conn = p.Connection(p.CLIENT)
    hello = p.Hello(p.PROTOCOL_VERSION, "3.11.0", "0", "fake", 1, 1)
    opening = b"".join(bytes(c) for c in p.encode(hello)) if after_hello else b""
    conn.receive_data(opening + garbage)
    try:
        while conn.next_event() is not None:
            pass
    except VersionMismatch:
        return False
    except RemoteProtocolError:
        return True
    return False


_KINDS = st.integers(min_value=0, max_value=255)
GARBAGE = st.one_of(
    st.binary(min_size=p.HEADER.size, max_size=200).filter(lambda b: b[0] != p.MAGIC),
    st.builds(
        lambda kind, body: p.HEADER.pack(p.MAGIC, kind, len(body)) + body,
        _KINDS,
        st.binary(max_size=200),
    ),
    st.builds(
        lambda kind, length, tail: p.HEADER.pack(p.MAGIC, kind, length) + tail,
        _KINDS,
        st.integers(min_value=p.MAX_FRAME + 1, max_value=2**64 - 1),
        st.binary(max_size=20),
    ),
)


@pytest.fixture
def client_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("ceranubis")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def info(executor: CeranubisExecutor, host: str) -> HostInfo:
    found = [i for i in executor.hosts() if i.host == host]
    return found[0] if found else HostInfo(host)


def test_garbage_from_a_node_drops_only_that_node(tmp_path: Path, client_log: Records) -> None:
    names = (f"fake-{n}" for n in itertools.count(1))
    with CeranubisExecutor(max_workers=2) as executor:
        tasks = TaskRecords(executor)
        assert executor.submit(triple, 1).result(timeout=STEP_TIMEOUT) == 3

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
        )
        @given(garbage=GARBAGE)
        def one_fake_node(garbage: bytes) -> None:
            assume(refused(garbage))
            host = next(names)
            record = tmp_path / host
            executor.scheduler.add_hosts_threadsafe([FakeNodeTransport(host, garbage, record)])
            wait_for(lambda: info(executor, host).state == "ready", STEP_TIMEOUT, "fake ready")
            futures = [executor.submit(triple, x) for x in range(TASKS)]
            assert [f.result(timeout=STEP_TIMEOUT) for f in futures] == [
                3 * x for x in range(TASKS)
            ]
            assert record.exists(), "the fake node got no task"
            taken = {int(t) for t in record.read_text().split()}
            ours = {tasks.task_id(f) for f in futures}
            assert taken and taken <= ours, "the fake node got none of the tasks"
            assert all(tasks.of(f).host == "local" for f in futures if tasks.task_id(f) in taken), (
                "the fake's tasks finished on the real node"
            )
            wait_for(lambda: info(executor, host).state != "ready", STEP_TIMEOUT, "fake dropped")
            logged = [r.getMessage() for r in client_log.records if r.levelno >= logging.ERROR]
            assert any(f"[host={host}] RemoteProtocolError" in m for m in logged), logged
            said = [r.getMessage() for r in client_log.records]
            assert any(f"[host={host}]" in m and "malformed frame" in m for m in said), said
            assert info(executor, "local").state == "ready"
            executor.remove_hosts(host, drain=False)

        one_fake_node()
        assert executor.submit(triple, 5).result(timeout=STEP_TIMEOUT) == 15
        hosts = {i.host for i in executor.hosts()}
    assert hosts == {"local"}
    created = sorted(os.listdir(tmp_path))
    assert len(created) >= 3, f"too few fake nodes ran: {created}"
    print(f"{len(created)} fake nodes dropped")


def test_garbage_instead_of_a_hello_fails_only_that_host(
    tmp_path: Path, client_log: Records
) -> None:
    names = (f"early-{n}" for n in itertools.count(1))
    with CeranubisExecutor(max_workers=1) as executor:

        @settings(
            max_examples=EARLY_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
        )
        @given(garbage=GARBAGE)
        def one_fake_node(garbage: bytes) -> None:
            assume(refused(garbage, after_hello=False))
            host = next(names)
            fake = FakeNodeTransport(host, garbage, tmp_path / host, early=True)
            executor.scheduler.add_hosts_threadsafe([fake])
            wait_for(lambda: info(executor, host).state == "failed", STEP_TIMEOUT, "fake failed")
            assert "malformed frame" in info(executor, host).error
            logged = [r.getMessage() for r in client_log.records if r.levelno >= logging.ERROR]
            assert any(f"[host={host}] RemoteProtocolError" in m for m in logged), logged
            assert executor.submit(triple, 2).result(timeout=STEP_TIMEOUT) == 6
            executor.remove_hosts(host, drain=False)

        one_fake_node()
        assert {i.host for i in executor.hosts()} == {"local"}
    assert len(os.listdir(tmp_path)) >= 3, "too few fake nodes ran"
