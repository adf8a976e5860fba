"""The router's own responses and the gRPC Trailers-Only rewrite."""

from __future__ import annotations

from ptth.errors import NoRoute, RateLimited
from router.responses import error_response, is_grpc_trailers_only, split_trailers_only


def test_error_response_is_plain_text_with_the_error_status() -> None:
    status, headers, body = error_response(NoRoute("no service for host x"), date=b"D")
    assert status == 404
    assert body == b"no service for host x\n"
    assert headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"22"),
        (b"date", b"D"),
    ]


def test_error_response_carries_retry_after_and_no_date_when_none_given() -> None:
    status, headers, _ = error_response(RateLimited("slow down", 1.2), date=None)
    assert status == 429
    assert [name for name, _ in headers] == [b"content-type", b"content-length", b"retry-after"]
    assert dict(headers)[b"retry-after"] == b"2"


def test_trailers_only_needs_a_grpc_response_that_ended() -> None:
    grpc = [(b"content-type", b"application/grpc+proto"), (b"grpc-status", b"5")]
    assert is_grpc_trailers_only(grpc, ended=True)
    assert not is_grpc_trailers_only(grpc, ended=False)
    assert not is_grpc_trailers_only([(b"content-type", b"text/plain")], ended=True)


def test_split_trailers_only_keeps_content_type_as_the_only_header() -> None:
    fields = [
        (b"content-type", b"application/grpc"),
        (b"content-length", b"0"),
        (b"grpc-status", b"5"),
        (b"grpc-message", b"not found"),
    ]
    head, trailers = split_trailers_only(fields)
    assert head == [(b"content-type", b"application/grpc")]
    assert trailers == [(b"grpc-status", b"5"), (b"grpc-message", b"not found")]
