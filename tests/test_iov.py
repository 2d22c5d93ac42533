"""``wire.iov``: the one writev loop that the node's outboxes, its workers and the client's
pipe writer share. Real pipes, filled to the brim, so that writes are partial."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator

import pytest

from ceranubis_jupyter.wire import iov

# Pipe capacity for these tests: small, so that a few chunks fill it.
PIPE_BYTES = 4096


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        os.close(fd)


def _drain(fd: int, count: int) -> bytes:
    data = b""
    while len(data) < count:
        data += os.read(fd, count - len(data))
    return data


def test_write_some_keeps_the_unwritten_tail_as_a_view_of_the_same_memory(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    os.set_blocking(write_fd, False)
    capacity = fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)
    first, second = bytearray(b"a" * (capacity - 10)), bytearray(b"b" * 100)
    chunks = iov.Chunks([memoryview(first), memoryview(second)])
    assert iov.write_some(write_fd, chunks) == capacity
    assert len(chunks) == 1 and chunks[0].obj is second and len(chunks[0]) == 90
    assert iov.write_some(write_fd, chunks) == 0  # full: would block, nothing lost
    assert _drain(read_fd, capacity) == bytes(first) + b"b" * 10
    assert iov.write_some(write_fd, chunks) == 90 and not chunks
    assert _drain(read_fd, 90) == b"b" * 90


def test_write_some_sends_more_chunks_than_one_writev_takes(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.set_blocking(write_fd, False)
    count = iov.IOV_BATCH * 2 + 3
    chunks = iov.Chunks(memoryview(bytes([i % 251])) for i in range(count))
    assert iov.write_some(write_fd, chunks) == count and not chunks
    assert _drain(read_fd, count) == bytes(i % 251 for i in range(count))


def test_write_some_raises_when_the_reader_is_gone() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    chunks = iov.Chunks([memoryview(b"x")])
    try:
        with pytest.raises(BrokenPipeError):
            iov.write_some(write_fd, chunks)
    finally:
        os.close(write_fd)


def test_write_all_writes_everything_through_a_full_blocking_pipe(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    chunks = [b"", bytes(range(256)) * 100, bytearray(b"z" * 5000), memoryview(b"end")]
    expected = b"".join(bytes(c) for c in chunks)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_drain(read_fd, len(expected))))
    reader.start()
    iov.write_all(write_fd, chunks)
    reader.join()
    assert received == [expected]
