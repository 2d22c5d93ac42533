"""The short cuts of a round trip: each is exercised where it could go wrong.

- a worker writes small result frames straight to the client (``worker.ClientPipe``),
  while the node writes its own (large) frames to the same pipe under the same lock;
- an idle executor's first task is sent from the submitting thread while the loop thread
  sleeps (``LoopThread.run_if_asleep``);
- a node's stdout is read by ``pipes.PipeReader``, pulled or pushed.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path

import pytest

from ceranubis_jupyter import CeranubisExecutor, WorkerCrashed
from ceranubis_jupyter.cluster.loopthread import LoopThread
from ceranubis_jupyter.cluster.pipes import PipeReader
from ceranubis_jupyter.node.worker import ClientPipe
from ceranubis_jupyter.wire import protocol as wire
from ceranubis_jupyter.wire.serialize import dumps_inband
from tests.remote import by_value, plus_one
from tests.waiting import async_wait_for, loop_asleep, wait_for


@by_value
def sized(index: int, size: int) -> tuple[int, bytes]:
    return index, bytes([index % 251]) * size


@by_value
def die_after_delivering(marker: str) -> int:
    import os

    if os.path.exists(marker):
        os.remove(marker)
        os._exit(3)
    return 1


def test_small_and_large_results_interleave_without_corrupting_the_stream() -> None:
    # Small results go straight from 4 workers to the client; large ones (over PIPE_BUF)
    # go through the node, whose frames of 3 MB overflow the 1 MiB pipe and so span many
    # writes: a small frame landing between two of them would break the stream.
    sizes = [10, 3000, 1, 5, 70_000, 1, 3_000_000, 20, 1, 2] * 40
    with CeranubisExecutor(max_workers=4) as ex:
        futures = [ex.submit(sized, i, size) for i, size in enumerate(sizes)]
        wait(futures, timeout=60)
        for i, (future, size) in enumerate(zip(futures, sizes, strict=True)):
            assert future.result(timeout=0) == (i, bytes([i % 251]) * size)
        assert [h.state for h in ex.hosts()] == ["ready"]


def test_a_delivered_result_is_kept_when_the_next_task_kills_the_worker(tmp_path: Path) -> None:
    marker = tmp_path / "die"
    with CeranubisExecutor(max_workers=1, retries=0) as ex:
        first = ex.submit(die_after_delivering, str(marker))
        assert first.result(timeout=30) == 1
        marker.touch()
        second = ex.submit(die_after_delivering, str(marker))
        with pytest.raises(WorkerCrashed, match=r"died with exit code 3 while running task"):
            second.result(timeout=30)
        assert ex.submit(die_after_delivering, str(marker)).result(timeout=30) == 1


@by_value
def run_logged(log: str, name: str, crash: bool) -> str:
    import os
    import time

    with open(log, "a") as out:
        out.write(name + "\n")
    if crash:
        time.sleep(0.2)  # the results before this one reach the client first
        os._exit(3)
    return name


def test_results_delivered_straight_are_not_run_again_after_a_crash(tmp_path: Path) -> None:
    # The last tasks reach the worker together; "c" goes straight to the client while the
    # node, with nothing queued, asks for no notes and hears nothing more before the
    # worker dies: it must still know "c" is done, or it would run it again.
    log = str(tmp_path / "runs")
    names = ["a", "b", "c", "crash"]
    with CeranubisExecutor(max_workers=1, retries=0) as ex:
        futures = [ex.submit(run_logged, log, name, name == "crash") for name in names]
        wait(futures, timeout=60)
        assert ex.submit(run_logged, log, "after", False).result(timeout=30) == "after"
    assert [f.result() for f in futures[:3]] == ["a", "b", "c"]
    assert isinstance(futures[3].exception(), WorkerCrashed)
    assert sorted(Path(log).read_text().split()) == sorted([*names, "after"])  # once each


def test_client_pipe_writes_whole_small_frames_only() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    pipe = ClientPipe.open(write_fd)
    assert pipe is not None
    assert pipe.try_send([b"ab", b"cd"])
    assert os.read(read_fd, 100) == b"abcd"
    assert not pipe.try_send([b"x" * (select.PIPE_BUF + 1)])  # could be split: refused
    sent = 0
    while pipe.try_send([bytes([sent % 256]) * select.PIPE_BUF]):  # until the pipe is full
        sent += 1
    assert sent > 0
    received = b""
    while len(received) < sent * select.PIPE_BUF:
        received += os.read(read_fd, 1 << 16)
    frames = [received[i : i + select.PIPE_BUF] for i in range(0, len(received), select.PIPE_BUF)]
    assert frames == [bytes([n % 256]) * select.PIPE_BUF for n in range(sent)]  # none split
    os.close(read_fd)
    os.close(write_fd)


def test_client_pipe_refuses_while_another_process_holds_the_lock() -> None:
    read_fd, write_fd = os.pipe()
    pipe = ClientPipe.open(write_fd)
    assert pipe is not None
    hold = (
        f"import fcntl, sys; fcntl.lockf({pipe.lock_fd}, fcntl.LOCK_EX); "
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=(pipe.lock_fd,),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert not pipe.try_send([b"frame"])
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert pipe.try_send([b"frame"])  # the holder is gone: its lock with it
    assert os.read(read_fd, 100) == b"frame"
    os.close(read_fd)
    os.close(write_fd)


def test_many_threads_submitting_one_task_at_a_time(hosts: object) -> None:
    # Each thread's task finds the executor idle now and then (sent from that thread while
    # the loop sleeps) and busy otherwise (queued for the loop): every result must arrive,
    # over pipes and over asyncssh channels.
    threads, calls = 8, 300
    results: dict[int, list[int]] = {}

    def client(index: int, ex: CeranubisExecutor) -> None:
        results[index] = [ex.submit(plus_one, index * calls + i).result(30) for i in range(calls)]

    with CeranubisExecutor(hosts, max_workers=2) as ex:  # type: ignore[arg-type]
        workers = [threading.Thread(target=client, args=(n, ex)) for n in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(120)
        assert not any(thread.is_alive() for thread in workers)
    for index in range(threads):
        assert results[index] == [index * calls + i + 1 for i in range(calls)]


def _count_direct_sends(ex: CeranubisExecutor, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """From now on, whether each submit found the loop asleep and sent the task itself."""
    scheduler = ex.scheduler
    sent_directly: list[bool] = []
    original = scheduler._take_incoming_directly

    def counted() -> bool:
        taken = original()
        sent_directly.append(taken)
        return taken

    monkeypatch.setattr(scheduler, "_take_incoming_directly", counted)
    return sent_directly


def test_a_lone_task_leaves_from_the_submitting_thread_on_every_transport(
    hosts: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sequential round trips find the loop asleep: the submitting thread sends the task
    # itself (local pipes and asyncssh channels alike), and every result still arrives.
    with CeranubisExecutor(hosts, max_workers=2) as ex:  # type: ignore[arg-type]
        assert ex.submit(plus_one, 0).result(30) == 1
        sent_directly = _count_direct_sends(ex, monkeypatch)
        for i in range(40):
            wait_for(lambda: loop_asleep(ex), 10, "the loop asleep")
            assert ex.submit(plus_one, i).result(30) == i + 1
    # A submit finds the loop asleep unless a timer woke it meanwhile (then it queues, as
    # it must): every one that found it asleep sent the task itself, on every transport.
    assert sent_directly and all(sent_directly), sent_directly


def test_a_lone_prepared_task_leaves_from_the_submitting_thread_and_batches_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A queue daemon woken by a commit of one task submits it ready-made
    # (submit_prepared): it skips waking the loop thread, as a lone submit() does; a
    # batch of two still goes through the loop.
    with CeranubisExecutor(max_workers=1) as ex:
        assert ex.submit(plus_one, 0).result(30) == 1
        sent_directly = _count_direct_sends(ex, monkeypatch)
        fn_id, options = ex.register_function(plus_one), ex.options().task_options
        for i in range(20):
            wait_for(lambda: loop_asleep(ex), 10, "the loop asleep")
            slots: list[Future[int]] = [Future() for _ in range(1 + i % 2)]
            records = []
            for n, slot in enumerate(slots):
                codec, payload = dumps_inband(((i + n,), {}))
                records.append(ex.prepared_task(options, fn_id, slot, wire.CALL, codec, payload))
            ex.submit_prepared(records)
            assert [slot.result(30) for slot in slots] == [i + n + 1 for n in range(len(slots))]
    # Each lone one that found the loop asleep went from this thread (a timer may have
    # woken the loop meanwhile); no batch tried to (10 lone submits, 10 batches).
    assert sent_directly and all(sent_directly) and len(sent_directly) <= 10, sent_directly


def test_run_if_asleep_runs_only_while_the_loop_sleeps() -> None:
    loop_thread = LoopThread()
    try:
        deadline = time.monotonic() + 5
        while not loop_thread.run_if_asleep(lambda: True):  # asleep once started
            assert time.monotonic() < deadline
        busy, release = threading.Event(), threading.Event()

        def hog() -> None:
            busy.set()
            release.wait(10)

        loop_thread.call_threadsafe(hog)
        assert busy.wait(5)
        ran: list[str] = []
        assert not loop_thread.run_if_asleep(lambda: bool(ran.append("ran")))
        assert ran == []  # declined without running, and without waiting
        release.set()
        while not loop_thread.run_if_asleep(lambda: bool(ran.append("ran")) or True):
            assert time.monotonic() < deadline
        assert ran == ["ran"]
    finally:
        loop_thread.stop()


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe ``fd`` (``FIONREAD``)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])


def test_pipe_reader_keeps_bytes_until_a_receiver_takes_over() -> None:
    async def scenario() -> list[bytes]:
        read_fd, write_fd = os.pipe()
        reader = PipeReader(read_fd)
        os.write(write_fd, b"hello")
        assert await reader.read() == b"hello"
        os.write(write_fd, b"kept")
        await async_wait_for(lambda: not _unread(read_fd), 10, "read and kept: no receiver yet")
        got: list[bytes] = []
        reader.set_receiver(got.append)
        os.write(write_fd, b"pushed")
        os.close(write_fd)
        await async_wait_for(lambda: got[-1:] == [b""], 10, "pushed up to the end")
        reader.close()
        return got

    assert asyncio.run(scenario()) == [b"kept", b"pushed", b""]


def test_configure_leaves_before_the_hello_arrives(
    hosts: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node reads Configure only after sending its Hello: the client need not wait for
    # the Hello to send it (a network round trip saved on a remote host's start).
    from ceranubis_jupyter.cluster import link
    from ceranubis_jupyter.wire import protocol

    events: list[str] = []
    send, check = protocol.Connection.send, link.NodeLink._check_hello

    def logged_send(self: protocol.Connection, message: protocol.Message) -> list[object]:
        events.append(type(message).__name__)
        return send(self, message)  # type: ignore[return-value]

    def logged_check(self: link.NodeLink, hello: protocol.Hello) -> None:
        events.append("checked Hello")
        check(self, hello)

    monkeypatch.setattr(protocol.Connection, "send", logged_send)
    monkeypatch.setattr(link.NodeLink, "_check_hello", logged_check)
    with CeranubisExecutor(hosts, max_workers=2) as ex:  # type: ignore[arg-type]
        assert ex.submit(plus_one, 1).result(30) == 2
        [info] = ex.hosts()  # an SSH host here is this machine: one worker per core
        assert info.workers == (2 if hosts is None else len(os.sched_getaffinity(0)))
    assert events.index("Configure") < events.index("checked Hello"), events
