"""WebSocket framing inside the tunnel (pure: no I/O, no trio).

A WebSocket crosses the tunnel as an RFC 8441 extended CONNECT stream whose DATA is plain
RFC 6455 frames, encoded with wsproto's frame layer (no HTTP/1.1 handshake, no extensions: the
router already negotiated permessage-deflate with the user, if at all). The router is the client
end (it masks, RFC 6455 §5.3), the backend the server end.

:class:`FrameCodec` adds what both ends need on top of wsproto: messages reassembled from their
fragments under a size limit (over it: close 1009, RFC 6455 §7.4.1), pings answered, close frames
answered (§5.5.1), and a protocol error turned into our own close with wsproto's code.
Replies are queued; the driver sends :meth:`FrameCodec.data_to_send` after every :meth:`feed`.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

__all__ = ["CLOSE_TIMEOUT", "MAX_MESSAGE_SIZE", "FrameCodec", "WSClosed", "WSMessage"]

# The largest message either end reassembles; the router's front end (hypercorn's
# websocket_max_message_size) uses the same number, so a message the user may send always fits.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
# Seconds one side waits for the other to finish the closing handshake (RFC 6455 §7.1.1).
CLOSE_TIMEOUT = 5.0

NORMAL_CLOSURE = int(CloseReason.NORMAL_CLOSURE)  # 1000
NO_STATUS_RCVD = int(CloseReason.NO_STATUS_RCVD)  # 1005: a close frame without a code
ABNORMAL_CLOSURE = int(CloseReason.ABNORMAL_CLOSURE)  # 1006: never on the wire
INTERNAL_ERROR = int(CloseReason.INTERNAL_ERROR)  # 1011
MESSAGE_TOO_BIG = int(CloseReason.MESSAGE_TOO_BIG)  # 1009


@dataclass(frozen=True)
class WSMessage:
    """One complete message: ``str`` for a text message, ``bytes`` for a binary one."""

    data: str | bytes


@dataclass(frozen=True)
class WSClosed:
    """The conversation is over: the peer's close frame, or our own close after its error.

    ``by_peer`` is False when we closed because the peer broke the protocol (bad frame, message
    over the limit); ``code`` is then the code we sent.
    """

    code: int
    reason: str
    by_peer: bool = True


class FrameCodec:
    """One end of a WebSocket conversation, as bytes in and events out."""

    def __init__(self, *, client: bool, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._conn = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
        self.max_message_size = max_message_size
        self._parts: list[str | bytes] = []
        self._size = 0
        self._text = False
        self._outgoing = bytearray()
        self.closed: WSClosed | None = None  # set once the conversation is over for us

    @property
    def close_sent(self) -> bool:
        return self._conn.state in (ConnectionState.LOCAL_CLOSING, ConnectionState.CLOSED)

    @property
    def close_received(self) -> bool:
        return self._conn.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED)

    # -- outgoing -----------------------------------------------------------------------------

    def send_message(self, data: str | bytes) -> bytes:
        """The frame for one message; b"" once a close was sent (nothing may follow it)."""
        if self.close_sent:
            return b""
        event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        return bytes(self._conn.send(event))

    def send_close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Our close frame (RFC 6455 §5.5.1), or b"" if one was already sent.

        1005/1006 are never sent on the wire (§7.4.1): 1005 becomes a close frame without a
        code, 1006 a plain 1000 (wsproto's rule).
        """
        if self.close_sent:
            return b""
        if code == NO_STATUS_RCVD:
            # wsproto omits the code only for the enum member itself (an identity check).
            event = CloseConnection(code=CloseReason.NO_STATUS_RCVD)
        else:
            event = CloseConnection(code=code, reason=reason or None)
        try:
            return bytes(self._conn.send(event))
        except LocalProtocolError:  # the connection closed meanwhile
            return b""

    def data_to_send(self) -> bytes:
        """Pongs and close answers queued by :meth:`feed`."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    # -- incoming -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[WSMessage | WSClosed]:
        """Complete messages and at most one :class:`WSClosed` found in ``data``."""
        if self.closed is not None or self._conn.state is ConnectionState.CLOSED:
            return []  # anything after the closing handshake is ignored (RFC 6455 §5.5.1)
        self._conn.receive_data(data)
        out: list[WSMessage | WSClosed] = []
        for event in self._conn.events():
            if isinstance(event, TextMessage | BytesMessage):
                if not self._add_part(event.data, isinstance(event, TextMessage)):
                    assert self.closed is not None
                    out.append(self.closed)
                    break
                if event.message_finished:
                    out.append(self._finish())
            elif isinstance(event, Ping):
                if not self.close_sent:
                    self._outgoing += self._conn.send(event.response())
            elif isinstance(event, CloseConnection):
                out.append(self._on_close(event))
                break
        return out

    def _add_part(self, part: str | bytes | bytearray, text: bool) -> bool:
        """Keep one fragment; False (and our close 1009 queued) when the message grows too big."""
        self._size += len(part)
        if self._size > self.max_message_size:
            self._parts.clear()
            self._close_for_error(MESSAGE_TOO_BIG, f"message over {self.max_message_size} bytes")
            return False
        self._text = text
        self._parts.append(part if isinstance(part, str) else bytes(part))
        return True

    def _finish(self) -> WSMessage:
        parts, self._parts, self._size = self._parts, [], 0
        if self._text:
            return WSMessage("".join(parts))  # type: ignore[arg-type]
        return WSMessage(b"".join(parts))  # type: ignore[arg-type]

    def _on_close(self, event: CloseConnection) -> WSClosed:
        code, reason = int(event.code), event.reason or ""
        if self._conn.state is ConnectionState.REMOTE_CLOSING:
            # The peer's close: answer it with the same code (RFC 6455 §5.5.1).
            self._outgoing += self._conn.send(event.response())
            self.closed = WSClosed(code, reason)
        elif self._conn.state is ConnectionState.CLOSED:
            self.closed = WSClosed(code, reason)  # the answer to our own close
        else:
            # wsproto reports a malformed frame as a CloseConnection without changing state:
            # we close with its code (1002 protocol error, 1007 bad UTF-8, ...).
            self._close_for_error(code, reason)
        assert self.closed is not None
        return self.closed

    def _close_for_error(self, code: int, reason: str) -> None:
        self._outgoing += self.send_close(code, reason[:100])
        self.closed = WSClosed(code, reason, by_peer=False)
