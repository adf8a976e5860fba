"""The one exception tree of ptth (backend helper and router alike).

Callers branch on attributes (``status``, ``retryable``, ``error_code``), never on messages::

    PTTHError
    ├── ConfigError              bad settings or arguments
    ├── HeaderError              a header field that must not cross the proxy (status 400)
    ├── HandshakeError           the tunnel upgrade was malformed (either side)
    │   ├── HandshakeRefused     the router answered with a refusal (status, reason, retryable)
    │   ├── TunnelTLSError       tls://: the router's certificate or TLS handshake failed (retried)
    │   └── ForwardProxyError    the HTTP CONNECT proxy failed or refused (proxy_status; retried)
    ├── TunnelError              the HTTP/2 tunnel failed
    │   ├── TunnelClosed         the connection is gone (lost, GOAWAY, protocol error)
    │   └── StreamReset          one stream was reset (error_code; refused=True if never processed)
    ├── LifespanError            the app's lifespan startup or shutdown failed
    └── ProxyError               a request the router cannot complete; ``status`` is the HTTP answer
        ├── NoRoute              404
        ├── NoTunnel             503 (+ Retry-After)
        ├── ResponseTimeout      504
        ├── BadGateway           502
        ├── BodyTooLarge         413
        ├── HeadersTooLarge      431
        ├── RequestTimeout       408 (the request body stalled)
        ├── RateLimited          429 (+ Retry-After)
        └── Overloaded           503 (+ Retry-After; shed before queueing)
"""

from __future__ import annotations

__all__ = [
    "BadGateway",
    "BodyTooLarge",
    "ConfigError",
    "ForwardProxyError",
    "HandshakeError",
    "HandshakeRefused",
    "HeaderError",
    "HeadersTooLarge",
    "LifespanError",
    "NoRoute",
    "NoTunnel",
    "Overloaded",
    "PTTHError",
    "ProxyError",
    "RateLimited",
    "RequestTimeout",
    "ResponseTimeout",
    "StreamReset",
    "TunnelClosed",
    "TunnelError",
    "TunnelTLSError",
]

# Statuses the helper must never retry: the router has told it the registration itself is wrong.
# 409 is retried: another identity's claim on a host may expire (its grace period).
NON_RETRYABLE_STATUSES = frozenset({400, 401, 403})


class PTTHError(Exception):
    """Root of every error raised by ptth."""


class ConfigError(PTTHError):
    """Settings, flags or arguments that cannot work."""


class HeaderError(PTTHError):
    """A header that must not be forwarded (CR/LF/NUL, bad name, smuggling risk)."""

    status = 400


class HandshakeError(PTTHError):
    """The ReverseHTTP upgrade was malformed, or the peer closed during it."""

    status = 400


class HandshakeRefused(HandshakeError):
    """The router refused the tunnel with a real HTTP response.

    ``retryable`` is False for 400/401/403: retrying cannot help, so ``ptth.serve`` raises.
    ``retry_after`` is the refusal's Retry-After in seconds (RFC 9110, section 10.2.3), if any:
    the router sets it on 429 and 503, and the helper waits at least that long.
    """

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"router refused the tunnel: {status} {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.retryable = status not in NON_RETRYABLE_STATUSES


class TunnelTLSError(HandshakeError):
    """The TLS handshake with a ``tls://`` router failed: its certificate is not trusted or not
    valid for its name, or the port does not speak TLS. The helper retries with backoff (the
    router's certificate may be renewed)."""


class ForwardProxyError(HandshakeError):
    """The forward proxy between the helper and the router could not open the tunnel: it refused
    the ``CONNECT`` (``proxy_status``: 407 bad credentials, 403 not allowed, 502 it could not
    reach the router), answered nonsense, or closed. Retried with backoff, like a connection error.
    """

    def __init__(self, message: str, proxy_status: int | None = None) -> None:
        super().__init__(message)
        self.proxy_status = proxy_status


class TunnelError(PTTHError):
    """The HTTP/2 tunnel failed."""


class TunnelClosed(TunnelError):
    """The tunnel connection is closed; ``error_code`` is the GOAWAY code when there was one."""

    def __init__(self, message: str = "tunnel closed", error_code: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class StreamReset(TunnelError):
    """One stream was reset by the peer (or by us).

    ``refused`` means the peer never processed it (REFUSED_STREAM, or above a GOAWAY's last stream
    id), so any method may be retried on another tunnel.
    """

    def __init__(self, error_code: int, *, refused: bool = False) -> None:
        super().__init__(f"stream reset (error code {error_code})")
        self.error_code = error_code
        self.refused = refused


class LifespanError(PTTHError):
    """The app's lifespan startup (or shutdown) failed; no tunnel is opened."""


class ProxyError(PTTHError):
    """A request the router answers itself; ``status`` is the HTTP status it sends."""

    status = 502
    retry_after: int | None = None


class NoRoute(ProxyError):
    status = 404


class NoTunnel(ProxyError):
    status = 503
    retry_after = 1


class ResponseTimeout(ProxyError):
    status = 504


class BadGateway(ProxyError):
    status = 502


class BodyTooLarge(ProxyError):
    status = 413


class HeadersTooLarge(ProxyError):
    status = 431


class RequestTimeout(ProxyError):
    status = 408


class RateLimited(ProxyError):
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, round(retry_after + 0.5))


class Overloaded(ProxyError):
    status = 503
    retry_after = 1
