"""A node passes a large one-task frame to an idle worker while the frame still arrives.

The tests speak the protocol to a real node process (the local transport's command) so
that they can stop half way through a frame: the worker must already be reading it, and
when that worker dies mid-frame the task must still run, once, elsewhere. The executor
test runs big and small tasks together over every transport.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import wait

import psutil
import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.transport import node_command
from ceranubis_jupyter.wire import protocol as p
from ceranubis_jupyter.wire.serialize import dumps_function
from tests.remote import by_value
from tests.waiting import loop_asleep, wait_for

# Seconds any step here may take.
DEADLINE = 30.0
# Bytes of the big argument: many pipe-fulls (1 MiB each), well over LARGE_FRAME.
BIG = 24 * 1024 * 1024


@by_value
def digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class NodeSpeaker:
    """A real node process and the client side of its protocol, driven by hand."""

    def __init__(self, cut_through: bool = True) -> None:
        self.process = subprocess.Popen(
            node_command(sys.executable), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.conn = p.Connection(p.CLIENT)
        assert isinstance(self.next_message(), p.Hello)
        config = p.Configure(
            protocol=p.PROTOCOL_VERSION,
            workers=2,
            heartbeat=0,
            silence_timeout=60,
            cut_through=cut_through,
        )
        self.send(config)
        self.send(p.Function(1, dumps_function(digest)))

    def send(self, message: p.Message) -> None:
        self.write(b"".join(bytes(chunk) for chunk in self.conn.send(message)))

    def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def next_message(self) -> p.Message:
        assert self.process.stdout is not None
        deadline = time.monotonic() + DEADLINE
        while (message := self.conn.next_event()) is None:
            assert time.monotonic() < deadline, "the node said nothing in time"
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                data = os.read(self.process.stdout.fileno(), 1 << 20)
                assert data, "the node ended"
                self.conn.receive_data(data)
        return message

    def results(self) -> Iterator[p.Result]:
        while True:
            message = self.next_message()
            if isinstance(message, p.Results):
                yield from message.results

    def workers(self) -> list[psutil.Process]:
        deadline = time.monotonic() + DEADLINE
        while len(children := psutil.Process(self.process.pid).children()) < 2:
            assert time.monotonic() < deadline, "the node did not start its workers"
            time.sleep(0.02)
        return children

    def close(self) -> None:
        self.process.kill()
        self.process.wait(DEADLINE)


def _read_by(worker: psutil.Process) -> int:
    """Bytes the process has read so far (``rchar``)."""
    return int(worker.io_counters().read_chars)


def _frame(task_id: int, data: bytes) -> bytes:
    task = p.Task(task_id, 1, p.ARGS, p.PICKLE, pickle.dumps((data,), protocol=5))
    return b"".join(bytes(chunk) for chunk in p.encode(p.Tasks((task,))))


def _half_sent(node: NodeSpeaker, frame: bytes) -> psutil.Process:
    """Send the first half of ``frame``; return the worker that reads it meanwhile."""
    workers = node.workers()
    before = {worker.pid: _read_by(worker) for worker in workers}
    node.write(frame[: len(frame) // 2])
    deadline = time.monotonic() + DEADLINE
    while True:
        for worker in workers:
            if _read_by(worker) - before[worker.pid] >= len(frame) // 3:
                return worker
        assert time.monotonic() < deadline, "no worker read the frame while it arrived"
        time.sleep(0.02)


@pytest.fixture
def node() -> Iterator[NodeSpeaker]:
    speaker = NodeSpeaker()
    try:
        yield speaker
    finally:
        speaker.close()


def test_a_worker_reads_a_big_task_while_it_still_arrives(node: NodeSpeaker) -> None:
    data = os.urandom(BIG)
    frame = _frame(7, data)
    _half_sent(node, frame)
    node.write(frame[len(frame) // 2 :])
    result = next(node.results())
    assert (result.task_id, result.status) == (7, p.OK)
    assert pickle.loads(bytes(result.payload)) == hashlib.sha256(data).hexdigest()


def test_a_worker_that_dies_mid_frame_leaves_its_task_to_another(node: NodeSpeaker) -> None:
    data = os.urandom(BIG)
    frame = _frame(8, data)
    reader = _half_sent(node, frame)
    os.kill(reader.pid, signal.SIGKILL)
    reader.wait(DEADLINE)
    node.write(frame[len(frame) // 2 :])
    node.send(p.Tasks((p.Task(9, 1, p.ARGS, p.PICKLE, pickle.dumps((b"small",))),)))
    results = {}
    for result in node.results():
        results[result.task_id] = result
        if len(results) == 2:
            break
    assert {r.status for r in results.values()} == {p.OK}, results
    assert pickle.loads(bytes(results[8].payload)) == hashlib.sha256(data).hexdigest()
    assert pickle.loads(bytes(results[9].payload)) == hashlib.sha256(b"small").hexdigest()


def test_tasks_requeued_mid_relay_do_not_go_into_the_relayed_frame(node: NodeSpeaker) -> None:
    # Worker A holds a sleeping task and one waiting; the other (idle) gets the big frame.
    # A dies mid-frame: its waiting task is queued again and must go to A's successor,
    # not into the pipe that is inside the relayed frame.
    node.send(p.Function(2, dumps_function(time.sleep)))
    small = [
        p.Task(task_id, 1, p.ARGS, p.PICKLE, pickle.dumps((b"%d" % task_id,)))
        for task_id in (2, 3, 4)
    ]
    sleeper = p.Task(1, 2, p.ARGS, p.PICKLE, pickle.dumps((DEADLINE,)))
    node.send(p.Tasks((sleeper, *small)))
    done = set()
    for result in node.results():
        done.add(result.task_id)
        if len(done) == 2:
            break
    data = os.urandom(BIG)
    frame = _frame(8, data)
    reader = _half_sent(node, frame)
    [holder] = [worker for worker in node.workers() if worker.pid != reader.pid]
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(DEADLINE)
    # The node buries A and gives its waiting task to A's successor, whose result comes
    # back while the relayed frame is still half sent (had the task gone into the relay's
    # pipe, it would never come back).
    waiting = (set(range(2, 5)) - done).pop()
    results = {}
    for result in node.results():
        results[result.task_id] = result
        if {1, waiting} <= set(results):
            break
    assert 8 not in results
    node.write(frame[len(frame) // 2 :])
    for result in node.results():
        results[result.task_id] = result
        if 8 in results:
            break
    assert results[1].status == p.CRASHED
    assert {results[8].status, results[waiting].status} == {p.OK}
    assert pickle.loads(bytes(results[8].payload)) == hashlib.sha256(data).hexdigest()


def test_big_and_small_tasks_interleave_on_every_transport(hosts: object) -> None:
    # Each big task may be relayed to an idle worker while small ones are dispatched to
    # the other: no frame may land inside the relayed one.
    blobs = [os.urandom(3_000_000 + i) for i in range(4)]
    with CeranubisExecutor(hosts, max_workers=2) as executor:  # type: ignore[arg-type]
        futures = []
        for index in range(200):
            if index % 50 == 0:
                futures.append((executor.submit(digest, blobs[index // 50]), blobs[index // 50]))
            futures.append((executor.submit(digest, b"%d" % index), b"%d" % index))
        wait([future for future, _ in futures], timeout=120)
        for future, data in futures:
            assert future.result(timeout=0) == hashlib.sha256(data).hexdigest()


def test_big_lone_tasks_sent_while_the_loop_sleeps_arrive_whole(hosts: object) -> None:
    # A lone task leaves from the submitting thread; a big one fills the channel's window
    # and the socket's buffer there, and the loop must carry on with the rest.
    with CeranubisExecutor(hosts, max_workers=2) as executor:  # type: ignore[arg-type]
        for size in (BIG, 5_000_000, BIG + 1):
            data = os.urandom(size)
            wait_for(lambda: loop_asleep(executor), DEADLINE, "the loop asleep at the submit")
            assert executor.submit(digest, data).result(60) == hashlib.sha256(data).hexdigest()


def test_with_cut_through_off_no_worker_reads_a_frame_before_it_is_whole() -> None:
    node = NodeSpeaker(cut_through=False)
    try:
        workers = node.workers()
        before = {worker.pid: _read_by(worker) for worker in workers}
        data = os.urandom(BIG)
        frame = _frame(7, data)
        node_before = _read_by(psutil.Process(node.process.pid))
        node.write(frame[: len(frame) // 2])
        deadline = time.monotonic() + DEADLINE
        while _read_by(psutil.Process(node.process.pid)) - node_before < len(frame) // 2:
            assert time.monotonic() < deadline, "the node did not read the half frame"
            time.sleep(0.02)
        assert all(_read_by(w) - before[w.pid] < len(frame) // 8 for w in workers)
        node.write(frame[len(frame) // 2 :])
        result = next(node.results())
        assert (result.task_id, result.status) == (7, p.OK)
        assert pickle.loads(bytes(result.payload)) == hashlib.sha256(data).hexdigest()
    finally:
        node.close()
