"""Make hypercorn tell the app the close code and reason the user's WebSocket client sent.

hypercorn 0.18 answers a user's close frame itself and then reports ``websocket.disconnect``
with code 1006 whenever the app had not closed first: the user's real code (1000, 4001, ...) and
reason never reach the app. The router must relay them to the backend (RFC 6455 §7.1.5: the
close code is part of the conversation), so :class:`CloseCodeWSStream` records the close frame
it answers and reports it in the disconnect event (ASGI ``code`` and ``reason``).

Every close frame hypercorn sends while the app has not closed is either the echo of the user's
close (``event.response()``, same code and reason) or hypercorn's own close for a message over
``websocket_max_message_size`` (1009): overriding ``_send_wsproto_event`` sees both, and the app
learns either code. (A close the app asked for switches the state to ``CLOSED`` first.)
"""

from __future__ import annotations

from typing import Any

import hypercorn.protocol.h2
import hypercorn.protocol.h11
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.events import CloseConnection
from wsproto.events import Event as WSProtoEvent

__all__ = ["CloseCodeWSStream", "install"]


class CloseCodeWSStream(WSStream):
    """``WSStream`` whose disconnect event carries the user's close code and reason."""

    _user_close: tuple[int, str] | None = None

    async def _send_wsproto_event(self, event: WSProtoEvent) -> None:
        if isinstance(event, CloseConnection) and self.state is ASGIWebsocketState.CONNECTED:
            self._user_close = (int(event.code), event.reason or "")
        await super()._send_wsproto_event(event)

    async def handle(self, event: StreamEvent) -> None:
        if (
            isinstance(event, StreamClosed)
            and not self.closed
            and self._user_close is not None
            and self.app_put is not None
            and self.state is ASGIWebsocketState.CONNECTED
        ):
            self.closed = True
            code, reason = self._user_close
            message: Any = {"type": "websocket.disconnect", "code": code, "reason": reason}
            await self.app_put(message)
            return
        await super().handle(event)


def install() -> None:
    """Make hypercorn's HTTP/1.1 and HTTP/2 protocols build :class:`CloseCodeWSStream`.

    Both modules look ``WSStream`` up in their globals each time a WebSocket request arrives.
    Idempotent; call it before serving.
    """
    hypercorn.protocol.h11.WSStream = CloseCodeWSStream  # type: ignore[attr-defined]
    hypercorn.protocol.h2.WSStream = CloseCodeWSStream  # type: ignore[attr-defined]
