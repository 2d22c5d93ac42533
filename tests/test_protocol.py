"""The sans-IO protocol: round trips, the state machine, and garbage."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ceranubis_jupyter.errors import LocalProtocolError, RemoteProtocolError, VersionMismatch
from ceranubis_jupyter.wire import protocol as p
from ceranubis_jupyter.wire.messages import KIND_OF

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


def test_code_and_file_messages_round_trip_both_ways() -> None:
    client, node = running_pair()
    offer, pack = p.CodeOffer("ab" * 32, "helpers"), p.Code("ab" * 32, b"PK\x03\x04zip")
    chunk = p.FileSync(2, 7, 3, 1 << 33, b"x" * 100_000)  # SYNC_CHUNK, a large offset
    node.receive_data(joined([*client.send(offer), *client.send(pack), *client.send(chunk)]))
    got = [node.next_event() for _ in range(3)]
    assert got[0] == offer
    assert isinstance(got[1], p.Code) and (got[1].digest, bytes(got[1].blob)) == (
        pack.digest,
        pack.blob,
    )
    assert isinstance(got[2], p.FileSync) and bytes(got[2].data) == chunk.data
    assert (got[2].op, got[2].sync_id, got[2].index, got[2].offset) == (2, 7, 3, 1 << 33)
    client.receive_data(joined([*node.send(p.CodeNeed("cd" * 32)), *node.send(chunk)]))
    assert client.next_event() == p.CodeNeed("cd" * 32)
    assert isinstance(client.next_event(), p.FileSync)


def test_an_unknown_file_operation_is_a_remote_error() -> None:
    body = struct.pack("!BIQQ", 200, 1, 0, 0) + struct.pack("!Q", 0)
    decoder = p.FrameDecoder()
    decoder.feed(bytes([p.MAGIC, 14]) + struct.pack("!Q", len(body)) + body)
    with pytest.raises(RemoteProtocolError, match="unknown file operation 200"):
        decoder.next_message()


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
        (bytes([p.MAGIC, 1]) + struct.pack("!Q", p.MAX_CONTROL_FRAME + 1), "control-frame cap"),
        (bytes([p.MAGIC, 5]) + struct.pack("!Q", p.MAX_DATA_FRAME + 1), "data-frame cap"),
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


frame_kinds = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])


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


# Bytes a stream delivers per read in the cap tests (a node reads 64 KiB at a time).
STREAM_CHUNK = 1 << 16
# Bytes the decoder may allocate while refusing a frame: a read's worth and change, far
# under the frame it refuses.
REFUSAL_MEMORY = 4 * STREAM_CHUNK


def header(kind: int, length: int) -> bytes:
    return p.HEADER.pack(p.MAGIC, kind, length)


@pytest.mark.parametrize(
    "cls", [p.Hello, p.Configure, p.Heartbeat, p.Load, p.Cancel, p.NodeFailure]
)
def test_a_control_header_over_its_cap_is_refused_before_its_body(cls: type) -> None:
    kind = KIND_OF[cls]
    decoder = p.FrameDecoder()
    decoder.feed(header(kind, 2 << 20))
    with pytest.raises(RemoteProtocolError) as refused:
        decoder.next_message()
    said = str(refused.value)
    assert cls.__name__ in said and str(2 << 20) in said and str(p.MAX_CONTROL_FRAME) in said


def test_a_control_frame_at_its_cap_passes() -> None:
    text = "x" * (p.MAX_CONTROL_FRAME - len('{"message":""}'))
    frame = joined(p.encode(p.NodeFailure(text)))
    assert len(frame) == p.HEADER.size + p.MAX_CONTROL_FRAME
    decoder = p.FrameDecoder()
    decoder.feed(frame)
    assert decoder.next_message() == p.NodeFailure(text)


def test_a_data_frame_over_a_configured_cap_is_refused_from_its_header() -> None:
    cap = 1 << 20
    decoder = p.FrameDecoder(max_data_frame=cap)
    decoder.feed(header(KIND_OF[p.Results], cap + 1))
    with pytest.raises(RemoteProtocolError) as refused:
        decoder.next_message()
    said = str(refused.value)
    assert "Results" in said and str(cap + 1) in said and str(cap) in said
    assert "max_data_frame" in said  # how to raise it


def test_a_big_data_frame_under_the_cap_passes() -> None:
    blob = bytes(range(256)) * (64 << 10)  # 16 MiB: through the memory-mapped large path
    task = p.Task(7, 1, p.CALL, p.PICKLE, b"args", (blob,))
    decoder = p.FrameDecoder(max_data_frame=len(blob) + (1 << 10))
    for chunk in p.encode(p.Tasks((task,))):
        decoder.feed(chunk)
    message = decoder.next_message()
    assert isinstance(message, p.Tasks) and bytes(message.tasks[0].buffers[0]) == blob


def test_a_refused_header_costs_no_memory_for_its_body() -> None:
    """A stream claiming a 64 MiB NodeFailure (or a 16 GiB Results over the default cap)
    is refused at its first read; what the decoder allocated stays near one read."""
    for kind, length in ((KIND_OF[p.NodeFailure], 64 << 20), (KIND_OF[p.Results], 16 << 30)):
        decoder = p.FrameDecoder()
        first = header(kind, length) + b"x" * (STREAM_CHUNK - p.HEADER.size)
        tracemalloc.start()
        try:
            decoder.feed(first)
            with pytest.raises(RemoteProtocolError, match="cap"):
                decoder.next_message()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < REFUSAL_MEMORY, f"refusing kind {kind} allocated {peak} bytes"


def capped_pair(cap: int) -> tuple[p.Connection, p.Connection]:
    """A client with a data-frame cap, and a node that took it from ``Configure``."""
    client, node = p.Connection(p.CLIENT, max_data_frame=cap), p.Connection(p.NODE)
    client.receive_data(joined(node.send(HELLO)))
    client.next_event()
    node.receive_data(
        joined(client.send(p.Configure(p.PROTOCOL_VERSION, 1, 1.0, 10.0, max_data_frame=cap)))
    )
    configure = node.next_event()
    assert isinstance(configure, p.Configure) and configure.max_data_frame == cap
    return client, node


def test_a_batch_over_the_cap_travels_as_several_frames() -> None:
    client, node = capped_pair(1 << 20)
    payloads = [bytes([n]) * (300 << 10) for n in range(7)]  # 2.1 MB, three frames at least
    tasks = tuple(p.Task(n, 1, p.CALL, p.PICKLE, payload) for n, payload in enumerate(payloads))
    frame = joined(client.send(p.Tasks(tasks)))
    received, frames = [], 0
    node.receive_data(frame)
    while (message := node.next_event()) is not None:
        assert isinstance(message, p.Tasks)
        received += [bytes(task.payload) for task in message.tasks]
        frames += 1
    assert received == payloads and frames >= 3
    # ... and the node, holding the client's cap, splits its results the same way
    results = tuple(p.Result(n, p.OK, p.PICKLE, payload) for n, payload in enumerate(payloads))
    client.receive_data(joined(node.send(p.Results(results))))
    back = []
    while (message := client.next_event()) is not None:
        assert isinstance(message, p.Results)
        back += [bytes(result.payload) for result in message.results]
    assert back == payloads


def test_a_node_takes_the_data_frame_cap_from_configure() -> None:
    cap = 2 << 20
    _, node = capped_pair(cap)
    node.receive_data(header(KIND_OF[p.Tasks], cap + 1))
    with pytest.raises(RemoteProtocolError, match="Tasks frame of"):
        node.next_event()
