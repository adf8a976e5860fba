"""``python -m ptth``'s settings: one model for its flags, ``PTTH_*`` variables and TOML keys.

Loaded like the router's (ptth/settings.py): defaults < TOML (``--config``) < environment <
flags. :meth:`PtthConfig.backend_options` turns it into the library's :class:`BackendOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import settings
from ._backend import BackendOptions
from ._loop import LOOPS
from .logs import LOG_FORMATS
from .settings import Spec

__all__ = ["PTTH", "PtthConfig", "load_ptth"]


@dataclass(frozen=True)
class PtthConfig:
    """Defaults follow BackendOptions; each has a flag, a PTTH_* variable, a key."""

    app: str | None = None
    to: str | None = None
    router: tuple[str, ...] = ("127.0.0.1:8887",)
    proxy: str | None = None
    ca_file: str | None = None
    identity: bool | str = False
    client_cert: str | None = None
    client_key: str | None = None
    service: str = "default"
    hosts: tuple[str, ...] = ()
    path_prefix: str | None = None
    strip_prefix: bool = False
    root_path: str = ""
    token: str | None = None
    connections: int = 1
    max_streams: int = 1000
    max_connections: int = 0
    weight: float = 1.0
    instance: str | None = None
    drain_timeout: float = 30.0
    metrics: str | None = None
    loop: str = "auto"
    log_level: str = "INFO"
    log_format: str = "human"

    def backend_options(self) -> BackendOptions:
        fields: dict[str, Any] = dict(
            service=self.service,
            hosts=self.hosts,
            path_prefix=self.path_prefix,
            strip_prefix=self.strip_prefix,
            root_path=self.root_path,
            token=self.token,
            connections=self.connections,
            max_concurrent_streams=self.max_streams,
            max_connections=self.max_connections,
            weight=self.weight,
            drain_timeout=self.drain_timeout,
            ca_file=self.ca_file,
            identity=self.identity,
            client_cert=self.client_cert,
            client_key=self.client_key,
            proxy=self.proxy,
            metrics=self.metrics,
        )
        if self.instance:
            fields["instance"] = self.instance
        return BackendOptions(**fields)


_HELP = {
    "app": "the ASGI app, as MODULE:ATTRIBUTE (MODULE alone means MODULE:app); omit with --to",
    "to": (
        "agent mode: forward every request to the server at URL instead of an app: "
        "http://HOST:PORT (HTTP/1.1, WebSockets by Upgrade) or h2c://HOST:PORT (HTTP/2, e.g. gRPC)"
    ),
    "router": (
        "router tunnel address: HOST:PORT or tcp://HOST:PORT (plain), tls://, ws:// or wss:// "
        "HOST:PORT[/path]; repeat for several (env and TOML: comma-separated or a list)"
    ),
    "proxy": (
        "reach the routers through this HTTP proxy's CONNECT: http://[USER:PASSWORD@]HOST:PORT "
        "(unset: HTTPS_PROXY for tls:// routers, HTTP_PROXY for the others, minus NO_PROXY; "
        "'none' dials directly)"
    ),
    "ca_file": "tls:// routers: trust the CAs in this PEM file instead of the system trust store",
    "identity": (
        "tls:// routers: present this helper's key identity, made on first use in DIR "
        "(flag alone or true: $XDG_CONFIG_HOME/ptth/identity); a router with --domain grants "
        "<label>.<domain>"
    ),
    "client_cert": "tls:// routers: present this client certificate (PEM) instead of --identity",
    "client_key": "the private key of --client-cert (PEM; unset: in the --client-cert file)",
    "service": "service name to register",
    "hosts": "host name to claim (repeatable; '*.example.com' allowed)",
    "path_prefix": "path prefix to claim, e.g. /api",
    "strip_prefix": (
        "ask the router to cut the path prefix from request paths (sent as X-Forwarded-Prefix; "
        "the app's ASGI root_path)"
    ),
    "root_path": (
        "ASGI root_path, as uvicorn's --root-path: the prefix a proxy in front of the router "
        "already removed (app mode only)"
    ),
    "token": "bearer token for the router",
    "connections": "tunnels to keep open to each router (to each of its workers)",
    "max_streams": "max concurrent requests per tunnel (each WebSocket holds one)",
    "max_connections": (
        "tunnels at most per router: extras open when every tunnel is over 80% full and close "
        "when idle (0: four times connections)"
    ),
    "weight": "relative share of traffic",
    "instance": "instance id, stable across reconnects (unset: host-pid-random)",
    "drain_timeout": "seconds to finish in-flight requests on shutdown",
    "metrics": (
        "serve this helper's own Prometheus metrics at http://HOST:PORT/metrics "
        "(tunnels, RTT, requests, failed dials; unset: none)"
    ),
    "loop": "event loop for the app: auto (uvloop if installed, else asyncio), asyncio, uvloop "
    "or trio",
    "log_level": "logging level",
    "log_format": "log line format: human, or json (one object per line)",
}

# The README's flag tables (python -m ptth.settings --update-readme README.md); else _HELP.
_DOCS = {
    "router": (
        "router tunnel address: `HOST:PORT` or `tcp://HOST:PORT` (plain), `tls://HOST:PORT`, "
        "`ws://HOST:PORT[/path]`, `wss://HOST:PORT[/path]`; repeat for several (env "
        "`PTTH_ROUTER`, comma-separated)"
    ),
    "ca_file": "`tls://`: trust the CAs in this PEM file instead",
    "identity": (
        "`tls://`: present this helper's key identity, made on first use in `DIR` (default "
        "`$XDG_CONFIG_HOME/ptth/identity`)"
    ),
    "client_cert": "`tls://`: present this client certificate (PEM) instead of `--identity`",
    "proxy": (
        "reach the routers through this HTTP proxy's `CONNECT`: "
        "`http://[USER:PASSWORD@]HOST:PORT`; `none` dials directly (below)"
    ),
    "service": "service name to register",
    "hosts": "host name to claim (repeatable); `*.example.com` allowed",
    "path_prefix": "path prefix to claim, e.g. `/api`",
    "strip_prefix": (
        "the router cuts the matched `--path-prefix` from request paths and sends it as "
        "`X-Forwarded-Prefix` (see below)"
    ),
    "root_path": (
        "ASGI `root_path`, as uvicorn's `--root-path`: the prefix a proxy in front of the "
        "router already removed (app mode only)"
    ),
    "token": "bearer token for the router",
    "connections": "tunnels to keep open to each router (to each of its workers, with `--workers`)",
    "max_streams": "max concurrent requests per tunnel (each WebSocket holds one)",
    "max_connections": (
        "tunnels at most per router (per worker, with `--workers`): extras open when every "
        "tunnel is over 80 % full, close when idle"
    ),
    "loop": (
        "event loop for the app: `auto` (uvloop if installed, else asyncio), `asyncio`, "
        "`uvloop`, `trio`"
    ),
    "weight": "relative share of traffic",
    "instance": "instance id, stable across reconnects",
    "drain_timeout": "time to finish in-flight requests on shutdown",
    "metrics": (
        "serve this helper's own Prometheus metrics at `http://HOST:PORT/metrics` (tunnels, "
        'RTT, requests, failed dials; see "Operations")'
    ),
    "log_level": "logging level",
    "log_format": '`human` lines, or `json`: one object per line (see "Logs")',
    "to": (
        "agent mode: forward every request to the server at `URL` instead of an app: "
        "`http://HOST:PORT` (HTTP/1.1, WebSockets by Upgrade) or `h2c://HOST:PORT` (HTTP/2 "
        "prior knowledge, e.g. gRPC)"
    ),
    "app": "`MODULE:ATTRIBUTE` (`MODULE` alone means `MODULE:app`); omit with `--to`",
}


PTTH = Spec(
    program="ptth",
    model=PtthConfig,
    help=_HELP,
    docs=_DOCS,
    default_text={
        "proxy": "HTTPS_PROXY / HTTP_PROXY minus NO_PROXY",
        "ca_file": "system trust store",
        "max_connections": "0 (four times connections)",
        "instance": "<host>-<pid>-<random>",
    },
    description="Serve an ASGI app through ReverseHTTP tunnels dialled out to a ptth router, "
    "or (agent mode, --to) forward them to a local server written in any language.",
    flags={"hosts": "--host"},
    metavars={
        "to": "URL",
        "router": "ADDRESS",
        "hosts": "HOST",
        "proxy": "URL",
        "ca_file": "FILE",
        "identity": "DIR",
        "client_cert": "FILE",
        "client_key": "FILE",
        "metrics": "HOST:PORT",
    },
    repeatable=frozenset(("router", "hosts")),
    positional=frozenset(("app",)),
    optional_value={"identity": "true"},
    choices={"loop": tuple(LOOPS), "log_format": tuple(LOG_FORMATS)},
    positive=frozenset(("connections", "max_streams", "weight")),
    non_negative=frozenset(("max_connections", "drain_timeout")),
    secrets=frozenset(("token",)),
    none_words={"proxy": ()},  # "none" and "" mean "dial directly" to BackendOptions
    bool_values=False,  # "--strip-prefix MODULE:app" must not read the app as a value
)


def load_ptth(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[PtthConfig, bool]:
    """The configuration, and whether ``--print-config`` was asked for."""
    config, args = settings.load(PTTH, argv, environ)
    assert isinstance(config, PtthConfig)
    return config, bool(args.print_config)
