"""FrameCodec: the WebSocket framing both tunnel ends share (ptth/_ws_frames.py), no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason

from ptth.proto.ws_frames import FrameCodec, WSClosed, WSMessage


def peer() -> Connection:
    """The router's side as a raw wsproto client (it masks its frames)."""
    return Connection(ConnectionType.CLIENT)


def events_of(conn: Connection, data: bytes) -> list[object]:
    conn.receive_data(data)
    return list(conn.events())


def test_messages_both_ways_between_client_and_server_codecs() -> None:
    client, server = FrameCodec(client=True), FrameCodec(client=False)
    assert server.feed(client.send_message("héllo")) == [WSMessage("héllo")]
    assert server.feed(client.send_message(b"\x00\xff")) == [WSMessage(b"\x00\xff")]
    assert client.feed(server.send_message("back")) == [WSMessage("back")]
    assert client.feed(server.send_message(b"")) == [WSMessage(b"")]


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=50),
)
def test_fragments_reassemble_at_any_split(parts: list[bytes], step: int) -> None:
    conn, server = peer(), FrameCodec(client=False)
    wire = b""
    for i, part in enumerate(parts):
        wire += conn.send(BytesMessage(data=part, message_finished=i == len(parts) - 1))
    wire += conn.send(TextMessage(data="next"))
    out: list[object] = []
    for start in range(0, len(wire), step):
        out += server.feed(wire[start : start + step])
    assert out == [WSMessage(b"".join(parts)), WSMessage("next")]


def test_ping_is_answered_with_pong_and_not_reported() -> None:
    conn, server = peer(), FrameCodec(client=False)
    assert server.feed(conn.send(Ping(payload=b"p1"))) == []
    assert events_of(conn, server.data_to_send()) == [Pong(payload=b"p1")]
    assert server.data_to_send() == b""


def test_peer_close_is_reported_and_answered_with_its_code() -> None:
    conn, server = peer(), FrameCodec(client=False)
    out = server.feed(conn.send(CloseConnection(code=4001, reason="bye")))
    assert out == [WSClosed(4001, "bye")]
    assert server.closed == WSClosed(4001, "bye")
    assert events_of(conn, server.data_to_send()) == [CloseConnection(code=4001, reason="bye")]
    # Nothing may follow the close (RFC 6455 §5.5.1).
    assert server.send_message("late") == b""
    assert server.send_close(1000) == b""
    assert server.feed(b"\x81\x00") == []


def test_own_close_then_answer() -> None:
    client, server = FrameCodec(client=True), FrameCodec(client=False)
    frame = server.send_close(4002, "done")
    assert server.close_sent and not server.close_received
    assert client.feed(frame) == [WSClosed(4002, "done")]
    assert server.feed(client.data_to_send()) == [WSClosed(4002, "done")]
    assert server.data_to_send() == b""  # an answer is never answered


def test_close_without_code_is_1005_both_ways() -> None:
    client, server = FrameCodec(client=True), FrameCodec(client=False)
    frame = client.send_close(1005)
    assert frame[1] & 0x7F == 0  # an empty close payload
    assert server.feed(frame) == [WSClosed(int(CloseReason.NO_STATUS_RCVD), "")]


def test_message_over_the_limit_closes_with_1009() -> None:
    conn, server = peer(), FrameCodec(client=False, max_message_size=10)
    assert server.feed(conn.send(BytesMessage(data=b"x" * 10))) == [WSMessage(b"x" * 10)]
    out = server.feed(conn.send(BytesMessage(data=b"x" * 6, message_finished=False)))
    assert out == []
    out = server.feed(conn.send(BytesMessage(data=b"x" * 5)))
    assert out == [WSClosed(1009, "message over 10 bytes", by_peer=False)]
    (event,) = events_of(conn, server.data_to_send())
    assert isinstance(event, CloseConnection) and event.code == 1009


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"\x81\x02hi", 1002),  # unmasked frame from a client (RFC 6455 §5.1)
        (b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),  # text that is not UTF-8
    ],
)
def test_protocol_errors_close_with_wsproto_code(wire: bytes, code: int) -> None:
    server = FrameCodec(client=False)
    (closed,) = server.feed(wire)
    assert isinstance(closed, WSClosed)
    assert (closed.code, closed.by_peer) == (code, False)
    assert server.close_sent
    client = peer()
    (event,) = events_of(client, server.data_to_send())
    assert isinstance(event, CloseConnection) and event.code == code
