"""One socket write for the SSH packets of one channel write.

asyncssh sends an ``SSH_MSG_IGNORE`` packet before every encrypted data packet, each with
its own ``transport.write``: a small frame of tasks leaves as two TCP segments (two
``send`` system calls here, and on loopback the receive side's work runs inside each), and
sshd often wakes for each. :class:`PacketGather` holds the packets asyncssh sends while
a channel write is under way and writes them in one go; the bytes on the wire are the
same.

It replaces the connection's ``_send`` (asyncssh's one way to its transport) on that
connection only; an asyncssh without one gets plain writes (the gather does nothing).
Packets sent outside a held write (window adjustments, keep-alives, a large write's
later packets) go out at once, as before; a held write flushes early once
:data:`GATHER_LIMIT` bytes are waiting, so a large transfer is never copied whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Bytes of held packets written at once even while the write goes on.
GATHER_LIMIT = 1 << 16


def _unused(data: bytes) -> None:
    """Stands for asyncssh's ``_send`` where it has none (nothing is ever held then)."""


class PacketGather:
    """Gathers the packets a connection sends between :meth:`hold` and :meth:`release`.

    Not thread-safe by itself: the channel's writes are never concurrent (the loop thread
    writes, or a submitting thread while the loop sleeps).
    """

    def __init__(self, conn: Any) -> None:
        send: Callable[[bytes], None] | None = getattr(conn, "_send", None)
        self._plain_send: Callable[[bytes], None] = send or _unused
        self._held: list[bytes] | None = None
        self._size = 0
        if send is not None:
            conn._send = self._send  # an instance attribute: this connection only

    def hold(self) -> None:
        """Packets sent from now on wait for :meth:`release`."""
        if self._plain_send is not _unused:
            self._held = []
            self._size = 0

    def release(self) -> None:
        """Write what was held, in one transport write; later packets go out at once."""
        held, self._held = self._held, None
        if held:
            self._plain_send(held[0] if len(held) == 1 else b"".join(held))

    def _send(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._plain_send(data)
            return
        held.append(data)
        self._size += len(data)
        if self._size >= GATHER_LIMIT:
            self._plain_send(b"".join(held))
            held.clear()
            self._size = 0
