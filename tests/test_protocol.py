"""The sans-IO protocol: round trips, the state machine, and garbage."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ceranubis_jupyter.errors import LocalProtocolError, RemoteProtocolError, VersionMismatch
from ceranubis_jupyter.wire import protocol as p

HELLO = p.Hello(p.PROTOCOL_VERSION, "3.11.7", "0.4.1", "gpu1", 8, 1234)
CONFIGURE = p.Configure(p.PROTOCOL_VERSION, 4, 1.0, 10.0)


def joined(chunks: list[p.Buffer]) -> bytes:
    return b"".join(bytes(chunk) for chunk in chunks)


def running_pair() -> tuple[p.Connection, p.Connection]:
    """A client and a node connection past the handshake."""
    client, node = p.Connection(p.CLIENT), p.Connection(p.NODE)
    client.receive_data(joined(node.send(HELLO)))
    assert client.next_event() == HELLO
    node.receive_data(joined(client.send(CONFIGURE)))
    assert node.next_event() == CONFIGURE
    return client, node


def test_handshake_and_task_round_trip() -> None:
    client, node = running_pair()
    big = bytes(range(256)) * 1024  # above INLINE_LIMIT: travels as its own chunk
    task = p.Task(7, 3, p.CALL, p.PICKLE, b"payload", (big, b"small"), 2.5)
    chunks = client.send(p.Tasks((task,)))
    assert any(chunk is big for chunk in chunks), "large buffers must not be copied"
    node.receive_data(joined(chunks))
    (received,) = node.next_event().tasks  # type: ignore[union-attr]
    assert received.task_id == 7 and received.fn_id == 3 and received.timeout == 2.5
    assert bytes(received.payload) == b"payload"
    assert [bytes(b) for b in received.buffers] == [big, b"small"]


def test_a_stored_argument_travels_as_it_is_stored() -> None:
    client, node = running_pair()
    task = p.Task(8, 3, p.ARGS, p.DILL, b"stored tuple", (), 0.0)
    node.receive_data(joined(client.send(p.Tasks((task,)))))
    (received,) = node.next_event().tasks  # type: ignore[union-attr]
    assert (received.kind, received.codec, bytes(received.payload)) == (
        p.ARGS,
        p.DILL,
        b"stored tuple",
    )


def test_results_batch_round_trip_byte_by_byte() -> None:
    client, node = running_pair()
    results = tuple(
        p.Result(i, p.OK, p.PICKLE, f"r{i}".encode(), (), f"line {i}\n") for i in range(50)
    )
    data = joined(node.send(p.Results(results)) + node.send(p.Load(0.5, 12.0, 40.0, 2, 4)))
    for i in range(len(data)):  # frames split anywhere still decode
        client.receive_data(data[i : i + 1])
    batch = client.next_event()
    assert isinstance(batch, p.Results)
    assert [(r.task_id, bytes(r.payload), r.output) for r in batch.results] == [
        (i, f"r{i}".encode(), f"line {i}\n") for i in range(50)
    ]
    assert client.next_event() == p.Load(0.5, 12.0, 40.0, 2, 4)
    assert client.next_event() is None


def test_control_messages_round_trip() -> None:
    client, node = running_pair()
    node.receive_data(joined(client.send(p.Cancel((1, 2, 3)))))
    node.receive_data(joined(client.send(p.Heartbeat())))
    node.receive_data(joined(client.send(p.Shutdown())))
    assert node.next_event() == p.Cancel((1, 2, 3))
    assert node.next_event() == p.Heartbeat()
    assert node.next_event() == p.Shutdown()
    with pytest.raises(LocalProtocolError, match="closed"):
        client.send(p.Heartbeat())


def test_version_mismatch_is_refused_with_both_versions() -> None:
    client = p.Connection(p.CLIENT)
    old = p.Hello(p.PROTOCOL_VERSION + 1, "3.11.7", "0.4.1", "old", 1, 1)
    client.receive_data(joined(p.encode(old)))
    with pytest.raises(
        VersionMismatch, match=rf"version {p.PROTOCOL_VERSION + 1}.*speaks {p.PROTOCOL_VERSION}"
    ):
        client.next_event()


def test_message_out_of_order_is_a_remote_error() -> None:
    client = p.Connection(p.CLIENT)
    client.receive_data(joined(p.encode(p.Results(()))))
    with pytest.raises(RemoteProtocolError, match="not allowed while handshake"):
        client.next_event()


def test_sending_out_of_order_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="may not send Tasks"):
        p.Connection(p.CLIENT).send(p.Tasks(()))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00\x01" + struct.pack("!Q", 0), "bad frame magic"),
        (bytes([p.MAGIC, 99]) + struct.pack("!Q", 0), "unknown message kind"),
        (bytes([p.MAGIC, 1]) + struct.pack("!Q", p.MAX_FRAME + 1), "larger than"),
        (bytes([p.MAGIC, 1]) + struct.pack("!Q", 2) + b"{}", "Hello needs fields"),
        (bytes([p.MAGIC, 1]) + struct.pack("!Q", 3) + b"\xff\xfe!", "malformed"),
        (bytes([p.MAGIC, 5]) + struct.pack("!Q", 4) + struct.pack("!I", 3), "ends early"),
    ],
)
def test_garbage_frames_name_the_problem(frame: bytes, reason: str) -> None:
    decoder = p.FrameDecoder()
    decoder.feed(frame)
    with pytest.raises(RemoteProtocolError, match=reason):
        decoder.next_message()


def test_truncated_stream_is_an_error_at_eof() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(joined(p.encode(HELLO))[:-3])
    assert decoder.next_message() is None
    decoder.feed(b"")
    with pytest.raises(RemoteProtocolError, match="stream ended inside a frame"):
        decoder.next_message()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_only_raise_remote_protocol_error(data: bytes) -> None:
    for role in (p.CLIENT, p.NODE):
        conn = p.Connection(role)
        conn.receive_data(data)
        conn.receive_data(b"")
        try:
            for _ in range(64):
                if conn.next_event() is None:
                    break
        except RemoteProtocolError:
            pass


frame_kinds = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])


@settings(max_examples=400, deadline=None)
@given(frame_kinds, st.binary(max_size=256))
def test_fuzz_well_framed_garbage_bodies(kind: int, body: bytes) -> None:
    decoder = p.FrameDecoder()
    decoder.feed(bytes([p.MAGIC, kind]) + struct.pack("!Q", len(body)) + body)
    with contextlib.suppress(RemoteProtocolError):
        decoder.next_message()


@pytest.mark.parametrize(("direct", "cut"), [(False, True), (True, False), (False, False)])
def test_configure_carries_the_fast_path_switches(direct: bool, cut: bool) -> None:
    client, node = p.Connection(p.CLIENT), p.Connection(p.NODE)
    client.receive_data(joined(node.send(HELLO)))
    client.next_event()
    configure = p.Configure(p.PROTOCOL_VERSION, 2, 1.0, 10.0, direct, cut)
    node.receive_data(joined(client.send(configure)))
    received = node.next_event()
    assert received == configure
    assert isinstance(received, p.Configure) and (received.direct_writes, received.cut_through) == (
        direct,
        cut,
    )
