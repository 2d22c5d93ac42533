"""A node with nothing to do lends its input to an idle worker (the ``lent_input`` fast path).

The tests speak the protocol to a real node process (as ``test_relay`` does). The lent
state is read from ``/proc``: the worker that borrowed the input waits in ``select`` on it
and on its task pipe, where an idle worker waits in ``read``. Stopping the node proves the
path: a lone task still comes back, read and run by the worker alone.
"""

from __future__ import annotations

import functools
import os
import pickle
import select
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from ceranubis_jupyter import CeranubisExecutor, WorkerCrashed
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.node import borrow
from ceranubis_jupyter.wire import protocol as p
from ceranubis_jupyter.wire.serialize import dumps_function
from tests.test_relay import DEADLINE, NodeSpeaker, _read_by
from tests.waiting import wait_for

FN_DIGEST, FN_SLEEP = 1, 2  # NodeSpeaker ships digest as function 1


def _task(task_id: int, fn_id: int, *args: object, timeout: float = 0.0) -> p.Task:
    return p.Task(task_id, fn_id, p.ARGS, p.PICKLE, pickle.dumps(args), (), timeout)


def _frame(message: p.Message) -> bytes:
    return b"".join(bytes(chunk) for chunk in p.encode(message))


@functools.cache
def _select_syscall() -> str:
    """The system call a process blocked in ``select.select`` shows in /proc (``select``
    or ``pselect6``, by number, which differs by architecture)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        select.select([read_end], [], [])
        os._exit(0)
    try:
        wait_for(lambda: _syscall(pid) not in ("running", ""), DEADLINE, "the child blocks")
        return _syscall(pid)
    finally:
        os.write(write_end, b"x")
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(write_end)


def _syscall(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/syscall") as file:
            return file.read().split(" ")[0].strip()
    except OSError:
        return ""


def _borrower(node: NodeSpeaker) -> psutil.Process:
    """The worker the node lent its input to, once it waits on it."""
    return _waiting_in_select(psutil.Process(node.process.pid))


def _results(node: NodeSpeaker, count: int) -> dict[int, p.Result]:
    results: dict[int, p.Result] = {}
    for result in node.results():
        results[result.task_id] = result
        if len(results) == count:
            return results
    raise AssertionError("unreachable")


def _next_other_than_load(node: NodeSpeaker) -> p.Message:
    """The node's next message that is not a load report (or a heartbeat)."""
    message = node.next_message()
    while isinstance(message, (p.Load, p.Heartbeat)):
        message = node.next_message()
    return message


def _value(result: p.Result) -> object:
    assert result.status == p.OK, result
    return pickle.loads(bytes(result.payload))


@pytest.fixture
def node() -> Iterator[NodeSpeaker]:
    speaker = NodeSpeaker()
    try:
        speaker.send(p.Function(FN_SLEEP, dumps_function(time.sleep)))
        speaker.send(p.Tasks((_task(1, FN_DIGEST, b"warm"), _task(2, FN_SLEEP, 0))))
        _results(speaker, 2)  # the first worker has both functions now
        yield speaker
    finally:
        speaker.close()


def test_a_lone_task_comes_back_while_the_node_is_stopped(node: NodeSpeaker) -> None:
    _borrower(node)
    os.kill(node.process.pid, signal.SIGSTOP)
    try:
        node.send(p.Tasks((_task(3, FN_DIGEST, b"alone"),)))
        [(task_id, result)] = _results(node, 1).items()
    finally:
        os.kill(node.process.pid, signal.SIGCONT)
    assert task_id == 3 and len(str(_value(result))) == 64
    node.send(p.Tasks((_task(4, FN_DIGEST, b"a"), _task(5, FN_DIGEST, b"b"))))
    assert set(_results(node, 2)) == {4, 5}  # the node read what the worker gave back


def test_what_a_borrower_cannot_run_reaches_the_node_in_order(node: NodeSpeaker) -> None:
    _borrower(node)
    stream = b"".join(
        (
            _frame(p.Heartbeat()),
            _frame(p.Function(3, dumps_function(len))),
            _frame(p.Tasks((_task(6, 3, b"four"),))),  # a function the worker lacks
            _frame(p.Tasks((_task(7, FN_DIGEST, b"x"), _task(8, 3, b"xy")))),  # two tasks
            _frame(p.Tasks((_task(9, FN_DIGEST, os.urandom(3 * borrow.LENT_FRAME_BYTES)),))),
        )
    )
    node.write(stream)
    results = _results(node, 4)
    assert (_value(results[6]), _value(results[8])) == (4, 2)
    assert all(len(str(_value(results[i]))) == 64 for i in (7, 9))


def test_a_taken_task_keeps_its_timeout_and_can_be_cancelled(node: NodeSpeaker) -> None:
    _borrower(node)
    node.send(p.Tasks((_task(10, FN_SLEEP, DEADLINE * 2, timeout=0.2),)))
    assert _results(node, 1)[10].status == p.TIMED_OUT
    _borrower(node)
    node.send(p.Tasks((_task(11, FN_SLEEP, DEADLINE * 2),)))
    wait_for(lambda: any(_syscall(w.pid) not in ("", _select_syscall()) for w in node.workers()),
             DEADLINE, "the task runs")  # fmt: skip
    node.send(p.Cancel((11,)))
    assert _results(node, 1)[11].status == p.CANCELLED


def test_garbage_read_by_a_borrower_is_reported_by_the_node(node: NodeSpeaker) -> None:
    _borrower(node)
    node.write(b"\x00" * 64)
    message = _next_other_than_load(node)
    assert isinstance(message, p.NodeFailure) and "garbage from the client" in message.message


def test_the_node_reads_its_input_again_when_the_borrower_dies(node: NodeSpeaker) -> None:
    borrower = _borrower(node)
    borrower.kill()
    borrower.wait(DEADLINE)
    wait_for(lambda: borrower.pid not in {w.pid for w in node.workers()}, DEADLINE,
             "the node starts another worker")  # fmt: skip
    node.send(p.Tasks((_task(12, FN_DIGEST, b"after"),)))
    assert len(str(_value(_results(node, 1)[12]))) == 64


def test_a_borrower_that_dies_reading_ends_the_node_loudly(node: NodeSpeaker) -> None:
    # The worker dies in the middle of a frame: its bytes are gone with it. The node must
    # say so at once (the client then sends its tasks again), not wait for the rest of
    # the frame, nor carry on as if the stream were whole.
    borrower = _borrower(node)
    frame = _frame(p.Tasks((_task(13, FN_DIGEST, os.urandom(4096)),)))
    node.write(frame[:2048])
    wait_for(lambda: _syscall(borrower.pid) not in ("", "running", _select_syscall()),
             DEADLINE, "the borrower waits for the rest of the frame")  # fmt: skip
    borrower.kill()
    message = _next_other_than_load(node)
    assert isinstance(message, p.NodeFailure), message
    assert "died while it read the node's input" in message.message
    assert node.process.wait(DEADLINE) == 0


def test_the_node_ends_when_its_input_closes_while_lent(node: NodeSpeaker) -> None:
    workers = node.workers()
    _borrower(node)
    assert node.process.stdin is not None
    node.process.stdin.close()
    assert node.process.wait(DEADLINE) == 0
    psutil.wait_procs(workers, timeout=DEADLINE)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_read_frame_takes_one_frame_and_not_a_byte_more() -> None:
    first = _frame(p.Tasks((_task(1, 1, b"one"),)))
    long = _frame(p.Tasks((_task(2, 1, b"x" * (borrow.LENT_FRAME_BYTES + 1)),)))
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, first + long[:4096])
        assert borrow.read_frame(read_end) == first
        assert borrow.read_frame(read_end) == long[: p.HEADER.size]  # a long one's header
        assert os.read(read_end, 1 << 16) == long[p.HEADER.size : 4096]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_lone_task_is_one_task_of_a_runnable_function() -> None:
    lone = _frame(p.Tasks((_task(1, 5, b"a"),)))
    message = borrow.lone_task(lone, lambda fn_id: fn_id == 5)
    assert isinstance(message, p.Tasks) and message.tasks[0].task_id == 1
    assert borrow.lone_task(lone, lambda fn_id: False) is None
    assert borrow.lone_task(_frame(p.Tasks((_task(1, 5), _task(2, 5)))), bool) is None
    assert borrow.lone_task(_frame(p.Cancel((1,))), bool) is None
    assert borrow.lone_task(b"\x00" * 40, bool) is None


def test_a_task_read_by_a_borrower_that_dies_is_sent_again() -> None:
    # End to end, on a local node: the borrower reads the start of a frame (written here
    # into the node's input, as a client would), then the client's next task, and dies.
    # The node ends, the client sends the task again to the node it restarts, and the
    # task's result comes: nothing is lost.
    with CeranubisExecutor([Host("local", workers=2)]) as executor:
        assert executor.submit(pow, 2, 3).result(DEADLINE) == 8  # the worker has `pow`
        node = psutil.Process(executor.hosts()[0].pid)
        borrower = _waiting_in_select(node)
        frame = _frame(p.Tasks((_task(99, FN_DIGEST, os.urandom(8192)),)))
        with open(f"/proc/{node.pid}/fd/0", "wb", buffering=0) as node_input:
            node_input.write(frame[:2048])
        wait_for(lambda: _syscall(borrower.pid) not in ("", "running", _select_syscall()),
                 DEADLINE, "the borrower waits for the rest of the frame")  # fmt: skip
        read = _read_by(borrower)
        future = executor.submit(pow, 3, 4)
        wait_for(lambda: _read_by(borrower) > read, DEADLINE, "the borrower reads the task")
        borrower.kill()
        assert future.result(DEADLINE) == 81
        assert executor.hosts()[0].pid != node.pid  # the node was restarted
        assert executor.submit(pow, 2, 5).result(DEADLINE) == 32


def _kill_self_if(kill: bool) -> int:
    import os
    import signal

    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    return 1


_kill_self_if.__module__ = "__main__"  # travels by value


def test_a_borrower_that_dies_in_the_task_it_read_leaves_the_node_running() -> None:
    # The borrower keeps the frame it read while the task in it runs (its result would
    # leave before the node is woken). Dying in that task must not cost the node its
    # input: the node reports the task crashed, as any task of a dead worker, and reads on.
    with CeranubisExecutor([Host("local", workers=2)], retries=0) as executor:
        assert executor.submit(_kill_self_if, False).result(DEADLINE) == 1
        node = psutil.Process(executor.hosts()[0].pid)
        borrower = _waiting_in_select(node)
        with pytest.raises(WorkerCrashed, match=r"SIGKILL\(-9\)"):
            executor.submit(_kill_self_if, True).result(DEADLINE)
        assert not borrower.is_running() or borrower.status() == psutil.STATUS_ZOMBIE
        assert executor.hosts()[0].pid == node.pid  # not restarted: its input was whole
        assert executor.submit(pow, 2, 5).result(DEADLINE) == 32


def _waiting_in_select(node: psutil.Process) -> psutil.Process:
    """The node's worker that borrowed its input, once it waits on it."""
    found: list[psutil.Process] = []

    def lent() -> bool:
        found[:] = [w for w in node.children() if _syscall(w.pid) == _select_syscall()]
        return len(found) == 1

    wait_for(lent, DEADLINE, "a worker borrows the node's input")
    return found[0]
