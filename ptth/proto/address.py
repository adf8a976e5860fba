"""Addresses shared by the helper and the router: ``HOST:PORT`` and router URLs; no I/O."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = [
    "ROUTER_SCHEMES",
    "WS_PATH",
    "RouterAddress",
    "format_address",
    "parse_address",
    "parse_router_address",
]


def parse_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into a pair; a clear error for anything else."""
    host, sep, port_text = address.strip().rpartition(":")
    low = 0 if allow_port_zero else 1
    if not sep or not host or not port_text.isdigit() or not (low <= int(port_text) < 65536):
        raise ConfigError(f"address must be HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class _Scheme:
    tls: bool
    # Which dialler carries the tunnel's bytes (ptth/_dial.py dispatches on it).
    transport: str
    # The path the router serves this transport at; None: the URL may not carry a path.
    default_path: str | None = None


HANDSHAKE_PATH = "/.well-known/ptth"  # the reverse handshake's target (RFC 8615 well-known URI)
WS_PATH = "/.well-known/ptth/ws"
HTTPSOCK_PATH = "/.well-known/ptth/socket"  # socket over plain HTTP requests (ptth.httpsock)

# How a helper reaches a router, by URL scheme (ARCHITECTURE.md, "Transports"). One table so
# that every transport is a row, with the parser unchanged.
_SCHEMES = {
    # The ReverseHTTP upgrade over TCP (also: no scheme); the path is the handshake's target,
    # for a router whose --tunnel-path moved it.
    "tcp": _Scheme(tls=False, transport="tcp", default_path=HANDSHAKE_PATH),
    "tls": _Scheme(tls=True, transport="tcp", default_path=HANDSHAKE_PATH),  # ... over TLS
    "ws": _Scheme(tls=False, transport="ws", default_path=WS_PATH),  # in WebSocket messages
    "wss": _Scheme(tls=True, transport="ws", default_path=WS_PATH),  # ... over TLS
    "http": _Scheme(tls=False, transport="httpsock", default_path=HTTPSOCK_PATH),  # plain HTTP
    "https": _Scheme(tls=True, transport="httpsock", default_path=HTTPSOCK_PATH),  # ... HTTPS
}
ROUTER_SCHEMES = tuple(_SCHEMES)


@dataclass(frozen=True)
class RouterAddress:
    """Where a helper dials a router: ``str()`` gives back a URL that parses to the same."""

    scheme: str
    host: str  # an IPv6 address without its brackets
    port: int
    path: str = ""  # as given in the URL; "" means the scheme's default (see ``target``)

    @property
    def tls(self) -> bool:
        return _SCHEMES[self.scheme].tls

    @property
    def transport(self) -> str:
        return _SCHEMES[self.scheme].transport

    @property
    def target(self) -> str:
        """The path the transport requests (``ws://``: the WebSocket's; ``tcp://``: the
        handshake's)."""
        return self.path or _SCHEMES[self.scheme].default_path or ""

    @property
    def handshake_target(self) -> str:
        """The reverse handshake's target: the URL's path on ``tcp://`` and ``tls://``; inside
        a ws:// or http:// transport the stream is the tunnel port's, so the default."""
        return self.target if self.transport == "tcp" else HANDSHAKE_PATH

    @property
    def authority(self) -> str:
        return format_address(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def parse_router_address(address: str) -> RouterAddress:
    """``HOST:PORT``, ``tcp://HOST:PORT[/path]`` (plain), ``tls://HOST:PORT[/path]``,
    ``ws://`` / ``wss://`` or ``http://`` / ``https://HOST:PORT[/path]``; IPv6 in brackets.

    The port is required and the host is kept as given but for case; anything else (a path
    where the scheme takes none, a query, credentials, an unknown scheme) is a
    :class:`ConfigError` naming the address.
    """
    text = address.strip()
    schemes = ", ".join(f"{s}://" for s in ROUTER_SCHEMES)
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ConfigError(f"router address {address!r} must not contain spaces or controls")
    if "://" not in text:
        text = "tcp://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"router address must be HOST:PORT or SCHEME://HOST:PORT ({schemes}), "
            f"IPv6 in brackets; got {address!r}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(f"router address scheme must be one of {schemes}; got {address!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"router address {address!r} must not carry credentials")
    takes_path = _SCHEMES[scheme].default_path is not None
    if (parts.path and not takes_path) or parts.query or parts.fragment:
        raise ConfigError(f"router address {address!r} must name a host and port only")
    if text.endswith(("?", "#")):
        raise ConfigError(f"router address {address!r} must name a host and port only")
    path = parts.path
    if path and (not path.isascii() or "//" in path or "\\" in path):
        raise ConfigError(f"router address {address!r} has an invalid path")
    host = parts.hostname or ""
    if not host or any(c in "[]" for c in host):
        raise ConfigError(f"router address {address!r} has no valid host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"router address {address!r} has no valid host") from None
    if port is None or port == 0:
        raise ConfigError(f"router address {address!r} needs a port (1-65535)")
    return RouterAddress(scheme, host, port, path)
