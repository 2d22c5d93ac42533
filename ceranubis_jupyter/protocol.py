"""The wire protocol between the client and a node, sans-IO (no sockets, no threads).

Bytes in, messages out; messages in, bytes out::

    conn = Connection(CLIENT)
    conn.receive_data(chunk)            # bytes read from the transport
    while (msg := conn.next_event()) is not None:
        ...                             # Hello, Results, Load, Heartbeat, NodeFailure
    transport.writelines(conn.send(Tasks(...)))

A frame is ``magic(1) kind(1) length(8)`` followed by ``length`` body bytes.
Control messages have a JSON body; task and result batches a binary one whose large
buffers (pickle protocol 5 out-of-band data) are passed through as separate chunks,
never copied into the frame. Anything malformed raises :class:`RemoteProtocolError`.

The node imports this module on bare hosts: stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import LocalProtocolError, RemoteProtocolError, VersionMismatch

PROTOCOL_VERSION = 1
MAGIC = 0xCE
HEADER = struct.Struct("!BBQ")
# A frame larger than this is garbage, not data: it bounds what a broken peer makes us buffer.
MAX_FRAME = 1 << 34
# Buffers below this size are copied into the frame; larger ones travel as their own chunk.
INLINE_LIMIT = 1 << 16
# Frame bodies from this size on are received into their own memory map, without copies;
# below it slicing one shared buffer is cheaper than a map per frame.
LARGE_FRAME = 1 << 20
_HUGE_PAGES = getattr(mmap, "MADV_HUGEPAGE", None)

_TASK_HEAD = struct.Struct("!QIBBH")  # task_id, fn_id, kind, codec, n_buffers
# The same, then the timeout and the payload's length: a task's fixed part in one struct.
_TASK_FIXED = struct.Struct("!QIBBHdQ")
_RESULT_HEAD = struct.Struct("!QBBHI")  # task_id, status, codec, n_buffers, output length
_COUNT = struct.Struct("!I")
_LENGTH = struct.Struct("!Q")
_FN_HEAD = struct.Struct("!I")

Buffer = bytes | bytearray | memoryview

# Task kinds
CALL = 0  # payload is (args, kwargs)
CHUNK = 1  # payload is a list of args tuples; the result is a list
ARGS = 2  # payload is one args tuple, no kwargs: a project's argument, sent as stored

# Payload codecs
PICKLE = 0
DILL = 1

# Result statuses
OK = 0
RAISED = 1  # the user's function raised; payload is a pickled RemoteException
CRASHED = 2  # the worker died; payload is JSON {"exitcode": int, "pid": int}
UNPICKLABLE = 3  # the arguments or the result could not be (un)pickled; payload is text
TIMED_OUT = 4  # the task ran past its timeout; payload is JSON like CRASHED
CANCELLED = 5  # the task was stopped by a Cancel message
# Worker to node only: the worker wrote this task's result straight to the client (empty
# payload); a node never forwards it.
DELIVERED = 6


@dataclass(frozen=True)
class Hello:
    """Node → client, first message: who and what the node is."""

    protocol: int
    python: str
    dill: str
    hostname: str
    cores: int
    pid: int


@dataclass(frozen=True)
class Configure:
    """Client → node, first message: how to run."""

    protocol: int
    workers: int
    heartbeat: float
    silence_timeout: float


@dataclass(frozen=True)
class Function:
    """Client → node: a serialized function, later referred to by ``fn_id``."""

    fn_id: int
    blob: Buffer


class Task(NamedTuple):
    """One unit of work: a call or a chunk of calls of function ``fn_id``.

    A named tuple, not a frozen dataclass like the messages: tasks and results are made by
    the thousand on every hop, and a tuple is built three times faster.
    """

    task_id: int
    fn_id: int
    kind: int
    codec: int
    payload: Buffer
    buffers: tuple[Buffer, ...] = ()
    timeout: float = 0.0


@dataclass(frozen=True)
class Tasks:
    """Client → node: a batch of tasks (many per frame, so tiny tasks are cheap)."""

    tasks: tuple[Task, ...]


class Result(NamedTuple):
    """The outcome of one task (a named tuple, like :class:`Task`)."""

    task_id: int
    status: int
    codec: int
    payload: Buffer
    buffers: tuple[Buffer, ...] = ()
    output: str = ""


@dataclass(frozen=True)
class Results:
    """Node → client: a batch of results."""

    results: tuple[Result, ...]


@dataclass(frozen=True)
class Heartbeat:
    """Either way: I am alive."""


@dataclass(frozen=True)
class Load:
    """Node → client: how busy the host is."""

    loadavg: float
    cpu_percent: float
    memory_percent: float
    busy: int
    workers: int


@dataclass(frozen=True)
class Cancel:
    """Client → node: stop these tasks (queued ones are dropped, running ones killed)."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True)
class Shutdown:
    """Client → node: stop the workers and exit."""


@dataclass(frozen=True)
class NodeFailure:
    """Node → client: the node cannot go on (the text says why)."""

    message: str


Message = (
    Hello
    | Configure
    | Function
    | Tasks
    | Results
    | Heartbeat
    | Load
    | Cancel
    | Shutdown
    | NodeFailure
)

_JSON_KINDS: dict[int, type] = {
    1: Hello,
    2: Configure,
    6: Heartbeat,
    7: Load,
    8: Cancel,
    9: Shutdown,
    10: NodeFailure,
}
_FUNCTION, _TASKS, _RESULTS = 3, 4, 5
_KIND_OF: dict[type, int] = {cls: kind for kind, cls in _JSON_KINDS.items()}
_KIND_OF.update({Function: _FUNCTION, Tasks: _TASKS, Results: _RESULTS})

CLIENT = "client"
NODE = "node"
_HANDSHAKE = "handshake"
_RUNNING = "running"
_CLOSED = "closed"

# (role, state) -> message types that role may *receive* in that state.
_RECEIVABLE: dict[tuple[str, str], tuple[type, ...]] = {
    (CLIENT, _HANDSHAKE): (Hello, NodeFailure),
    (CLIENT, _RUNNING): (Results, Heartbeat, Load, NodeFailure),
    (NODE, _HANDSHAKE): (Configure, Shutdown),
    (NODE, _RUNNING): (Function, Tasks, Heartbeat, Cancel, Shutdown),
}
_PEER = {CLIENT: NODE, NODE: CLIENT}
# The message that moves each side from handshake to running.
_OPENER = {CLIENT: Hello, NODE: Configure}


class Connection:
    """One side of a client-node conversation, with its state machine."""

    def __init__(self, role: str) -> None:
        if role not in _PEER:
            raise LocalProtocolError(f"unknown role {role!r}")
        self.role = role
        self.receive_state = _HANDSHAKE
        self.send_state = _HANDSHAKE
        self._decoder = FrameDecoder()

    def receive_data(self, data: Buffer) -> None:
        """Feed bytes read from the peer; ``b""`` means end of stream."""
        self._decoder.feed(data)

    def writable(self) -> memoryview | None:
        """See :meth:`FrameDecoder.writable` (zero-copy receive of large frames)."""
        return self._decoder.writable()

    def filled(self, count: int) -> None:
        """See :meth:`FrameDecoder.filled`."""
        self._decoder.filled(count)

    def next_event(self) -> Message | None:
        """The next complete message, or ``None`` when more bytes are needed."""
        if self.receive_state == _CLOSED:
            return None
        message = self._decoder.next_message()
        if message is None:
            return None
        allowed = _RECEIVABLE[(self.role, self.receive_state)]
        if not isinstance(message, allowed):
            raise RemoteProtocolError(
                f"{type(message).__name__} is not allowed while {self.receive_state}"
            )
        self._advance_receive(message)
        return message

    def send(self, message: Message) -> list[Buffer]:
        """Encode a message as chunks for ``writelines`` (large buffers are not copied)."""
        if self.send_state == _CLOSED:
            raise LocalProtocolError("cannot send on a closed connection")
        allowed = _RECEIVABLE[(_PEER[self.role], self.send_state)]
        if not isinstance(message, allowed):
            raise LocalProtocolError(
                f"{self.role} may not send {type(message).__name__} while {self.send_state}"
            )
        if isinstance(message, _OPENER[_PEER[self.role]]):
            self.send_state = _RUNNING
        elif isinstance(message, (Shutdown, NodeFailure)):
            self.send_state = _CLOSED
        return encode(message)

    def _advance_receive(self, message: Message) -> None:
        if isinstance(message, _OPENER[self.role]):
            self._check_version(message)
            self.receive_state = _RUNNING
        elif isinstance(message, (Shutdown, NodeFailure)):
            self.receive_state = _CLOSED

    @staticmethod
    def _check_version(message: Any) -> None:
        if message.protocol != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"peer speaks protocol version {message.protocol}, "
                f"this side speaks {PROTOCOL_VERSION}; install the same ceranubis_jupyter "
                "version on both sides"
            )


class FrameDecoder:
    """Splits a byte stream into frames and decodes each into a message.

    Small frames are sliced out of one shared buffer. A frame body of ``LARGE_FRAME`` bytes
    or more gets its own anonymous memory map, which the caller may read straight into
    (:meth:`writable` / :meth:`filled`): big payloads are never copied inside the process,
    and a garbage header claiming gigabytes costs address space, not memory.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # consumed bytes at the front, dropped in one go (no quadratic moves)
        self._eof = False
        self._large: _LargeBody | None = None

    def feed(self, data: Buffer) -> None:
        """Append bytes; an empty chunk marks the end of the stream."""
        if not data:
            self._eof = True
            return
        if self._large is not None:
            data = self._large.fill(data)
            if not data:
                return
        if self._start and self._start * 2 >= len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def writable(self) -> memoryview | None:
        """Where the next bytes of a large frame go, or ``None``: read into it, then
        call :meth:`filled` with the count (zero-copy receive, e.g. ``os.readv``)."""
        return self._large.rest() if self._large is not None else None

    def filled(self, count: int) -> None:
        """Record ``count`` bytes written into the view :meth:`writable` returned."""
        if count == 0:
            self._eof = True
        elif self._large is not None:
            self._large.filled += count

    def next_message(self) -> Message | None:
        """Decode one frame if a whole one is buffered."""
        if self._large is not None:
            return self._next_large()
        available = len(self._buffer) - self._start
        if available < HEADER.size:
            self._check_truncated(available)
            return None
        magic, kind, length = HEADER.unpack_from(self._buffer, self._start)
        _check_header(magic, kind, length)
        begin = self._start + HEADER.size
        if available < HEADER.size + length:
            if length >= LARGE_FRAME:
                self._begin_large(kind, length, begin)
                return self._next_large()
            self._check_truncated(available)
            return None
        with memoryview(self._buffer) as view:
            body = bytes(view[begin : begin + length])
        self._start = begin + length
        return decode_body(kind, body)

    def _begin_large(self, kind: int, length: int, begin: int) -> None:
        self._large = _LargeBody(kind, length)
        with memoryview(self._buffer) as view:
            self._large.fill(view[begin:])
        self._buffer = bytearray()
        self._start = 0

    def _next_large(self) -> Message | None:
        large = self._large
        assert large is not None
        if large.filled < large.length:
            self._check_truncated(HEADER.size + large.filled)
            return None
        self._large = None
        return decode_body(large.kind, large.view)

    def _check_truncated(self, available: int) -> None:
        if self._eof and available:
            raise RemoteProtocolError(f"stream ended inside a frame ({available} bytes left over)")


class _LargeBody:
    """The body of one large frame, filled in place."""

    def __init__(self, kind: int, length: int) -> None:
        try:
            area = mmap.mmap(-1, length)
        except (OSError, ValueError, OverflowError) as error:
            raise RemoteProtocolError(f"cannot buffer a frame of {length} bytes: {error}") from None
        if _HUGE_PAGES is not None:
            with contextlib.suppress(OSError):
                area.madvise(_HUGE_PAGES)  # 2 MiB pages: filling it faults 512x less often
        self.view = memoryview(area)
        self.kind = kind
        self.length = length
        self.filled = 0

    def rest(self) -> memoryview:
        return self.view[self.filled :]

    def fill(self, data: Buffer) -> Buffer:
        """Copy what belongs to this body; return the bytes after it."""
        with memoryview(data) as incoming:
            take = min(len(incoming), self.length - self.filled)
            self.view[self.filled : self.filled + take] = incoming[:take]
            self.filled += take
            return bytes(incoming[take:]) if take < len(incoming) else b""


def _check_header(magic: int, kind: int, length: int) -> None:
    if magic != MAGIC:
        raise RemoteProtocolError(f"bad frame magic 0x{magic:02x} (expected 0x{MAGIC:02x})")
    if kind not in _JSON_KINDS and kind not in (_FUNCTION, _TASKS, _RESULTS):
        raise RemoteProtocolError(f"unknown message kind {kind}")
    if length > MAX_FRAME:
        raise RemoteProtocolError(f"frame of {length} bytes is larger than {MAX_FRAME}")


# ----------------------------------------------------------------------------- encoding


def encode(message: Message) -> list[Buffer]:
    """Encode one message as a list of chunks whose concatenation is the frame."""
    kind = _KIND_OF.get(type(message))
    if kind is None:
        raise LocalProtocolError(f"not a protocol message: {message!r}")
    if isinstance(message, Function):
        chunks = _FrameBody()
        chunks.small += _FN_HEAD.pack(message.fn_id)
        chunks.add_buffer(message.blob)
        return chunks.frame(kind)
    if isinstance(message, Tasks):
        return _encode_tasks(message.tasks).frame(kind)
    if isinstance(message, Results):
        return _encode_results(message.results).frame(kind)
    body = json.dumps(_json_fields(message), separators=(",", ":")).encode()
    return [HEADER.pack(MAGIC, kind, len(body)) + body]


def _json_fields(message: Message) -> dict[str, Any]:
    fields = dict(message.__dict__)
    if isinstance(message, Cancel):
        fields["task_ids"] = list(message.task_ids)
    return fields


class _FrameBody:
    """Accumulates small pieces into bytearrays and keeps large buffers apart.

    The first piece starts with room for the frame header, filled in by :meth:`frame`: a
    frame without large buffers is one chunk, so one ``write`` (one wake-up of the peer).
    """

    def __init__(self) -> None:
        self.chunks: list[Buffer] = []
        self.small = bytearray(HEADER.size)  # appended to directly by the hot encoders
        self._size = -HEADER.size  # body bytes so far

    def add_data(self, data: Buffer, length: int) -> None:
        """Add ``data`` (``length`` bytes, its length already written): inline if small."""
        if length < INLINE_LIMIT:
            self.small += data
            return
        self._flush_small()
        self.chunks.append(data)
        self._size += length

    def add_buffer(self, data: Buffer) -> None:
        length = _nbytes(data)
        self.small += _LENGTH.pack(length)
        self.add_data(data, length)

    def frame(self, kind: int) -> list[Buffer]:
        self._flush_small()
        first = self.chunks[0]
        assert isinstance(first, bytearray)
        HEADER.pack_into(first, 0, MAGIC, kind, self._size)
        return self.chunks

    def _flush_small(self) -> None:
        if self.small:
            self.chunks.append(self.small)
            self._size += len(self.small)
            self.small = bytearray()


def _nbytes(data: Buffer) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


def _encode_tasks(tasks: Sequence[Task]) -> _FrameBody:
    body = _FrameBody()
    body.small += _COUNT.pack(len(tasks))
    for task in tasks:
        length = _nbytes(task.payload)
        body.small += _TASK_FIXED.pack(
            task.task_id,
            task.fn_id,
            task.kind,
            task.codec,
            len(task.buffers),
            task.timeout,
            length,
        )
        body.add_data(task.payload, length)
        for buffer in task.buffers:
            body.add_buffer(buffer)
    return body


def _encode_results(results: Sequence[Result]) -> _FrameBody:
    body = _FrameBody()
    body.small += _COUNT.pack(len(results))
    for result in results:
        output = result.output.encode("utf-8", "replace") if result.output else b""
        body.small += _RESULT_HEAD.pack(
            result.task_id, result.status, result.codec, len(result.buffers), len(output)
        )
        body.small += output
        body.add_buffer(result.payload)
        for buffer in result.buffers:
            body.add_buffer(buffer)
    return body


# ----------------------------------------------------------------------------- decoding


def decode_body(kind: int, body: Buffer) -> Message:
    """Decode a frame body; raises :class:`RemoteProtocolError` on any malformation.

    Binary messages keep views into ``body`` (their payloads are not copied).
    """
    try:
        if kind in _JSON_KINDS:
            return _decode_json(_JSON_KINDS[kind], bytes(body))
        reader = _Reader(body)
        message: Message = _BINARY_DECODERS[kind](reader)
        reader.expect_end()
        return message
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, struct.error) as error:
        raise RemoteProtocolError(f"malformed message of kind {kind}: {error}") from None


_JSON_TYPES: dict[type, dict[str, tuple[type, ...]]] = {
    Hello: {
        "protocol": (int,),
        "python": (str,),
        "dill": (str,),
        "hostname": (str,),
        "cores": (int,),
        "pid": (int,),
    },
    Configure: {
        "protocol": (int,),
        "workers": (int,),
        "heartbeat": (int, float),
        "silence_timeout": (int, float),
    },
    Heartbeat: {},
    Load: {
        "loadavg": (int, float),
        "cpu_percent": (int, float),
        "memory_percent": (int, float),
        "busy": (int,),
        "workers": (int,),
    },
    Cancel: {"task_ids": (list,)},
    Shutdown: {},
    NodeFailure: {"message": (str,)},
}


def _decode_json(cls: type, body: bytes) -> Message:
    fields = json.loads(body.decode("utf-8"))
    expected = _JSON_TYPES[cls]
    if not isinstance(fields, dict) or set(fields) != set(expected):
        raise RemoteProtocolError(f"{cls.__name__} needs fields {sorted(expected)}")
    for name, types in expected.items():
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise RemoteProtocolError(f"{cls.__name__}.{name} has the wrong type")
    if cls is Cancel:
        ids = fields["task_ids"]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RemoteProtocolError("Cancel.task_ids must be integers")
        fields["task_ids"] = tuple(ids)
    message: Message = cls(**fields)
    return message


class _Reader:
    """Bounds-checked reads from a frame body; views, not copies."""

    def __init__(self, body: Buffer) -> None:
        self._view = memoryview(body).cast("B")
        self._pos = 0

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        end = self._pos + fmt.size
        if end > len(self._view):
            raise RemoteProtocolError("frame body ends early")
        values = fmt.unpack_from(self._view, self._pos)
        self._pos = end
        return values

    def take(self, length: int) -> memoryview:
        end = self._pos + length
        if end > len(self._view):
            raise RemoteProtocolError("frame body ends early")
        piece = self._view[self._pos : end]
        self._pos = end
        return piece

    def buffer(self) -> memoryview:
        (length,) = self.unpack(_LENGTH)
        return self.take(length)

    def buffers(self, count: int) -> tuple[memoryview, ...]:
        return tuple(self.buffer() for _ in range(count))

    def count(self) -> int:
        (count,) = self.unpack(_COUNT)
        if count > len(self._view):
            raise RemoteProtocolError(f"batch claims {count} entries")
        return int(count)

    def expect_end(self) -> None:
        if self._pos != len(self._view):
            raise RemoteProtocolError(f"{len(self._view) - self._pos} stray bytes after message")


_KINDS = frozenset((CALL, CHUNK, ARGS))
_CODECS = frozenset((PICKLE, DILL))
_STATUSES = frozenset((OK, RAISED, CRASHED, UNPICKLABLE, TIMED_OUT, CANCELLED, DELIVERED))


def _decode_function(reader: _Reader) -> Function:
    (fn_id,) = reader.unpack(_FN_HEAD)
    return Function(fn_id, reader.buffer())


def _decode_tasks(reader: _Reader) -> Tasks:
    tasks = []
    for _ in range(reader.count()):
        task_id, fn_id, kind, codec, n_buffers, timeout, length = reader.unpack(_TASK_FIXED)
        if kind not in _KINDS or codec not in _CODECS:
            _check_choice("task kind", kind, _KINDS)
            _check_choice("codec", codec, _CODECS)
        payload = reader.take(length)
        buffers = reader.buffers(n_buffers) if n_buffers else ()
        tasks.append(Task(task_id, fn_id, kind, codec, payload, buffers, timeout))
    return Tasks(tuple(tasks))


def _decode_results(reader: _Reader) -> Results:
    results = []
    for _ in range(reader.count()):
        task_id, status, codec, n_buffers, output_length = reader.unpack(_RESULT_HEAD)
        if status not in _STATUSES or codec not in _CODECS:
            _check_choice("result status", status, _STATUSES)
            _check_choice("codec", codec, _CODECS)
        output = str(reader.take(output_length), "utf-8", "replace") if output_length else ""
        payload = reader.buffer()
        buffers = reader.buffers(n_buffers) if n_buffers else ()
        results.append(Result(task_id, status, codec, payload, buffers, output))
    return Results(tuple(results))


def _check_choice(what: str, value: int, choices: Iterable[int]) -> None:
    if value not in choices:
        raise RemoteProtocolError(f"unknown {what} {value}")


_BINARY_DECODERS: dict[int, Callable[[_Reader], Message]] = {
    _FUNCTION: _decode_function,
    _TASKS: _decode_tasks,
    _RESULTS: _decode_results,
}

__all__ = [
    "ARGS",
    "CALL",
    "CHUNK",
    "CLIENT",
    "DILL",
    "NODE",
    "PICKLE",
    "PROTOCOL_VERSION",
    "Cancel",
    "Configure",
    "Connection",
    "FrameDecoder",
    "Function",
    "Heartbeat",
    "Hello",
    "Load",
    "Message",
    "NodeFailure",
    "Result",
    "Results",
    "Shutdown",
    "Task",
    "Tasks",
]
