"""What travels between the client and a node: the messages and their layout on the wire.

A frame is ``magic(1) kind(1) length(8)`` (:data:`HEADER`) followed by ``length`` body
bytes; ``kind`` says which message the body holds (:data:`JSON_KINDS`, :data:`DATA_KINDS`),
and ``length`` is at most :data:`MAX_CONTROL_FRAME` for a JSON kind, the data-frame cap
(:data:`MAX_DATA_FRAME` unless ``Configure`` says otherwise) for a data kind.
Control messages (frozen dataclasses) have a JSON body whose fields :data:`JSON_TYPES`
lists; ``Function``, ``Tasks`` and ``Results`` a binary one laid out with the structs
below. :mod:`.framing` turns messages into frames and back, :mod:`.protocol` says who may
send what when.

The node imports this module on bare hosts: stdlib only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

MAGIC = 0xCE
HEADER = struct.Struct("!BBQ")

# A control (JSON) frame over this is garbage, refused from its header: the largest real
# one, a Cancel of a node's whole credit, is a fraction of it. Bounds what a broken or
# hostile peer makes us buffer and parse (a 64 MiB NodeFailure cost ~4x its size).
MAX_CONTROL_FRAME = 1 << 20
# Default cap of a data frame (Function, Tasks, Results), refused from its header too:
# 4 GiB holds a task or result of a few GB (senders split batches to fit); lower bounds what
# a broken peer makes us map. A user raises it with ``max_data_frame`` (see Configure).
MAX_DATA_FRAME = 1 << 32
# A data-frame cap that no frame reaches: for the node's pipes to its own workers.
UNCAPPED = 1 << 64

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
# Not an outcome: what a running task printed so far, in ``output``; the payload names the
# stream (STDOUT or STDERR). Any number come before the task's own result.
OUTPUT = 7
STDOUT, STDERR = b"1", b"2"
# Worker to node only: the node's input, lent to the worker (LendInput), comes back. The
# payload is what the worker read of it (whole frames, or a long frame's header), which
# the node reads as if from its input; ``task_id``: the one task of those frames that the
# worker runs itself (0: none).
INPUT_BACK = 8
# Printed output kept per task (or per argument of a batch); more is cut, and the note
# says so (the widget shows only the last lines).
OUTPUT_LIMIT = 64 * 1024
CUT_NOTE = "\n[output cut at 64 KiB]\n"

TASK_KINDS = frozenset((CALL, CHUNK, ARGS))
CODECS = frozenset((PICKLE, DILL))
STATUSES = frozenset(
    (OK, RAISED, CRASHED, UNPICKLABLE, TIMED_OUT, CANCELLED, DELIVERED, OUTPUT, INPUT_BACK)
)


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
    direct_writes: bool = True  # workers may write small results straight to the client
    cut_through: bool = True  # a big task may go to an idle worker while its bytes arrive
    max_data_frame: int = MAX_DATA_FRAME  # the data-frame cap, both ways
    lent_input: bool = True  # an idle node may lend its input to an idle worker


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
class LendInput:
    """Node → worker (protocol 6): read the node's input until one frame has come, then
    give it back (an ``INPUT_BACK`` result), running that frame's lone task if you can."""


@dataclass(frozen=True)
class NodeFailure:
    """Node → client: the node cannot go on (the text says why)."""

    message: str


# ---- User code that travels with the work (protocol 5; see node/code.py, cluster/modules.py)


@dataclass(frozen=True)
class CodeOffer:
    """Client → node (and node → worker): the user's top-level module or package ``name``
    is in the code pack ``digest``; use it if cached, else answer :class:`CodeNeed`. Tasks
    wait meanwhile."""

    digest: str
    name: str


@dataclass(frozen=True)
class CodeNeed:
    """Node → client: send the code pack ``digest`` (it is not in the host's cache)."""

    digest: str


@dataclass(frozen=True)
class Code:
    """Client → node: a code pack, a zip of source files named by their tree digest."""

    digest: str
    blob: Buffer


# ---- Data files that travel (protocol 5; see node/files.py, cluster/filesync.py)

# FileSync operations
SYNC_OFFER = 0  # client → node: JSON manifest {"dir": key, "files": [[name, size, sha256]]}
SYNC_NEED = 1  # node → client: data is the JSON list of the manifest indices to send
SYNC_CHUNK = 2  # client → node: bytes of file ``index`` at ``offset``
SYNC_DONE = 3  # node → client: data is JSON {"dir": path, "error": text or null}
SYNC_CWD = 4  # node → worker: data is the directory tasks run in
FETCH = 5  # client → node: data is the JSON name of a file to send back (``index``: a tag)
FETCH_CHUNK = 6  # node → client: bytes of the fetched file ``index`` at ``offset``
FETCH_DONE = 7  # node → client: data is JSON {"size": int, "error": text or null}
SYNC_SKIP = 8  # client → node: file ``index`` changed while being sent; drop what came
SYNC_OPS = frozenset(range(9))


@dataclass(frozen=True)
class FileSync:
    """Either way: one step of a data sync or a fetch (``op``, one of ``SYNC_OPS``)."""

    op: int
    sync_id: int
    index: int
    offset: int
    data: Buffer


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
    | LendInput
    | NodeFailure
    | CodeOffer
    | CodeNeed
    | Code
    | FileSync
)

# The ``kind`` byte of a frame's header.
JSON_KINDS: dict[int, type] = {
    1: Hello,
    2: Configure,
    6: Heartbeat,
    7: Load,
    8: Cancel,
    9: Shutdown,
    10: NodeFailure,
    11: CodeOffer,
    12: CodeNeed,
    15: LendInput,
}
FUNCTION_KIND, TASKS_KIND, RESULTS_KIND, CODE_KIND, FILE_KIND = 3, 4, 5, 13, 14
DATA_KINDS: dict[int, type] = {
    FUNCTION_KIND: Function,
    TASKS_KIND: Tasks,
    RESULTS_KIND: Results,
    CODE_KIND: Code,
    FILE_KIND: FileSync,
}
KIND_OF: dict[type, int] = {cls: kind for kind, cls in (*JSON_KINDS.items(), *DATA_KINDS.items())}

# Binary bodies. A Tasks or Results body starts with its COUNT of entries; a buffer is its
# LENGTH, then its bytes. A task: TASK_FIXED (task_id, fn_id, kind, codec, n_buffers,
# timeout, payload length), the payload, its buffers. A result: RESULT_HEAD, the output
# (UTF-8), the payload as a buffer, its buffers. A Function: FN_HEAD (fn_id), the blob as
# a buffer.
TASK_FIXED = struct.Struct("!QIBBHdQ")
RESULT_HEAD = struct.Struct("!QBBHI")  # task_id, status, codec, n_buffers, output length
COUNT = struct.Struct("!I")
LENGTH = struct.Struct("!Q")
FN_HEAD = struct.Struct("!I")
FILE_HEAD = struct.Struct("!BIQQ")  # op, sync_id, index, offset; then data as a buffer

# JSON bodies: each control message's fields and the types each may have.
JSON_TYPES: dict[type, dict[str, tuple[type, ...]]] = {
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
        "direct_writes": (bool,),
        "cut_through": (bool,),
        "max_data_frame": (int,),
        "lent_input": (bool,),
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
    LendInput: {},
    NodeFailure: {"message": (str,)},
    CodeOffer: {"digest": (str,), "name": (str,)},
    CodeNeed: {"digest": (str,)},
}


def lone_task_function(kind: int, body: memoryview, filled: int) -> int | None:
    """The function id of a Tasks frame that carries exactly one task, once the first
    ``filled`` bytes of its ``body`` hold the task's fixed fields; else ``None``."""
    if kind != TASKS_KIND or filled < COUNT.size + TASK_FIXED.size:
        return None
    (count,) = COUNT.unpack_from(body, 0)
    if count != 1:
        return None
    fn_id: int = TASK_FIXED.unpack_from(body, COUNT.size)[1]
    return fn_id
