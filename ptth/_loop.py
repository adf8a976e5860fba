"""Which event loop the helper runs an app on: ``auto`` (uvloop, else asyncio), or one by name.

Apps run on the loop they were written for (ARCHITECTURE.md, "Loops"): Django, Quart and most of
the ASGI world need asyncio; trio apps ask for trio. ``auto`` follows uvicorn's choice.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .errors import ConfigError

__all__ = ["LOOPS", "resolve_loop"]

LOOPS = ("auto", "asyncio", "uvloop", "trio")


def resolve_loop(loop: str) -> tuple[str, dict[str, Any]]:
    """The anyio backend name and options for ``loop``; a ConfigError names what is wrong."""
    if loop not in LOOPS:
        raise ConfigError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if loop == "uvloop":
        if importlib.util.find_spec("uvloop") is None:
            raise ConfigError("loop 'uvloop' needs the uvloop package (pip install uvloop)")
        return "asyncio", {"use_uvloop": True}
    if loop == "trio" and importlib.util.find_spec("trio") is None:
        raise ConfigError("loop 'trio' needs the trio package (pip install trio)")
    return loop, {}
