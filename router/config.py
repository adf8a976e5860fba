"""Router settings: every default in one place, loaded one way (defaults < TOML < env < flags)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ptth import settings
from ptth.errors import ConfigError
from ptth.settings import Spec

__all__ = ["ROUTER", "RouterConfig", "build_parser", "load_config", "load_router"]

# Bounded so that a helper's Ptth-Covered-Workers list (about 15 bytes a worker) stays well
# inside the 16 KiB handshake head (ARCHITECTURE.md, "Several cores").
MAX_WORKERS = 256


@dataclass(frozen=True)
class RouterConfig:
    """Defaults follow ARCHITECTURE.md; each has a flag, a PTTH_* variable, a key."""

    http: str = "127.0.0.1:8888"
    tunnel: str = "127.0.0.1:8887"  # "none": no separate tunnel port (front-end tunnels only)
    front_end_tunnels: bool = True  # tunnels on the front end's port (plain handshake, ws)
    tunnel_path: str = "/.well-known/ptth"  # the plain handshake's target on the front end
    ws_path: str = "/.well-known/ptth/ws"  # WebSocket tunnels on the front end
    httpsock_path: str = "/.well-known/ptth/socket"  # httpsock tunnels (http://, https://)
    httpsock_max_sessions: int = 1000
    httpsock_max_sessions_per_client: int = 64  # 0 = no per-address cap
    httpsock_poll_timeout: float = 25.0  # a held GET with nothing to say is answered 204
    httpsock_idle_timeout: float = 60.0  # a session with no request for this long expires
    token: str | None = None
    response_timeout: float = 30.0
    response_idle_timeout: float = 300.0
    default_service: str | None = "default"
    grace: float = 30.0
    queue_timeout: float = 5.0
    max_body_size: int = 0  # request bodies; 0 = unlimited (streamed, bounded by flow control)
    ping_interval: float = 10.0
    dead_after: float = 20.0
    drain_timeout: float = 30.0
    handshake_timeout: float = 5.0
    max_streams_per_tunnel: int = 1000
    max_tunnels: int = 10_000
    max_pending_handshakes: int = 1024  # unauthenticated tunnel connections, router-wide
    max_pending_per_address: int = 16  # ... and from one client address
    auth_failure_rate: float = 0.2  # failed authentications per second allowed per address
    auth_failure_burst: float = 10.0
    tunnel_tls_cert: str | None = None
    tunnel_tls_key: str | None = None
    tokens: str | None = None  # TOML tokens file: identities with their services and hosts
    domain: str | None = None  # key identities get <fingerprint>.<domain>
    reserved_hosts: tuple[str, ...] = ()
    outlier_failures: int = 5  # consecutive failed streams before a tunnel is ejected; 0 = off
    outlier_ejection: float = 10.0  # first ejection in seconds; doubles per repeat
    outlier_max_ejection: float = 300.0
    trusted_proxies: tuple[str, ...] = ()
    keepalive_timeout: float = 60.0
    header_timeout: float = 10.0
    request_body_timeout: float = 30.0  # silence between request body chunks before 408
    min_body_rate: float = 1024.0  # bytes/s a request body must average after 10 s; 0 = off
    write_timeout: float = 60.0
    max_requests_per_connection: int = 10_000
    max_connections: int = 10_000
    max_connections_per_client: int = 2500  # a quarter of max_connections
    max_in_flight_per_client: int = 1000  # 0 = no per-address cap
    max_header_fields: int = 100
    max_header_size: int = 64 * 1024
    max_concurrent_streams: int = 100  # per HTTP/2 user connection
    h2c_upgrade: bool = False
    admin: str = "127.0.0.1:8889"  # the admin listener (router/admin/); "none" turns it off
    inspect_bodies: bool = False  # the request inspector keeps the first 4 KiB of each body
    inspector_size: int = 200  # requests the inspector remembers
    tls_cert: str | None = None
    tls_key: str | None = None
    rate_limit: float = 0.0  # requests per second per client address; 0 = off
    rate_burst: float = 20.0
    max_in_flight: int = 10_000  # router-wide; above it new requests get 503 at once
    log_level: str = "INFO"
    log_format: str = "human"  # or "json": one object per line (ptth/logs.py)
    access_log: bool = True
    workers: str = "1"  # processes sharing the ports (ARCHITECTURE.md, "Several cores")
    reuse_port: bool = True  # each worker its own listening sockets (SO_REUSEPORT)

    def __post_init__(self) -> None:
        if self.log_format not in ("human", "json"):
            raise ConfigError(f"log_format must be 'human' or 'json', not {self.log_format!r}")
        for name in (
            "response_timeout",
            "queue_timeout",
            "ping_interval",
            "dead_after",
            "request_body_timeout",
            "max_in_flight",
            "header_timeout",
            "keepalive_timeout",
            "write_timeout",
            "max_requests_per_connection",
            "max_connections",
            "max_connections_per_client",
            "max_header_fields",
            "max_header_size",
            "max_concurrent_streams",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("tunnel_path", "ws_path"):
            path = getattr(self, name)
            if not path.startswith("/") or not path.isascii() or not path.isprintable():
                raise ConfigError(f"{name} must be a path starting with '/', got {path!r}")
            if any(c in path for c in " ?#"):
                raise ConfigError(f"{name} must be a plain path (no spaces, query or fragment)")
        if self.tunnel_path == self.ws_path:
            raise ConfigError("tunnel_path and ws_path must differ")
        if self.tunnel.strip().lower() == "none" and not self.front_end_tunnels:
            raise ConfigError("tunnel = none and no front-end tunnels: backends could not reach it")
        if self.dead_after < self.ping_interval:
            raise ConfigError("dead_after must be at least ping_interval")
        if self.token is not None and not self.token.strip():
            raise ConfigError("token must not be empty (leave it unset to accept any backend)")
        if self.rate_limit < 0 or self.rate_burst < 1:
            raise ConfigError("rate_limit must be >= 0 and rate_burst >= 1")
        if self.max_body_size < 0 or self.min_body_rate < 0 or self.max_in_flight_per_client < 0:
            raise ConfigError("max_body_size, min_body_rate and max_in_flight_per_client: >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if (self.tunnel_tls_cert is None) != (self.tunnel_tls_key is None):
            raise ConfigError("tunnel_tls_cert and tunnel_tls_key go together")
        if self.token is not None and self.tokens is not None:
            raise ConfigError("give token or tokens, not both")
        for name in ("max_pending_per_address", "auth_failure_burst"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.auth_failure_rate <= 0:
            raise ConfigError("auth_failure_rate must be positive")
        if self.outlier_failures < 0 or not (
            0 < self.outlier_ejection <= self.outlier_max_ejection
        ):
            raise ConfigError(
                "outlier_failures must be >= 0 and 0 < outlier_ejection <= outlier_max_ejection"
            )
        workers = self.workers.strip().lower()
        if workers != "auto" and not (workers.isdigit() and 1 <= int(workers) <= MAX_WORKERS):
            raise ConfigError(f"workers must be 'auto' or a number from 1 to {MAX_WORKERS}")


_HELP = {
    "http": "front end address HOST:PORT (HTTP/1.1 and h2c)",
    "tunnel": (
        "tunnel listener address HOST:PORT where backends dial in ('none': no separate port, "
        "backends use the front end's)"
    ),
    "front_end_tunnels": (
        "accept tunnels on the front end's port too (the plain handshake at tunnel_path, "
        "WebSocket tunnels at ws_path); --no-front-end-tunnels refuses them (403)"
    ),
    "tunnel_path": "request target of the plain tunnel handshake on the front end",
    "ws_path": "path of WebSocket tunnels (ws://, wss://) on the front end",
    "httpsock_path": "path of httpsock tunnels (socket over plain HTTP; http://, https://)",
    "httpsock_max_sessions": "cap on httpsock sessions; over it: 503 with Retry-After",
    "httpsock_max_sessions_per_client": "cap on httpsock sessions from one address (0 = none)",
    "httpsock_poll_timeout": "seconds an httpsock GET is held open when there is nothing to send",
    "httpsock_idle_timeout": "seconds without any request after which an httpsock session expires",
    "token": "require 'Authorization: Bearer TOKEN' on the tunnel port",
    "response_timeout": "seconds to wait for response headers (after the request) before 504",
    "response_idle_timeout": (
        "seconds a response body may stall (backend silent or user not reading) before abort"
    ),
    "default_service": "catch-all service for unmatched requests ('none' turns it off)",
    "grace": "seconds a claim keeps routing (503) after its last tunnel dropped",
    "queue_timeout": "seconds a request waits when every tunnel is at its stream limit",
    "max_body_size": (
        "request body limit in bytes (0 = unlimited, streamed); over it: 413 before any backend "
        "is contacted when Content-Length says so, else the stream is aborted at the limit"
    ),
    "ping_interval": "seconds of tunnel silence before a PING",
    "dead_after": "seconds without any frame before a tunnel is dead",
    "drain_timeout": "seconds to let in-flight requests finish on shutdown",
    "handshake_timeout": "seconds a new tunnel connection has to complete its handshake",
    "max_streams_per_tunnel": "cap on concurrent streams per tunnel (also bounded by the backend)",
    "max_tunnels": "cap on registered tunnels",
    "max_pending_handshakes": (
        "cap on tunnel connections still in their handshake; over it: 503 with Retry-After"
    ),
    "max_pending_per_address": "cap on tunnel connections in their handshake from one address",
    "auth_failure_rate": (
        "failed tunnel authentications per second allowed per address; over it: 429"
    ),
    "auth_failure_burst": "failed tunnel authentications an address may make before throttling",
    "tunnel_tls_cert": "tunnel port TLS certificate chain (PEM); backends dial tls://HOST:PORT",
    "tunnel_tls_key": "tunnel port TLS private key (PEM); certificate and key reload on SIGHUP",
    "tokens": (
        "TOML file of identities ([[token]] name, token or token_sha256, services, hosts); "
        "reloaded on SIGHUP"
    ),
    "domain": (
        "domain under which a backend presenting a TLS client certificate gets "
        "<fingerprint>.<domain>"
    ),
    "reserved_hosts": "comma-separated host names no backend may claim (besides the router's own)",
    "outlier_failures": (
        "consecutive failed streams after which a tunnel leaves rotation for a while (0 = off)"
    ),
    "outlier_ejection": "seconds of the first ejection of a failing tunnel; doubles each time",
    "outlier_max_ejection": "longest ejection of a failing tunnel, in seconds",
    "trusted_proxies": "comma-separated client IPs whose X-Forwarded-* are kept",
    "keepalive_timeout": "seconds an idle user connection stays open between requests",
    "header_timeout": "seconds a user has to send a complete request head (slowloris)",
    "request_body_timeout": "seconds a request body may stall between chunks before 408",
    "min_body_rate": "bytes/s a request body must average after its first 10 s, else 408 (0 = off)",
    "write_timeout": "seconds one write to a user may block before the connection is closed",
    "max_requests_per_connection": (
        "requests per user connection; then HTTP/1.1 'Connection: close', HTTP/2 graceful GOAWAY"
    ),
    "max_connections": "cap on user connections; above it new ones are closed at once",
    "max_connections_per_client": "cap on user connections from one address",
    "max_in_flight_per_client": "cap on requests in flight from one address (0 = none); 503",
    "max_header_fields": "cap on header fields in a request; over it: 431",
    "max_header_size": "cap on a request head in bytes; over it: 431",
    "max_concurrent_streams": "concurrent streams per HTTP/2 user connection",
    "h2c_upgrade": (
        "honour 'Upgrade: h2c' over HTTP/1.1 (off by default: it lets h2c smuggling past a "
        "TLS-terminating proxy in front)"
    ),
    "admin": (
        "admin listener HOST:PORT: /metrics, /healthz, /readyz, /api/status and the status page "
        "('none': off; never the public port)"
    ),
    "inspect_bodies": "the request inspector keeps the first 4 KiB of request and response bodies",
    "inspector_size": "requests the status page's inspector remembers",
    "tls_cert": "front end TLS certificate chain (PEM); with tls_key serves HTTPS, ALPN h2/http1.1",
    "tls_key": "front end TLS private key (PEM); certificate and key reload on SIGHUP",
    "rate_limit": "requests per second allowed per client address (0 = no limit); over it: 429",
    "rate_burst": "requests a client may burst above the rate limit",
    "max_in_flight": "router-wide cap on requests in flight; above it: 503 without queueing",
    "log_level": "logging level",
    "log_format": "log line format: human, or json (one object per line)",
    "access_log": "one log line per request (true/false)",
    "workers": (
        "worker processes sharing the front end and tunnel ports ('auto': one per core); "
        "helpers hold a tunnel to each"
    ),
    "reuse_port": (
        "with several workers, give each its own listening sockets (SO_REUSEPORT, the kernel "
        "spreads connections); false: one socket shared by every worker"
    ),
}


# The README's flag tables (python -m ptth.settings --update-readme README.md); else _HELP.
_DOCS = {
    "http": (
        "front end address: HTTP/1.1 and HTTP/2 (prior knowledge) on one port; HTTPS with "
        "`--tls-cert`"
    ),
    "tunnel": (
        "tunnel port, where backends dial in; `none`: no separate port (backends dial the front"
        " end)"
    ),
    "httpsock_path": (
        "where the front end serves httpsock tunnels (`http://`, `https://`: socket over plain "
        "HTTP)"
    ),
    "token": "require `Authorization: Bearer TOKEN` on the tunnel port (one shared identity)",
    "tokens": (
        "TOML file of identities (`[[token]]` with `name`, `token` or `token_sha256`, "
        "`services`, `hosts`), see `examples/tokens.toml`; each may claim only its services and"
        " hosts (403); reloaded on SIGHUP, revoked tunnels drained"
    ),
    "domain": (
        "a backend presenting a TLS client certificate gets `<key label>.<domain>` with no "
        "other configuration"
    ),
    "reserved_hosts": (
        "comma-separated hosts no backend may claim, besides the router's own (its listening "
        "hosts, `localhost`, the domain)"
    ),
    "response_timeout": (
        "wait for response headers, counted from the end of the request body, then 504"
    ),
    "response_idle_timeout": (
        "a response body may stall this long (backend silent, or user not reading) before it is"
        " aborted"
    ),
    "default_service": "catch-all service for unmatched requests (`none` turns it off: 404)",
    "grace": "a claim keeps routing (503) after its last tunnel dropped",
    "queue_timeout": "a request waits this long when every tunnel is at its stream limit",
    "drain_timeout": (
        "let in-flight requests finish on shutdown; also how long a backend that sent GOAWAY "
        "may keep streams open before the router closes its tunnel"
    ),
    "handshake_timeout": "a new tunnel connection must finish its handshake; then 408 and close",
    "max_streams_per_tunnel": (
        "cap on concurrent streams per tunnel: the router follows the backend's limit up to "
        "this, logs when it caps, and tells the helper (which then opens extra tunnels sooner)"
    ),
    "max_tunnels": "cap on registered tunnels",
    "outlier_failures": (
        "a tunnel whose last this many streams failed (reset, tunnel lost, 504, malformed "
        "response) leaves rotation; `0` = off"
    ),
    "trusted_proxies": "comma-separated client IPs whose `X-Forwarded-*` and `Forwarded` are kept",
    "max_in_flight": "router-wide cap on requests in flight; above it: 503 at once, no queueing",
    "log_level": "logging level",
    "log_format": '`human` lines, or `json`: one object per line (see "Logs")',
    "access_log": "one log line per request",
    "workers": (
        "worker processes sharing both ports (`auto`: one per core); every backend holds a "
        'tunnel to each (see "Several cores" below)'
    ),
    "reuse_port": (
        "with several workers, each its own listening sockets (`SO_REUSEPORT`: the kernel "
        "spreads connections); `false`: one socket shared by all"
    ),
    "admin": (
        "the admin listener: `/metrics`, `/healthz`, `/readyz`, `/api/status` and the status "
        'page (see "Operations: metrics, health and the status page"); `none` turns it off; '
        "refused on the front end's or tunnel port; a port that cannot be bound is logged and "
        "the router serves without it; with `--workers N`, worker *i* listens on the port plus "
        "*i*"
    ),
    "inspect_bodies": (
        "the status page's request inspector also keeps the first 4 KiB of each request and "
        "response body (off: bodies are never captured)"
    ),
    "inspector_size": "requests the inspector remembers",
    "header_timeout": (
        "a request head must be complete this long after its first byte (the first head: after "
        "the connection opened); slowloris connections close then"
    ),
    "keepalive_timeout": (
        "an idle user connection (HTTP/1.1 between requests, HTTP/2 with no stream) is closed "
        "after it"
    ),
    "request_body_timeout": "a request body may stall this long between chunks, then 408",
    "min_body_rate": (
        "after its first 10 s a request body must average this rate, else 408 (`0` = off)"
    ),
    "max_body_size": (
        "request body limit in bytes; over it: 413 before any backend is contacted when "
        "Content-Length says so, else the stream is aborted at the limit; unlimited bodies "
        "stream with memory bounded by flow control"
    ),
    "write_timeout": (
        "one write to a user may block this long (a full socket), then the connection is closed"
    ),
    "max_requests_per_connection": (
        "then HTTP/1.1 answers with `Connection: close` and HTTP/2 sends a graceful GOAWAY "
        "(in-flight streams finish)"
    ),
    "max_in_flight_per_client": "requests in flight from one address (`0` = no cap); over it: 503",
    "max_concurrent_streams": (
        "streams per HTTP/2 user connection (SETTINGS_MAX_CONCURRENT_STREAMS)"
    ),
    "tls_cert": (
        "PEM certificate chain (with `--tls-key`): the front end speaks TLS (1.2+), ALPN `h2` "
        "and `http/1.1`; `kill -HUP` reloads both without dropping connections (a reload that "
        "fails keeps the old pair and logs why)"
    ),
    "tunnel_tls_cert": (
        "TLS on the tunnel port (with `--tunnel-tls-key`; backends dial `tls://HOST:PORT`); "
        "reloaded on SIGHUP"
    ),
}


ROUTER = Spec(
    program="router",
    model=RouterConfig,
    help=_HELP,
    docs=_DOCS,
    default_text={"max_body_size": "0 (unlimited)"},
    description="ptth router: backends dial in on the tunnel port, users call the front end.",
    choices={"log_format": ("human", "json")},
    positive=frozenset(
        (
            "response_timeout",
            "queue_timeout",
            "ping_interval",
            "dead_after",
            "request_body_timeout",
            "max_in_flight",
            "header_timeout",
            "keepalive_timeout",
            "write_timeout",
            "max_requests_per_connection",
            "max_connections",
            "max_connections_per_client",
            "max_header_fields",
            "max_header_size",
            "max_concurrent_streams",
        )
    ),
    non_negative=frozenset(
        ("max_body_size", "min_body_rate", "max_in_flight_per_client", "rate_limit")
    ),
    secrets=frozenset(("token",)),
    none_words={"default_service": ("", "none", "off")},
)


def build_parser() -> argparse.ArgumentParser:
    return settings.build_parser(ROUTER)


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> RouterConfig:
    """Defaults < TOML (``--config``) < ``PTTH_*`` < flags (ptth/settings.py)."""
    config, _ = load_router(argv, environ)
    return config


def load_router(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[RouterConfig, bool]:
    """The configuration, and whether ``--print-config`` was asked for."""
    config, args = settings.load(ROUTER, argv, environ)
    assert isinstance(config, RouterConfig)
    return config, bool(args.print_config)


def print_config(config: RouterConfig) -> str:
    return settings.to_toml(ROUTER, config)
