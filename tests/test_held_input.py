"""A worker keeps the node's lent input while it runs a lone task it read from it, and
gives it back once the task's result is out (``node/worker.py``, ``_Outgoing.hold_input``):
then the node's turn no longer comes between the task and its result on a busy host.

The worker's side is shown on real pipes; the node's judgement when such a worker dies
(``Lender.forget``) on a real slot. End to end, in ``test_lent_input.py``.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import termios
from collections.abc import Iterator

import pytest

from ceranubis_jupyter.node import borrow, worker
from ceranubis_jupyter.node.lending import Lender
from ceranubis_jupyter.node.outbox import Outbox
from ceranubis_jupyter.node.pool import WorkerState
from ceranubis_jupyter.node.slot import RunningSlot
from ceranubis_jupyter.wire import protocol as p
from tests.waiting import wait_for

DEADLINE = 30.0
TASK = 7


class Pipes:
    """The worker's pipe to its node and the shared pipe to the client, as read ends."""

    def __init__(self) -> None:
        self.node_read, self.node_write = os.pipe()
        self.client_read, self.client_write = os.pipe()
        self.client = worker.ClientPipe(self.client_write, os.memfd_create("test-lock"))
        self.slot = RunningSlot()
        self.outgoing = worker._Outgoing(self.node_write, self.client, self.slot)

    def queued(self, fd: int) -> int:
        """Bytes waiting in the pipe of read end ``fd``."""
        count = bytearray(4)
        fcntl.ioctl(fd, termios.FIONREAD, count)
        return int.from_bytes(count, "little")

    def messages(self, fd: int) -> list[p.Result]:
        """The results framed in what waits in the pipe of ``fd`` (read now)."""
        decoder = p.FrameDecoder(p.UNCAPPED)
        decoder.feed(os.read(fd, self.queued(fd)))
        found: list[p.Result] = []
        while (message := decoder.next_message()) is not None:
            assert isinstance(message, p.Results)
            found += message.results
        return found

    def close(self) -> None:
        for fd in (self.node_read, self.node_write, self.client_read, self.client_write):
            os.close(fd)
        os.close(self.client.lock_fd)


@pytest.fixture
def pipes() -> Iterator[Pipes]:
    made = Pipes()
    yield made
    made.close()


def _hold(pipes: Pipes) -> None:
    pipes.slot.set_reading(True)
    pipes.slot.hold(TASK)
    pipes.outgoing.hold_input(borrow.input_back(b"the frame", TASK))


def _result() -> p.Result:
    return p.Result(TASK, p.OK, p.PICKLE, b"value")


def test_the_input_goes_back_after_the_result_left_and_before_the_note(
    pipes: Pipes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "HOLD_SECONDS", DEADLINE)  # the watcher stays out of it
    pipes.client.want_news(True)
    _hold(pipes)
    assert pipes.queued(pipes.node_read) == 0  # held: the node is not woken
    assert pipes.slot.held() == TASK and not pipes.slot.reading()
    pipes.outgoing.add(_result(), 0.0, False)
    pipes.outgoing.flush()
    assert [r.status for r in pipes.messages(pipes.client_read)] == [p.OK]
    back, note = pipes.messages(pipes.node_read)
    assert (back.status, back.task_id, bytes(back.payload)) == (p.INPUT_BACK, TASK, b"the frame")
    assert (note.status, note.task_id) == (p.DELIVERED, TASK)
    assert pipes.slot.held() == 0 and not pipes.slot.reading()


def test_a_result_that_goes_through_the_node_follows_the_input(
    pipes: Pipes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "HOLD_SECONDS", DEADLINE)
    pipes.outgoing.client = None  # no direct writes: results go through the node
    _hold(pipes)
    pipes.outgoing.add(_result(), 0.0, False)
    pipes.outgoing.flush()
    assert [(r.status, r.task_id) for r in pipes.messages(pipes.node_read)] == [
        (p.INPUT_BACK, TASK),
        (p.OK, TASK),
    ]


def test_a_task_that_runs_on_gives_the_input_back_after_the_hold_time(
    pipes: Pipes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No result, no flush: the watcher thread gives the input back by itself, so that a
    # long task's node hears its cancels and times it out.
    monkeypatch.setattr(worker, "HOLD_SECONDS", 0.01)
    _hold(pipes)
    wait_for(lambda: pipes.queued(pipes.node_read) > 0, DEADLINE, "the input given back")
    [back] = pipes.messages(pipes.node_read)
    assert (back.status, back.task_id) == (p.INPUT_BACK, TASK)
    assert pipes.slot.held() == 0
    _hold(pipes)  # the watcher, idle or ticking, gives back the next one as well
    wait_for(lambda: pipes.queued(pipes.node_read) > 0, DEADLINE, "the next input given back")
    assert [r.task_id for r in pipes.messages(pipes.node_read)] == [TASK]


# ------------------------------------------------------------------ the node's verdict


@pytest.fixture
def lender() -> Iterator[tuple[Lender, WorkerState]]:
    input_read, input_write = os.pipe()
    selector = selectors.DefaultSelector()
    state = WorkerState(0, -1, -1, Outbox(-1), RunningSlot())
    lent = Lender(selector, input_read)
    lent.to = state  # lent to it (lend() also writes LendInput to the worker)
    yield lent, state
    selector.close()
    os.close(input_read)
    os.close(input_write)


def test_a_worker_dead_in_the_task_it_holds_leaves_the_stream_whole(
    lender: tuple[Lender, WorkerState],
) -> None:
    lent, state = lender
    state.slot.hold(TASK)
    state.slot.set(TASK, 1.0)
    assert lent.forget(state, TASK) == (False, TASK)  # report it crashed, read on
    assert lent.to is None


def test_a_worker_dead_holding_a_delivered_task_loses_nothing(
    lender: tuple[Lender, WorkerState],
) -> None:
    lent, state = lender
    state.slot.hold(TASK)
    state.slot.set_delivered(TASK)
    assert lent.forget(state, 0) == (False, 0)
    assert lent.to is None


def test_a_worker_dead_holding_an_undelivered_result_loses_the_stream(
    lender: tuple[Lender, WorkerState],
) -> None:
    lent, state = lender
    state.slot.hold(TASK)  # the task ended, its result had not left
    assert lent.forget(state, 0) == (True, 0)


def test_a_worker_dead_mid_frame_loses_the_stream(lender: tuple[Lender, WorkerState]) -> None:
    lent, state = lender
    state.slot.set_reading(True)
    assert lent.forget(state, 0) == (True, 0)
