"""The protocol rules ptth's helper and router share: pure code, no I/O, no event loop.

``handshake`` (the ReverseHTTP upgrade, h11 on both sides), ``fields`` and ``headers`` (what may
cross the proxy, RFC 9110 / 9113), ``ws_frames`` (WebSocket framing inside the tunnel, wsproto),
``address`` (``HOST:PORT``). See ARCHITECTURE.md, "Layers".
"""
