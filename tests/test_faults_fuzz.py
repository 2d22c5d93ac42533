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
import pickle
import sys
from collections.abc import Iterator
from concurrent.futures import wait
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
from ceranubis_jupyter.errors import RemoteProtocolError, TaskError, VersionMismatch
from ceranubis_jupyter.wire import protocol as p
from ceranubis_jupyter.wire.serialize import RemoteException
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
# "early" mode, garbage instead of its Hello; in "results:<status>" mode, a well-formed
# Results frame answering each task it gets with that status and the garbage as payload).
# A restarted fake (its record file exists) leaves at once, or in results mode stays
# without a Hello until its input closes (so its host's error stays the first one): only
# the first one is the test.
FAKE_NODE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from ceranubis_jupyter.wire import protocol as p
garbage, record, early = bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4] == "early"
answer = int(sys.argv[4].split(":")[1]) if sys.argv[4].startswith("results:") else None
if os.path.exists(record):
    while answer is not None and os.read(0, 1 << 20):
        pass
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
while not tasks or answer is not None:
    data = os.read(0, 1 << 20)
    if not data:
        sys.exit(0)
    conn.receive_data(data)
    while (message := conn.next_event()) is not None:
        if isinstance(message, p.Tasks):
            tasks += [task.task_id for task in message.tasks]
            if answer is not None:
                with open(record, "w") as out:
                    out.write(" ".join(map(str, tasks)))
                results = [p.Result(t.task_id, answer, p.PICKLE, garbage) for t in message.tasks]
                os.write(1, b"".join(bytes(c) for c in conn.send(p.Results(tuple(results)))))
with open(record, "w") as out:
    out.write(" ".join(map(str, tasks)))
os.write(1, garbage)
while os.read(0, 1 << 20):
    pass
"""


class FakeNodeTransport(Transport):
    """Starts the fake node over pipes, exactly as the local transport starts a real one."""

    def __init__(
        self,
        host: str,
        garbage: bytes,
        record: Path,
        early: bool = False,
        answer: int | None = None,
    ) -> None:
        self.host = host
        self.workers = 1
        self.garbage = garbage
        self.record = record
        self.mode = "early" if early else "after-hello"
        if answer is not None:
            self.mode = f"results:{answer}"

    async def start(self) -> Channel:
        argv = [
            sys.executable,
            "-c",
            FAKE_NODE,
            _PACKAGE_PARENT,
            self.garbage.hex(),
            str(self.record),
            self.mode,
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
        st.integers(min_value=p.MAX_CONTROL_FRAME + 1, max_value=2**64 - 1),
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


# Results frames that are well-formed but whose payload breaks the client's handling:
# (status, payload, what the host's error then says).
_NOT_A_REPORT = "is not a crash report"
MALFORMED_RESULTS = {
    "crash report not JSON": (p.CRASHED, b"\xffnot json", "is not JSON"),
    "crash report a JSON list": (p.CRASHED, b"[9, 1234]", _NOT_A_REPORT),
    "crash report with a text exit code": (p.CRASHED, b'{"exitcode": "nine"}', _NOT_A_REPORT),
    "raised an int, not an exception": (p.RAISED, pickle.dumps(7), "is a pickled int"),
    # Unpickles as a RemoteException whose frames are not a list: formatting it fails in a
    # way nothing checks for, the path of any unexpected error.
    "raised a broken remote exception": (
        p.RAISED,
        pickle.dumps(RemoteException(None, "E", "m", 5, "E: m")),  # type: ignore[arg-type]
        "handling its messages failed (TypeError",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_RESULTS))
def test_a_malformed_result_drops_the_node_and_its_tasks_run_elsewhere(
    case: str, tmp_path: Path, client_log: Records
) -> None:
    status, payload, said = MALFORMED_RESULTS[case]
    host, record = "fake-results", tmp_path / "fake-results"
    with CeranubisExecutor(max_workers=2) as executor:
        tasks = TaskRecords(executor)
        assert executor.submit(triple, 1).result(timeout=STEP_TIMEOUT) == 3
        fake = FakeNodeTransport(host, payload, record, answer=status)
        executor.scheduler.add_hosts_threadsafe([fake])
        wait_for(lambda: info(executor, host).state == "ready", STEP_TIMEOUT, "fake ready")
        futures = [executor.submit(triple, x) for x in range(TASKS)]
        assert [f.result(timeout=STEP_TIMEOUT) for f in futures] == [3 * x for x in range(TASKS)]
        taken = {int(t) for t in record.read_text().split()}
        assert taken and taken <= {tasks.task_id(f) for f in futures}
        assert all(tasks.of(f).host == "local" for f in futures if tasks.task_id(f) in taken)
        wait_for(lambda: info(executor, host).state == "failed", STEP_TIMEOUT, "fake dropped")
        error = info(executor, host).error
        assert error.startswith(f"{host}: ") and said in error, error
        logged = [r.getMessage() for r in client_log.records if r.levelno >= logging.ERROR]
        assert any(m.startswith(f"[host={host}] ") for m in logged), logged
        assert not any("a bug in ceranubis" in m for m in logged), logged
        assert info(executor, "local").state == "ready"


def test_a_raised_exception_that_does_not_unpickle_fails_only_its_task(tmp_path: Path) -> None:
    """Not a broken node: a user's exception class that will not unpickle here (say, one
    whose ``__init__`` takes two arguments) is the task's own error, and re-running it
    elsewhere would end the same way."""
    host, record = "fake-raised", tmp_path / "fake-raised"
    with CeranubisExecutor(max_workers=2) as executor:
        tasks = TaskRecords(executor)
        fake = FakeNodeTransport(host, b"\x80\x05not a pickle", record, answer=p.RAISED)
        executor.scheduler.add_hosts_threadsafe([fake])
        wait_for(lambda: info(executor, host).state == "ready", STEP_TIMEOUT, "fake ready")
        futures = [executor.submit(triple, x) for x in range(TASKS)]
        wait(futures, timeout=STEP_TIMEOUT)
        assert all(f.done() for f in futures)
        on_fake = [f for f in futures if tasks.of(f).host == host]
        assert on_fake, "the fake node got none of the tasks"
        for future in on_fake:
            error = future.exception()
            assert isinstance(error, TaskError) and "could not be unpickled" in str(error)
            assert host in str(error)
        assert all(f.result() == 3 * x for x, f in enumerate(futures) if f not in on_fake)
        assert info(executor, host).state == "ready"
