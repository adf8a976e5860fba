"""Responses the router writes itself, and the gRPC Trailers-Only rewrite (pure: no I/O).

Time is passed in (the ``date`` field value), never read here.
"""

from __future__ import annotations

from ptth.errors import ProxyError
from ptth.proto.fields import Headers

__all__ = ["error_response", "is_grpc_trailers_only", "split_trailers_only"]


def error_response(error: ProxyError, *, date: bytes | None) -> tuple[int, Headers, bytes]:
    """Status, fields and plain-text body for ``error`` (with Retry-After when it has one)."""
    body = f"{error}\n".encode()
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if date is not None:
        headers.append((b"date", date))
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    return error.status, headers, body


def is_grpc_trailers_only(fields: Headers, *, ended: bool) -> bool:
    """A gRPC "Trailers-Only" response: one HEADERS frame that also ended the stream."""
    return ended and any(
        n == b"content-type" and v.startswith(b"application/grpc") for n, v in fields
    )


def split_trailers_only(fields: Headers) -> tuple[Headers, Headers]:
    """Headers (content-type) and trailers (the rest) for a gRPC Trailers-Only response.

    gRPC (PROTOCOL-HTTP2.md) lets an error be a single HEADERS frame with END_STREAM carrying
    grpc-status. ASGI cannot end a response on its header block (hypercorn always follows it with
    a DATA frame), and a gRPC client that sees the stream end on DATA with no trailers reports
    UNKNOWN. The same fields sent as headers plus trailers mean the same thing to gRPC: custom
    metadata of a Trailers-Only response is trailing metadata.
    """
    head = [(n, v) for n, v in fields if n == b"content-type"]
    rest = [(n, v) for n, v in fields if n not in (b"content-type", b"content-length")]
    return head, rest
