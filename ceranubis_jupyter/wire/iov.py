"""Writing a queue of buffers to a file descriptor, many per ``writev``, without copies.

The node's outboxes, its workers and the client's pipe writer all keep what they owe a
descriptor as byte memoryviews, and hand them to the kernel in batches; a partial write
leaves the unwritten tail of a chunk at the front of the queue (a view of the same memory).
:func:`write_some` writes what the descriptor takes now; :func:`write_all` loops on it for
a blocking descriptor.

Stdlib only: shipped to bare hosts with the node (see ``bootstrap``).
"""

from __future__ import annotations

import collections
import itertools
import os

from .protocol import Buffer

# Chunks per writev call (Linux takes up to IOV_MAX = 1024).
IOV_BATCH = 512

# What a writer owes its descriptor, oldest first: non-empty byte views, never copies.
Chunks = collections.deque[memoryview]


def write_some(fd: int, chunks: Chunks) -> int:
    """Write as much of ``chunks`` (non-empty byte views) as ``fd`` takes now; returns the
    bytes written, which are gone from the front of ``chunks``.

    Batches go out until one is taken only in part or the descriptor would block.

    Raises:
        OSError: other than ``BlockingIOError``, e.g. ``BrokenPipeError`` when the reader
            is gone (bytes written before it are off ``chunks`` but not counted).
    """
    total = 0
    while chunks:
        # writev takes the deque itself: no list to build in the usual case of few chunks
        batch = chunks if len(chunks) <= IOV_BATCH else list(itertools.islice(chunks, IOV_BATCH))
        try:
            written = os.writev(fd, batch)
        except BlockingIOError:
            return total
        total += written
        while written:
            head = chunks[0]
            if written < len(head):
                chunks[0] = head[written:]
                return total
            written -= len(head)
            chunks.popleft()
    return total


def write_all(fd: int, chunks: list[Buffer]) -> None:
    """Write every chunk fully to a blocking file descriptor (one ``writev`` if it can)."""
    queue = Chunks([view for chunk in chunks if (view := memoryview(chunk).cast("B"))])
    while queue:
        write_some(fd, queue)
