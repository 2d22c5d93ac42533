"""A channel write leaves in one socket write (``cluster/ssh_packets.py``), on real servers.

asyncssh sends an ``SSH_MSG_IGNORE`` packet before every data packet; the client gathers
the packets of one write so that a small frame is one TCP send. Large writes still go out
whole and intact.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.ssh import SSHChannel
from ceranubis_jupyter.cluster.ssh_packets import GATHER_LIMIT, PacketGather
from tests.fixtures_ssh import (
    ASYNCSSH_ALIAS,
    OPENSSH_ALIAS,
    TEST_PYTHON,
    AsyncSSHServer,
    OpenSSHServer,
    SSHHome,
    wait_until_ready,
)
from tests.remote import by_value

RESULT_TIMEOUT = 30.0
ROUND_TRIPS = 40


@by_value
def sha256_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@contextmanager
def socket_writes_per_channel_write(channel: SSHChannel) -> Iterator[list[int]]:
    """Spy (calls through): for each ``channel.write``, how many transport writes it made."""
    transport: Any = channel.conn._transport
    plain_transport_write, plain_channel_write = transport.write, channel.write
    counts: list[int] = []
    inside = [False]

    def transport_write(data: bytes) -> None:
        if inside[0]:
            counts[-1] += 1
        plain_transport_write(data)

    def channel_write(chunks: Any) -> None:
        counts.append(0)
        inside[0] = True
        try:
            plain_channel_write(chunks)
        finally:
            inside[0] = False

    transport.write, channel.write = transport_write, channel_write  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        del transport.write, channel.write


@pytest.mark.parametrize("alias", [OPENSSH_ALIAS, ASYNCSSH_ALIAS])
def test_a_small_frame_is_one_socket_write(
    alias: str,
    ssh_env: SSHHome,
    openssh_server: OpenSSHServer,
    asyncssh_server: AsyncSSHServer,
) -> None:
    with CeranubisExecutor([Host(alias, python=TEST_PYTHON, workers=1)]) as executor:
        wait_until_ready(executor, 1)
        assert executor.submit(abs, -1).result(timeout=RESULT_TIMEOUT) == 1  # fn shipped
        channel = executor.scheduler.links[0].channel
        assert isinstance(channel, SSHChannel)
        with socket_writes_per_channel_write(channel) as counts:
            for i in range(ROUND_TRIPS):
                assert executor.submit(abs, -i).result(timeout=RESULT_TIMEOUT) == i
    assert len(counts) >= ROUND_TRIPS  # every task went through the spied write
    assert set(counts) == {1}, counts  # without the gather: 2 (IGNORE packet, then data)


def test_large_arguments_go_out_in_bounded_writes_and_arrive_intact(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    payload = os.urandom(3 * GATHER_LIMIT + 12345) + os.urandom(5_000_000)
    with CeranubisExecutor([Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=1)]) as executor:
        wait_until_ready(executor, 1)
        assert executor.submit(sha256_of, b"").result(timeout=RESULT_TIMEOUT)
        channel = executor.scheduler.links[0].channel
        assert isinstance(channel, SSHChannel)
        with socket_writes_per_channel_write(channel) as counts:
            digest = executor.submit(sha256_of, payload).result(timeout=RESULT_TIMEOUT)
    assert digest == hashlib.sha256(payload).hexdigest()
    assert max(counts) > 1  # flushed along the way, never held whole


def test_a_connection_without_asyncssh_send_is_left_as_it_is() -> None:
    class Elsewhere:
        """A connection of an asyncssh whose packets take another way out."""

    conn = Elsewhere()
    gather = PacketGather(conn)
    gather.hold()
    gather.release()  # nothing held, nothing written, nothing raised
    assert not hasattr(conn, "_send")
