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

from . import _run_until_signal, run, serve_upstream, settings
from ._upstream_url import parse_upstream_url
from .allocator import tune_allocator
from .cli_config import PTTH, load_ptth
from .errors import ConfigError, PTTHError
from .logs import JSONFormatter, configure
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
    """The flags of ptth/cli_config.py's model (the environment is read when loading)."""
    return settings.build_parser(PTTH)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, wants_print = load_ptth(argv)
    except PTTHError as exc:
        print(f"ptth: {exc}", file=sys.stderr)
        return 2
    if wants_print:
        sys.stdout.write(settings.to_toml(PTTH, config))
        return 0
    tune_allocator()
    try:
        # httpx would log every request agent mode forwards at INFO: quiet below DEBUG.
        handler = configure(config.log_level, config.log_format)
    except ValueError as exc:
        print(f"ptth: {exc}", file=sys.stderr)
        return 2
    routers = list(config.router)
    try:
        if (config.app is None) == (config.to is None):
            raise ConfigError("give exactly one of an app (MODULE:ATTRIBUTE) or --to URL")
        if config.to is not None and config.root_path:
            raise ConfigError("--root-path is for an app; with --to set it on the upstream server")
        if not routers:
            raise ConfigError("router: at least one router address is required")
        options = config.backend_options()
        if isinstance(handler.formatter, JSONFormatter):  # every line names this helper
            handler.formatter.static["instance"] = options.instance
        if config.to is not None:
            url = str(parse_upstream_url(config.to))  # a bad URL fails before any dialling

            async def agent() -> None:
                await serve_upstream(url, routers, options=options)

            _run_until_signal(agent, config.loop)
        else:
            assert config.app is not None
            run(load_app(config.app), routers, options=options, loop=config.loop)
    except PTTHError as exc:
        print(f"ptth: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
