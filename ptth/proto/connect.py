"""Forward proxies for the helper, with no I/O: which proxy a router address goes through
(``--proxy``, ``HTTPS_PROXY``/``HTTP_PROXY``, ``NO_PROXY``) and the ``CONNECT`` exchange
(RFC 9110 §9.3.6), parsed with h11 (ARCHITECTURE.md, "Transports" > "Forward proxies").

Credentials live only in :class:`ProxyURL`; its ``str()`` and ``repr()`` never show them, so a
log line or an error message can name the proxy safely.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

import h11

from ..errors import ConfigError, ForwardProxyError
from .address import RouterAddress, format_address

__all__ = [
    "MAX_PROXY_HEAD",
    "ConnectExchange",
    "ProxyURL",
    "bypasses_proxy",
    "parse_proxy_url",
    "proxy_for",
]

# The proxy's answer to CONNECT is a head only (its body, if any, is never read).
MAX_PROXY_HEAD = 16 * 1024
# Router schemes whose tunnel is TLS end to end: they take HTTPS_PROXY, as curl and httpx do.
_SECURE_SCHEMES = frozenset({"tls", "wss", "https"})
_USERINFO = re.compile(r"//[^/@]*@")


@dataclass(frozen=True)
class ProxyURL:
    """An HTTP forward proxy: ``http://[user:password@]host[:port]``."""

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        credentials = "***@" if self.username is not None else ""
        return f"http://{credentials}{format_address(self.host, self.port)}"

    def __repr__(self) -> str:
        return f"ProxyURL({str(self)!r})"

    @property
    def url(self) -> str:
        """The full URL, credentials included (for an HTTP client's ``proxy=``; never log it)."""
        credentials = ""
        if self.username is not None:
            credentials = quote(self.username, safe="")
            if self.password is not None:
                credentials += ":" + quote(self.password, safe="")
            credentials += "@"
        return f"http://{credentials}{format_address(self.host, self.port)}"

    @property
    def authorization(self) -> str | None:
        """``Proxy-Authorization`` for Basic auth (RFC 7617), or None without credentials."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def _redact(text: str) -> str:
    return _USERINFO.sub("//***@", text)


def parse_proxy_url(text: str, *, source: str = "proxy") -> ProxyURL:
    """``http://[user:password@]host[:port]`` (``host:port`` alone means http://; port 80 by
    default). ``source`` names where it came from in errors, which never show the password."""
    raw = text.strip()
    shown = _redact(raw)
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"{source} must be http://[USER:PASSWORD@]HOST[:PORT], got {shown!r}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise ConfigError(
            f"{source}: only http:// proxies are supported (CONNECT in plain HTTP; the tunnel "
            f"inside may still be TLS), got {shown!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{source} must name a host and port only, got {shown!r}")
    host = parts.hostname or ""
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"{source} has no valid host: {shown!r}")
    if port == 0:
        raise ConfigError(f"{source} needs a port 1-65535: {shown!r}")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return ProxyURL(host, port or 80, username, password)


def _environ(environ: Mapping[str, str], name: str) -> str | None:
    """The lower-case variable first (curl reads only ``http_proxy`` in lower case), then upper."""
    for key in (name.lower(), name.upper()):
        value = environ.get(key)
        if value is not None and value.strip():
            return value
    return None


def _host_and_port(entry: str) -> tuple[str, int | None]:
    """A NO_PROXY entry's host (brackets, leading dot and ``*.`` removed) and optional port."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    host = host.removeprefix("*").removeprefix(".").rstrip(".").lower()
    return host, int(port) if port.isdigit() else None


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` lists ``host``: ``*`` (everything), a domain (itself and every
    name under it; a leading dot changes nothing), an IP address, or a CIDR block (matches IP
    hosts only; names are not resolved). An entry with ``:port`` matches that port only."""
    name = host.rstrip(".").lower()
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    for raw in re.split(r"[,\s]+", no_proxy):
        entry = raw.strip()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            if ip is not None and ip.version == network.version and ip in network:
                return True
            continue
        pattern, entry_port = _host_and_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if ip is not None:
            try:
                if ipaddress.ip_address(pattern) == ip:
                    return True
            except ValueError:
                pass
            continue
        if pattern and (name == pattern or name.endswith("." + pattern)):
            return True
    return False


def proxy_for(
    address: RouterAddress, explicit: str | None, environ: Mapping[str, str]
) -> ProxyURL | None:
    """The proxy to reach ``address`` through, or None to dial it directly.

    ``explicit`` (``--proxy``) wins over the environment; ``""`` or ``"none"`` means no proxy
    whatever the environment says. Otherwise ``tls``/``wss``/``https`` routers use
    ``HTTPS_PROXY`` and the others ``HTTP_PROXY`` (either case). ``NO_PROXY`` applies to both.
    """
    if explicit is not None:
        if explicit.strip().lower() in ("", "none", "direct"):
            return None
        chosen, source = explicit, "--proxy"
    else:
        variable = "https_proxy" if address.scheme in _SECURE_SCHEMES else "http_proxy"
        found = _environ(environ, variable)
        if found is None:
            return None
        chosen, source = found, variable.upper()
    proxy = parse_proxy_url(chosen, source=source)
    no_proxy = _environ(environ, "no_proxy")
    if no_proxy is not None and bypasses_proxy(address.host, address.port, no_proxy):
        return None
    return proxy


def _printable(text: str, limit: int = 120) -> str:
    """A proxy's reason phrase, made safe for one log line."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned[:limit]


class ConnectExchange:
    """One ``CONNECT host:port`` to a proxy: bytes to send, then the proxy's bytes in until the
    tunnel is open (``receive`` returns True) or a :class:`ForwardProxyError` says why not.

    Only the response head is read: a refusal's body is dropped with the connection, and a 2xx
    ends h11's part (the bytes after it belong to the tunnel). Every protocol the helper runs
    over the tunnel speaks first, so bytes from the proxy after its 2xx are an error, not data.
    """

    def __init__(self, proxy: ProxyURL, host: str, port: int) -> None:
        self.proxy = proxy
        self.target = format_address(host, port)
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_PROXY_HEAD)
        self.established = False

    def request_bytes(self) -> bytes:
        headers = [("Host", self.target), ("User-Agent", "ptth")]
        authorization = self.proxy.authorization
        if authorization is not None:
            headers.append(("Proxy-Authorization", authorization))
        request = h11.Request(method="CONNECT", target=self.target, headers=headers)
        return (self._h11.send(request) or b"") + (self._h11.send(h11.EndOfMessage()) or b"")

    def receive(self, data: bytes) -> bool:
        """Feed what the proxy sent (``b""`` at its close); True once the tunnel is open."""
        if self.established:
            raise ForwardProxyError(f"proxy {self.proxy} sent data before the tunnel started")
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if not data:
                    raise ForwardProxyError(
                        f"proxy {self.proxy} closed the connection before answering CONNECT"
                    ) from None
                raise ForwardProxyError(
                    f"proxy {self.proxy} sent an invalid answer to CONNECT: {exc}"
                ) from None
            if event is h11.NEED_DATA:
                if not data:
                    raise ForwardProxyError(
                        f"proxy {self.proxy} closed the connection before answering CONNECT"
                    )
                return False
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                if 200 <= event.status_code < 300:
                    self.established = True
                    trailing, _closed = self._h11.trailing_data
                    if trailing:
                        raise ForwardProxyError(
                            f"proxy {self.proxy} sent data before the tunnel started"
                        )
                    return True
                raise self._refusal(event)
            raise ForwardProxyError(
                f"proxy {self.proxy} sent an unexpected answer to CONNECT: {type(event).__name__}"
            )

    def _refusal(self, response: h11.Response) -> ForwardProxyError:
        status = response.status_code
        reason = _printable(response.reason.decode("latin-1")) or "(no reason)"
        said = f"proxy {self.proxy} answered CONNECT {self.target} with {status} {reason}"
        # 407 (RFC 9110 §15.5.8); tinyproxy 1.11 answers a CONNECT it cannot authenticate 401.
        if status in (401, 407):
            hint = (
                "proxy authentication required: the user and password in the proxy URL were "
                "rejected"
                if self.proxy.username is not None
                else "proxy authentication required: put USER:PASSWORD@ in the proxy URL"
            )
        elif status == 403:
            hint = "the proxy forbids this destination (check its allowed CONNECT ports and hosts)"
        elif status in (502, 503, 504):
            hint = "the proxy could not reach the router"
        elif status == 405 or status == 501:
            hint = "the proxy does not allow CONNECT"
        else:
            hint = "the proxy refused the tunnel"
        return ForwardProxyError(f"{said}: {hint}", proxy_status=status)
