"""Agent mode's ``--to URL``: which local server the tunnel streams are forwarded to (pure).

Two schemes, one per wire protocol the agent speaks to the upstream:

* ``http://HOST:PORT`` — HTTP/1.1 (any ordinary web server; WebSockets by the HTTP/1.1 Upgrade);
* ``h2c://HOST:PORT`` — HTTP/2 over cleartext TCP with prior knowledge (RFC 9113 §3.3), which is
  what gRPC servers speak.

The URL names a server, not a resource: a path, query, fragment or userinfo is refused rather
than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigError
from .proto.address import format_address

__all__ = ["SCHEMES", "UpstreamURL", "parse_upstream_url"]

SCHEMES = ("http", "h2c")
_DEFAULT_PORTS = {"http": 80, "h2c": 80}


@dataclass(frozen=True)
class UpstreamURL:
    scheme: str  # "http" or "h2c"
    host: str
    port: int

    @property
    def authority(self) -> str:
        return format_address(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


def parse_upstream_url(url: str) -> UpstreamURL:
    """``http://HOST[:PORT]`` or ``h2c://HOST[:PORT]`` (IPv6 in brackets); ConfigError otherwise."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid upstream URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"upstream URL must start with http:// or h2c:// (got {url!r}); "
            "https upstreams are not supported"
        )
    if not parts.hostname:
        raise ConfigError(f"upstream URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"upstream URL {url!r} must not carry credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"upstream URL {url!r} must name a server only (no path or query)")
    if port == 0:
        raise ConfigError(f"upstream URL {url!r} has port 0")
    return UpstreamURL(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme])
