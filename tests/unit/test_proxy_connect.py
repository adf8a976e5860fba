"""Forward-proxy rules with no I/O (ptth/proto/connect.py): the proxy URL and its redaction,
which proxy a router takes from the environment, NO_PROXY matching, and the CONNECT exchange."""

from __future__ import annotations

import base64

import pytest

from ptth.errors import ConfigError, ForwardProxyError
from ptth.proto.address import parse_router_address
from ptth.proto.connect import (
    ConnectExchange,
    ProxyURL,
    bypasses_proxy,
    parse_proxy_url,
    proxy_for,
)
from tests.unit.test_purity import ROOT, _imports


def test_module_is_pure() -> None:
    imported = _imports(ROOT / "ptth/proto/connect.py", ROOT)
    assert not {"trio", "anyio", "asyncio", "socket", "httpx"} & {
        name.split(".")[0] for name in imported
    }


def test_proxy_url_parsing_and_redaction() -> None:
    proxy = parse_proxy_url("http://us%40er:p%3Ass@Proxy.example:3128")
    assert (proxy.host, proxy.port) == ("proxy.example", 3128)
    assert (proxy.username, proxy.password) == ("us@er", "p:ss")
    assert str(proxy) == "http://***@proxy.example:3128"
    assert "p:ss" not in repr(proxy) and "p%3Ass" not in repr(proxy)
    assert proxy.url == "http://us%40er:p%3Ass@proxy.example:3128"
    assert proxy.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert parse_proxy_url("10.0.0.1:8080") == ProxyURL("10.0.0.1", 8080)
    assert parse_proxy_url("http://proxy/") == ProxyURL("proxy", 80)
    assert str(parse_proxy_url("http://[::1]:3128")) == "http://[::1]:3128"


@pytest.mark.parametrize(
    "text",
    [
        "https://user:hunter2@proxy:443",
        "socks5://user:hunter2@proxy:1080",
        "http://user:hunter2@proxy:3128/path",
        "http://user:hunter2@:3128",
        "http://user:hunter2@proxy:0",
        "http://user:hunter2@proxy:99999",
    ],
)
def test_bad_proxy_urls_never_show_the_password(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_proxy_url(text, source="HTTPS_PROXY")
    assert "hunter2" not in str(info.value)
    assert "HTTPS_PROXY" in str(info.value)


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("router.example.com", 8887, "*", True),
        ("router.example.com", 8887, "example.com", True),
        ("router.example.com", 8887, ".example.com", True),
        ("router.example.com", 8887, "*.example.com", True),
        ("example.com", 8887, ".example.com", True),
        ("badexample.com", 8887, "example.com", False),
        ("router.example.com", 8887, "other.org, example.com", True),
        ("router.example.com", 8887, "other.org example.com", True),
        ("Router.Example.COM.", 8887, "example.com", True),
        ("router.example.com", 8887, "example.com:8887", True),
        ("router.example.com", 443, "example.com:8887", False),
        ("10.1.2.3", 8887, "10.0.0.0/8", True),
        ("11.1.2.3", 8887, "10.0.0.0/8", False),
        ("10.1.2.3", 8887, "10.1.2.3", True),
        ("::1", 8887, "[::1]", True),
        ("::1", 8887, "::1", True),
        ("2001:db8::5", 8887, "2001:db8::/32", True),
        ("2001:db8::5", 8887, "10.0.0.0/8", False),
        ("router.internal", 8887, "10.0.0.0/8", False),  # names are not resolved
        ("10.1.2.3", 8887, "", False),
        ("10.1.2.3", 8887, "garbage/99, ,", False),
    ],
)
def test_no_proxy(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


def test_proxy_for_picks_by_scheme_case_and_no_proxy() -> None:
    plain = parse_router_address("router.example:8887")
    secure = parse_router_address("tls://router.example:8443")
    env = {"HTTP_PROXY": "http://plain:1", "HTTPS_PROXY": "http://secure:2"}
    assert proxy_for(plain, None, env) == ProxyURL("plain", 1)
    assert proxy_for(secure, None, env) == ProxyURL("secure", 2)
    # The lower-case variable wins (curl reads only http_proxy in lower case).
    assert proxy_for(plain, None, {**env, "http_proxy": "lower:3"}) == ProxyURL("lower", 3)
    assert proxy_for(secure, None, {"HTTP_PROXY": "http://plain:1"}) is None
    assert proxy_for(plain, None, {**env, "no_proxy": "router.example"}) is None
    assert proxy_for(plain, None, {**env, "NO_PROXY": "*"}) is None
    # An explicit proxy wins over the environment; "" and "none" turn proxies off.
    assert proxy_for(secure, "http://mine:4", env) == ProxyURL("mine", 4)
    assert proxy_for(plain, "", env) is None
    assert proxy_for(plain, "none", env) is None
    assert proxy_for(plain, "http://mine:4", {"NO_PROXY": ".example"}) is None
    assert proxy_for(plain, None, {"HTTP_PROXY": "  "}) is None
    with pytest.raises(ConfigError, match="HTTP_PROXY"):
        proxy_for(plain, None, {"HTTP_PROXY": "ftp://x:1"})


def _exchange(proxy: ProxyURL | None = None) -> ConnectExchange:
    exchange = ConnectExchange(proxy or ProxyURL("p", 3128, "user", "pw"), "::1", 8887)
    request = exchange.request_bytes()
    assert request.startswith(b"CONNECT [::1]:8887 HTTP/1.1\r\n")
    assert b"\r\nhost: [::1]:8887\r\n" in request.lower()
    return exchange


def test_connect_request_carries_basic_auth_only_with_credentials() -> None:
    with_auth = ConnectExchange(ProxyURL("p", 1, "user", "pw"), "r", 1).request_bytes()
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"user:pw") in with_auth
    without = ConnectExchange(ProxyURL("p", 1), "r", 1).request_bytes()
    assert b"proxy-authorization" not in without.lower()


@pytest.mark.parametrize("split", [1, 5, 17, 1000])
def test_connect_established_in_any_split(split: int) -> None:
    exchange = _exchange()
    answer = b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n"
    results = [exchange.receive(answer[i : i + split]) for i in range(0, len(answer), split)]
    assert results[-1] is True and not any(results[:-1])


def test_informational_then_established() -> None:
    exchange = _exchange()
    assert exchange.receive(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n") is True


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (407, "proxy authentication required: the user and password"),
        (401, "proxy authentication required"),
        (403, "forbids this destination"),
        (502, "could not reach the router"),
        (503, "could not reach the router"),
        (405, "does not allow CONNECT"),
        (418, "refused the tunnel"),
    ],
)
def test_refusals_are_named_and_their_body_is_not_read(status: int, words: str) -> None:
    exchange = _exchange()
    body = b"<html>SECRET PROXY PAGE</html>"
    head = f"HTTP/1.1 {status} Because\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with pytest.raises(ForwardProxyError) as info:
        exchange.receive(head + body)
    assert info.value.proxy_status == status
    assert words in str(info.value)
    assert f"{status} Because" in str(info.value)
    assert "SECRET" not in str(info.value) and "pw" not in str(info.value)


def test_407_without_credentials_says_where_they_go() -> None:
    exchange = _exchange(ProxyURL("p", 1))
    with pytest.raises(ForwardProxyError, match="put USER:PASSWORD@ in the proxy URL"):
        exchange.receive(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "closed the connection before answering"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "invalid answer"),
        (b"HTTP/1.1 200 OK\r\n\r\nextra bytes", "sent data before the tunnel started"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000, "invalid answer"),
    ],
)
def test_broken_answers(data: bytes, words: str) -> None:
    exchange = _exchange()
    with pytest.raises(ForwardProxyError, match=words):
        exchange.receive(data)


def test_close_mid_head() -> None:
    exchange = _exchange()
    assert exchange.receive(b"HTTP/1.1 200 OK\r\n") is False
    with pytest.raises(ForwardProxyError, match="closed the connection before answering"):
        exchange.receive(b"")


def test_reason_phrase_is_made_printable() -> None:
    exchange = _exchange()
    with pytest.raises(ForwardProxyError) as info:
        exchange.receive(b"HTTP/1.1 403 a\x7fb\r\n\r\n")
    assert "a?b" in str(info.value)
