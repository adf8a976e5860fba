"""Agent mode's ``--to URL`` parsing (pure)."""

from __future__ import annotations

import pytest

from ptth._upstream_url import UpstreamURL, parse_upstream_url
from ptth.errors import ConfigError


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:3000", UpstreamURL("http", "127.0.0.1", 3000)),
        ("http://127.0.0.1:3000/", UpstreamURL("http", "127.0.0.1", 3000)),
        ("HTTP://LocalHost:8080", UpstreamURL("http", "localhost", 8080)),
        ("h2c://127.0.0.1:50051", UpstreamURL("h2c", "127.0.0.1", 50051)),
        ("h2c://[::1]:50051", UpstreamURL("h2c", "::1", 50051)),
        ("http://example.internal", UpstreamURL("http", "example.internal", 80)),
        ("  http://127.0.0.1:1  ", UpstreamURL("http", "127.0.0.1", 1)),
    ],
)
def test_valid_urls(url: str, expected: UpstreamURL) -> None:
    assert parse_upstream_url(url) == expected


@pytest.mark.timeout(5)
def test_str_and_authority_round_trip() -> None:
    target = parse_upstream_url("h2c://[::1]:50051")
    assert target.authority == "[::1]:50051"
    assert str(target) == "h2c://[::1]:50051"
    assert parse_upstream_url(str(target)) == target


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1:443", "http:// or h2c://"),
        ("ws://127.0.0.1:80", "http:// or h2c://"),
        ("127.0.0.1:3000", "http:// or h2c://"),
        ("", "http:// or h2c://"),
        ("http://", "no host"),
        ("http://:3000", "no host"),
        ("http://user:pw@127.0.0.1:3000", "credentials"),
        ("http://127.0.0.1:3000/api", "no path"),
        ("http://127.0.0.1:3000?x=1", "no path"),
        ("http://127.0.0.1:3000#frag", "no path"),
        ("http://127.0.0.1:0", "port 0"),
        ("http://127.0.0.1:99999", "invalid upstream URL"),
        ("http://127.0.0.1:port", "invalid upstream URL"),
    ],
)
def test_invalid_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        parse_upstream_url(url)
