"""The wire protocol between the client and a node, sans-IO (no sockets, no threads).

Bytes in, messages out; messages in, bytes out::

    conn = Connection(CLIENT)
    conn.receive_data(chunk)            # bytes read from the transport
    while (msg := conn.next_event()) is not None:
        ...                             # Hello, Results, Load, Heartbeat, NodeFailure
    transport.writelines(conn.send(Tasks(...)))

:class:`Connection` is the handshake and its state machine: which messages each side may
send and receive when, and the version check. The messages themselves are in
:mod:`.messages`, their frames in :mod:`.framing`; their names are re-exported here, so
``from . import protocol as p`` reaches all of them. Anything malformed raises
:class:`RemoteProtocolError`.

The node imports this module on bare hosts: stdlib only.
"""

from __future__ import annotations

from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError, VersionMismatch
from .framing import FrameDecoder
from .framing import encode as encode
from .framing import frame_header as frame_header
from .messages import (
    ARGS,
    CALL,
    CHUNK,
    DILL,
    PICKLE,
    Cancel,
    Code,
    CodeNeed,
    CodeOffer,
    Configure,
    FileSync,
    Function,
    Heartbeat,
    Hello,
    LendInput,
    Load,
    Message,
    NodeFailure,
    Result,
    Results,
    Shutdown,
    Task,
    Tasks,
)
from .messages import CANCELLED as CANCELLED
from .messages import CRASHED as CRASHED
from .messages import DELIVERED as DELIVERED
from .messages import HEADER as HEADER
from .messages import INPUT_BACK as INPUT_BACK
from .messages import MAGIC as MAGIC
from .messages import MAX_CONTROL_FRAME as MAX_CONTROL_FRAME
from .messages import MAX_DATA_FRAME as MAX_DATA_FRAME
from .messages import OK as OK
from .messages import OUTPUT as OUTPUT
from .messages import RAISED as RAISED
from .messages import STDERR as STDERR
from .messages import STDOUT as STDOUT
from .messages import TIMED_OUT as TIMED_OUT
from .messages import UNCAPPED as UNCAPPED
from .messages import UNPICKLABLE as UNPICKLABLE
from .messages import Buffer as Buffer
from .messages import lone_task_function as lone_task_function

# Hello and Configure carry it; the handshake refuses a peer that speaks another.
# 3: Configure carries the data-frame cap.
# 4: OUTPUT results stream what a running task prints.
# 5: CodeOffer / CodeNeed / Code: the user's modules travel to the node; FileSync: data
#    files travel both ways.
# 6: Configure says whether the node may lend its input to a worker (LendInput).
PROTOCOL_VERSION = 6

CLIENT = "client"
NODE = "node"
_HANDSHAKE = "handshake"
_RUNNING = "running"
_CLOSED = "closed"

# (role, state) -> message types that role may *receive* in that state.
_RECEIVABLE: dict[tuple[str, str], tuple[type, ...]] = {
    (CLIENT, _HANDSHAKE): (Hello, NodeFailure),
    (CLIENT, _RUNNING): (Results, Heartbeat, Load, NodeFailure, CodeNeed, FileSync),
    (NODE, _HANDSHAKE): (Configure, Shutdown),
    (NODE, _RUNNING): (
        Function,
        Tasks,
        Heartbeat,
        Cancel,
        Shutdown,
        CodeOffer,
        Code,
        FileSync,
    ),
}
_PEER = {CLIENT: NODE, NODE: CLIENT}
# The message that moves each side from handshake to running.
_OPENER = {CLIENT: Hello, NODE: Configure}


class Connection:
    """One side of a client-node conversation, with its state machine.

    ``max_data_frame`` caps data frames both ways: larger ones are refused when received
    and split when sent. The node takes the client's from its ``Configure``.
    """

    def __init__(self, role: str, max_data_frame: int = MAX_DATA_FRAME) -> None:
        if role not in _PEER:
            raise LocalProtocolError(f"unknown role {role!r}")
        self.role = role
        self.receive_state = _HANDSHAKE
        self.send_state = _HANDSHAKE
        self._decoder = FrameDecoder(max_data_frame)

    def receive_data(self, data: Buffer) -> None:
        """Feed bytes read from the peer; ``b""`` means end of stream."""
        self._decoder.feed(data)

    def writable(self) -> memoryview | None:
        """See :meth:`FrameDecoder.writable` (zero-copy receive of large frames)."""
        return self._decoder.writable()

    def filled(self, count: int) -> None:
        """See :meth:`FrameDecoder.filled`."""
        self._decoder.filled(count)

    def buffered(self) -> int:
        """Bytes received and not yet taken as messages (part of a frame)."""
        return self._decoder.buffered()

    def large_in_progress(self) -> tuple[int, memoryview, int] | None:
        """See :meth:`FrameDecoder.large_in_progress`."""
        return self._decoder.large_in_progress()

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
        return encode(message, self._decoder.max_data_frame)

    def _advance_receive(self, message: Message) -> None:
        if isinstance(message, _OPENER[self.role]):
            self._check_version(message)
            if isinstance(message, Configure):
                self._decoder.max_data_frame = message.max_data_frame
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


# Also re-exported, by the ``import X as X`` lines above: Buffer, encode, HEADER, MAGIC,
# the frame caps and the result statuses, which the node, the worker, the scheduler and tests
# reach as ``p.X``.
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
    "Code",
    "CodeNeed",
    "CodeOffer",
    "Configure",
    "Connection",
    "FileSync",
    "FrameDecoder",
    "Function",
    "Heartbeat",
    "Hello",
    "LendInput",
    "Load",
    "Message",
    "NodeFailure",
    "Result",
    "Results",
    "Shutdown",
    "Task",
    "Tasks",
]
