"""``python -m ptth module:app --router HOST:PORT``: serve an ASGI app through a tunnel.

``python -m ptth --to URL --router HOST:PORT`` (agent mode) forwards to a running local server.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import cast

from . import BackendOptions, _run_until_signal, run, serve_upstream
from ._loop import LOOPS
from ._upstream_url import parse_upstream_url
from .allocator import tune_allocator
from .errors import ConfigError, PTTHError
from .logs import LOG_FORMATS, JSONFormatter, configure
from .types import ASGIApp


def load_app(spec: str) -> ASGIApp:
    """``package.module:attribute`` (attribute may be dotted); ``module`` alone means ``:app``."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigError(f"app must be MODULE:ATTRIBUTE, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    for part in (attr or "app").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr or 'app'!r}") from None
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable")
    return cast(ASGIApp, obj)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ptth",
        description="Serve an ASGI app through ReverseHTTP tunnels dialled out to a ptth router, "
        "or (agent mode, --to) forward them to a local server written in any language.",
    )
    p.add_argument(
        "app",
        nargs="?",
        default=None,
        help="the ASGI app, as MODULE:ATTRIBUTE (e.g. examples.backend:app); omit with --to",
    )
    p.add_argument(
        "--to",
        metavar="URL",
        default=None,
        help="agent mode: forward every request to the server at URL instead of an app: "
        "http://HOST:PORT (HTTP/1.1, WebSockets by Upgrade) or h2c://HOST:PORT "
        "(HTTP/2 prior knowledge, e.g. gRPC)",
    )
    p.add_argument(
        "--router",
        action="append",
        default=None,
        help="router tunnel address HOST:PORT (plain, also tcp://HOST:PORT) or tls://HOST:PORT; "
        "repeat for several routers (env PTTH_ROUTER, comma-separated; default 127.0.0.1:8887)",
    )
    p.add_argument(
        "--proxy",
        metavar="URL",
        default=None,
        help="reach the routers through this HTTP proxy's CONNECT: "
        "http://[USER:PASSWORD@]HOST:PORT (default: HTTPS_PROXY for tls:// routers, "
        "HTTP_PROXY for the others, minus NO_PROXY; "
        "'none' dials directly)",
    )
    p.add_argument(
        "--ca-file",
        metavar="FILE",
        default=os.environ.get("PTTH_CA_FILE"),
        help="tls:// routers: trust the CAs in FILE (PEM) instead of the system trust store "
        "(env PTTH_CA_FILE)",
    )
    p.add_argument(
        "--identity",
        metavar="DIR",
        nargs="?",
        const=True,
        default=False,
        help="tls:// routers: present this helper's key identity (made on first use, kept in "
        "DIR, default $XDG_CONFIG_HOME/ptth/identity); a router with --domain grants it "
        "<label>.<domain>",
    )
    p.add_argument(
        "--client-cert",
        metavar="FILE",
        default=None,
        help="tls:// routers: present this client certificate (PEM) instead of --identity",
    )
    p.add_argument(
        "--client-key",
        metavar="FILE",
        default=None,
        help="the private key of --client-cert (PEM; default: in the --client-cert file)",
    )
    p.add_argument(
        "--service",
        default=os.environ.get("PTTH_SERVICE", "default"),
        help="service name to register (default: default)",
    )
    p.add_argument(
        "--host",
        dest="hosts",
        action="append",
        default=[],
        help="host name to claim (repeatable; '*.example.com' allowed)",
    )
    p.add_argument("--path-prefix", default=None, help="path prefix to claim, e.g. /api")
    p.add_argument(
        "--strip-prefix",
        action="store_true",
        help="ask the router to cut the --path-prefix from request paths (sent as "
        "X-Forwarded-Prefix; the app's ASGI root_path)",
    )
    p.add_argument(
        "--root-path",
        default="",
        help="ASGI root_path, as uvicorn's --root-path: the prefix a proxy in front of the "
        "router already removed (app mode only)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("PTTH_TOKEN"),
        help="bearer token for the router (env PTTH_TOKEN)",
    )
    p.add_argument(
        "--connections", type=int, default=1, help="tunnels to keep open to each router (default 1)"
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=1000,
        help="max concurrent requests per tunnel (default 1000; WebSockets hold one each)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="tunnels at most per router: extra ones open when every tunnel is over 80%% full "
        "and close again when idle (default 0: four times --connections)",
    )
    p.add_argument(
        "--weight", type=float, default=1.0, help="relative share of traffic (default 1)"
    )
    p.add_argument(
        "--instance",
        default=None,
        help="instance id, stable across reconnects (default host-pid-random)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to finish in-flight requests on shutdown (default 30)",
    )
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("PTTH_LOOP", "auto"),
        help="event loop to run the app on: auto (uvloop if installed, else asyncio), asyncio, "
        "uvloop or trio (env PTTH_LOOP; default auto)",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("PTTH_LOG_LEVEL", "INFO"),
        help="logging level (default INFO; env PTTH_LOG_LEVEL)",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("PTTH_LOG_FORMAT", "human"),
        help="log line format: human, or json (one object per line; env PTTH_LOG_FORMAT)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        # httpx would log every request agent mode forwards at INFO: quiet below DEBUG.
        handler = configure(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"ptth: {exc}", file=sys.stderr)
        return 2
    routers = args.router or [
        a.strip() for a in os.environ.get("PTTH_ROUTER", "127.0.0.1:8887").split(",") if a.strip()
    ]
    try:
        if (args.app is None) == (args.to is None):
            raise ConfigError("give exactly one of an app (MODULE:ATTRIBUTE) or --to URL")
        if args.to is not None and args.root_path:
            raise ConfigError("--root-path is for an app; with --to set it on the upstream server")
        fields = dict(
            service=args.service,
            hosts=tuple(args.hosts),
            path_prefix=args.path_prefix,
            strip_prefix=args.strip_prefix,
            root_path=args.root_path,
            token=args.token,
            connections=args.connections,
            max_concurrent_streams=args.max_streams,
            max_connections=args.max_connections,
            weight=args.weight,
            drain_timeout=args.drain_timeout,
            ca_file=args.ca_file,
            identity=args.identity,
            client_cert=args.client_cert,
            client_key=args.client_key,
            proxy=args.proxy,
        )
        if args.instance:
            fields["instance"] = args.instance
        options = BackendOptions(**fields)
        if isinstance(handler.formatter, JSONFormatter):  # every line names this helper
            handler.formatter.static["instance"] = options.instance
        if args.to is not None:
            url = str(parse_upstream_url(args.to))  # a bad URL fails before any dialling

            async def agent() -> None:
                await serve_upstream(url, routers, options=options)

            _run_until_signal(agent, args.loop)
        else:
            run(load_app(args.app), routers, options=options, loop=args.loop)
    except PTTHError as exc:
        print(f"ptth: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
