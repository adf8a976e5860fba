"""Which loop the helper runs an app on (ptth/_loop.py)."""

from __future__ import annotations

import importlib.util

import pytest

from ptth._loop import LOOPS, resolve_loop
from ptth.errors import ConfigError


def test_auto_prefers_uvloop_when_installed() -> None:
    backend, options = resolve_loop("auto")
    assert backend == "asyncio"
    if importlib.util.find_spec("uvloop") is not None:
        assert options == {"use_uvloop": True}
    else:
        assert options == {}


def test_named_loops() -> None:
    assert resolve_loop("asyncio") == ("asyncio", {})
    assert resolve_loop("trio") == ("trio", {})
    if importlib.util.find_spec("uvloop") is not None:
        assert resolve_loop("uvloop") == ("asyncio", {"use_uvloop": True})


def test_unknown_loop_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_loop("gevent")
    assert "gevent" in str(info.value)
    for name in LOOPS:
        assert name in str(info.value)
