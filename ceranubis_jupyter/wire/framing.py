"""Messages to frames and back: the encoder and the stream decoder, sans-IO.

:func:`encode` turns a message into chunks for ``writelines``; :class:`FrameDecoder` splits
a byte stream into frames and decodes each (:func:`decode_body`). The layout they follow
is in :mod:`.messages`. Large buffers (pickle protocol 5 out-of-band data) travel as chunks
of their own, never copied into the frame, and large frame bodies are received into their
own memory map. Anything malformed raises :class:`RemoteProtocolError`. The node imports
this module on bare hosts: stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from . import messages as m
from .messages import (
    CODECS,
    COUNT,
    DATA_KINDS,
    HEADER,
    JSON_KINDS,
    JSON_TYPES,
    KIND_OF,
    LENGTH,
    MAGIC,
    MAX_CONTROL_FRAME,
    MAX_DATA_FRAME,
    RESULT_HEAD,
    RESULTS_KIND,
    STATUSES,
    TASK_FIXED,
    TASK_KINDS,
    TASKS_KIND,
    Buffer,
    Cancel,
    Function,
    Message,
    Result,
    Results,
    Task,
    Tasks,
)

# Buffers below this size are copied into the frame; larger ones travel as their own chunk.
INLINE_LIMIT = 1 << 16
# Frame bodies from this size on are received into their own memory map, without copies;
# below it slicing one shared buffer is cheaper than a map per frame.
LARGE_FRAME = 1 << 20
# Bytes asked of each read: os.read allocates this much up front, and glibc maps (and
# unmaps) an allocation over 128 KiB on every call: 1 MiB reads cost ~14 us each, 64 KiB
# ~1 us. Frames of LARGE_FRAME bytes and more are read in place, whatever this says.
READ_SIZE = 1 << 16
_HUGE_PAGES = getattr(mmap, "MADV_HUGEPAGE", None)
# Private, not mmap's default shared mapping: shared anonymous memory is shmem, which
# takes no huge pages where shmem_enabled is "never" (the usual default), so every 4 KiB
# of a body cost a page fault through shmem (~8 % of all CPU in a 100 MB transfer here).
_PRIVATE = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)


class FrameDecoder:
    """Splits a byte stream into frames and decodes each into a message.

    Small frames are sliced out of one shared buffer. A frame body of ``LARGE_FRAME`` bytes
    or more gets its own anonymous memory map, which the caller may read straight into
    (:meth:`writable` / :meth:`filled`): big payloads are never copied inside the process.
    A header over its cap (:data:`MAX_CONTROL_FRAME`, ``max_data_frame``) is refused as
    soon as it is read, before its body is buffered or mapped.
    """

    def __init__(self, max_data_frame: int = MAX_DATA_FRAME) -> None:
        self.max_data_frame = max_data_frame  # public: a Configure may change it
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

    def buffered(self) -> int:
        """Bytes fed and not yet taken as messages (the start of a frame)."""
        return len(self._buffer) - self._start + (self._large.filled if self._large else 0)

    def large_in_progress(self) -> tuple[int, memoryview, int] | None:
        """``(kind, body, filled)`` of a large frame still arriving, or ``None``: its first
        ``filled`` body bytes are final, and may be passed on before the rest comes."""
        large = self._large
        return None if large is None else (large.kind, large.view, large.filled)

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
        _check_header(magic, kind, length, self.max_data_frame)
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
            area = mmap.mmap(-1, length, flags=_PRIVATE) if _PRIVATE else mmap.mmap(-1, length)
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


def frame_header(kind: int, length: int) -> bytes:
    """The header of a frame of ``kind`` with a body of ``length`` bytes."""
    return HEADER.pack(MAGIC, kind, length)


def _check_header(magic: int, kind: int, length: int, max_data_frame: int) -> None:
    if magic != MAGIC:
        raise RemoteProtocolError(f"bad frame magic 0x{magic:02x} (expected 0x{MAGIC:02x})")
    if kind in JSON_KINDS:
        if length > MAX_CONTROL_FRAME:
            raise RemoteProtocolError(
                f"{JSON_KINDS[kind].__name__} frame of {length} bytes is over the "
                f"control-frame cap of {MAX_CONTROL_FRAME} bytes"
            )
    elif kind not in DATA_KINDS:
        raise RemoteProtocolError(f"unknown message kind {kind}")
    elif length > max_data_frame:
        raise RemoteProtocolError(
            f"{DATA_KINDS[kind].__name__} frame of {length} bytes is over the data-frame cap "
            f"of {max_data_frame} bytes (raise it: CeranubisExecutor(max_data_frame=...) or "
            "$CERANUBIS_MAX_DATA_FRAME)"
        )


# ----------------------------------------------------------------------------- encoding


def encode(message: Message, max_data_frame: int = MAX_DATA_FRAME) -> list[Buffer]:
    """Encode one message as a list of chunks whose concatenation is its frame.

    A ``Tasks`` or ``Results`` batch whose body would exceed ``max_data_frame`` becomes
    several frames of the same kind, each within it (a receiver takes them as several
    batches); a lone task or result over the cap still gets its frame, which the receiver
    refuses.
    """
    kind = KIND_OF.get(type(message))
    if kind is None:
        raise LocalProtocolError(f"not a protocol message: {message!r}")
    if isinstance(message, Function):
        chunks = _FrameBody()
        chunks.small += m.FN_HEAD.pack(message.fn_id)
        chunks.add_buffer(message.blob)
        return chunks.frame(kind)
    if isinstance(message, (m.Code, m.FileSync)):  # a head, then the data as a buffer
        chunks = _FrameBody()
        if isinstance(message, m.Code):
            chunks.add_buffer(message.digest.encode("ascii"))
        else:
            chunks.small += m.FILE_HEAD.pack(
                message.op, message.sync_id, message.index, message.offset
            )
        chunks.add_buffer(message.blob if isinstance(message, m.Code) else message.data)
        return chunks.frame(kind)
    if isinstance(message, Tasks):
        return _split_frames(message.tasks, _encode_tasks, kind, max_data_frame)
    if isinstance(message, Results):
        return _split_frames(message.results, _encode_results, kind, max_data_frame)
    body = json.dumps(_json_fields(message), separators=(",", ":")).encode()
    return [frame_header(kind, len(body)) + body]


def _split_frames(
    entries: Sequence[Any], encoder: Callable[[Any], _FrameBody], kind: int, cap: int
) -> list[Buffer]:
    """The frames of a batch, halved until each fits ``cap``: one encode as long as the
    batch fits (always, but for batches of gigabytes; big buffers are not copied)."""
    body = encoder(entries)
    if body.size <= cap or len(entries) < 2:
        return body.frame(kind)
    half = len(entries) // 2
    return [
        *_split_frames(entries[:half], encoder, kind, cap),
        *_split_frames(entries[half:], encoder, kind, cap),
    ]


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
        self.small += LENGTH.pack(length)
        self.add_data(data, length)

    @property
    def size(self) -> int:
        """Body bytes so far."""
        return self._size + len(self.small)

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
    body.small += COUNT.pack(len(tasks))
    for task in tasks:
        length = _nbytes(task.payload)
        body.small += TASK_FIXED.pack(
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
    body.small += COUNT.pack(len(results))
    for result in results:
        output = result.output.encode("utf-8", "replace") if result.output else b""
        body.small += RESULT_HEAD.pack(
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
        if kind in JSON_KINDS:
            return _decode_json(JSON_KINDS[kind], bytes(body))
        reader = _Reader(body)
        message: Message = _BINARY_DECODERS[kind](reader)
        reader.expect_end()
        return message
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, struct.error) as error:
        raise RemoteProtocolError(f"malformed message of kind {kind}: {error}") from None


def _decode_json(cls: type, body: bytes) -> Message:
    fields = json.loads(body.decode("utf-8"))
    expected = JSON_TYPES[cls]
    if not isinstance(fields, dict) or set(fields) != set(expected):
        raise RemoteProtocolError(f"{cls.__name__} needs fields {sorted(expected)}")
    for name, types in expected.items():
        value = fields[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
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
        (length,) = self.unpack(LENGTH)
        return self.take(length)

    def buffers(self, count: int) -> tuple[memoryview, ...]:
        return tuple(self.buffer() for _ in range(count))

    def count(self) -> int:
        (count,) = self.unpack(COUNT)
        if count > len(self._view):
            raise RemoteProtocolError(f"batch claims {count} entries")
        return int(count)

    def expect_end(self) -> None:
        if self._pos != len(self._view):
            raise RemoteProtocolError(f"{len(self._view) - self._pos} stray bytes after message")


def _decode_function(reader: _Reader) -> Function:
    (fn_id,) = reader.unpack(m.FN_HEAD)
    return Function(fn_id, reader.buffer())


def _decode_code(reader: _Reader) -> m.Code:
    return m.Code(str(reader.buffer(), "ascii"), reader.buffer())


def _decode_file(reader: _Reader) -> m.FileSync:
    op, sync_id, index, offset = reader.unpack(m.FILE_HEAD)
    _check_choice("file operation", op, m.SYNC_OPS)
    return m.FileSync(op, sync_id, index, offset, reader.buffer())


def _decode_tasks(reader: _Reader) -> Tasks:
    tasks = []
    for _ in range(reader.count()):
        task_id, fn_id, kind, codec, n_buffers, timeout, length = reader.unpack(TASK_FIXED)
        if kind not in TASK_KINDS or codec not in CODECS:
            _check_choice("task kind", kind, TASK_KINDS)
            _check_choice("codec", codec, CODECS)
        payload = reader.take(length)
        buffers = reader.buffers(n_buffers) if n_buffers else ()
        tasks.append(Task(task_id, fn_id, kind, codec, payload, buffers, timeout))
    return Tasks(tuple(tasks))


def _decode_results(reader: _Reader) -> Results:
    results = []
    for _ in range(reader.count()):
        task_id, status, codec, n_buffers, output_length = reader.unpack(RESULT_HEAD)
        if status not in STATUSES or codec not in CODECS:
            _check_choice("result status", status, STATUSES)
            _check_choice("codec", codec, CODECS)
        output = str(reader.take(output_length), "utf-8", "replace") if output_length else ""
        payload = reader.buffer()
        buffers = reader.buffers(n_buffers) if n_buffers else ()
        results.append(Result(task_id, status, codec, payload, buffers, output))
    return Results(tuple(results))


def _check_choice(what: str, value: int, choices: Iterable[int]) -> None:
    if value not in choices:
        raise RemoteProtocolError(f"unknown {what} {value}")


_BINARY_DECODERS: dict[int, Callable[[_Reader], Message]] = {
    m.FUNCTION_KIND: _decode_function,
    TASKS_KIND: _decode_tasks,
    RESULTS_KIND: _decode_results,
    m.CODE_KIND: _decode_code,
    m.FILE_KIND: _decode_file,
}
