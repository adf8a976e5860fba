"""Transports: how a helper's tunnel bytes reach a router (ARCHITECTURE.md, "Transports").

Each transport yields one ``anyio.abc.ByteStream``; the ReverseHTTP handshake and HTTP/2 run
over it unchanged. ``ptth._dial.dial`` picks the dialler by the router address's scheme:

- ``tcp``: ``tcp://`` and ``tls://`` (``tls.py`` holds the client TLS context);
- ``websocket``: ``ws://`` and ``wss://``, the bytes in WebSocket binary messages
  (``ws_stream.py`` is the stream over WebSocket frames, shared with the router);
- ``proxy``: TCP through an HTTP ``CONNECT`` proxy; ``ptth.httpsock``: ``http://``/``https://``.
"""
