"""E2E fixtures: which event loop the in-process helper (``ptth.serve``) runs on."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.support import HELPER_LOOPS, HELPER_THREAD


@pytest.fixture(params=HELPER_LOOPS)
def helper_loop(request: pytest.FixtureRequest) -> str:
    """``"trio"`` (the test's own loop) or ``"asyncio"`` (a loop in a thread of its own).

    Pass it on as ``start_backend(..., loop=helper_loop)``, or as ``--loop`` to a ``python -m
    ptth`` child. Apps that run on it must use anyio, not trio, and signal the test with
    :class:`tests.support.ThreadSafeEvent`.
    """
    loop: str = request.param
    return loop


@pytest.fixture(autouse=True)
def no_leaked_helper_threads() -> Iterator[None]:
    """Every asyncio helper's loop and thread are gone when its test ends."""
    yield
    leaked = [t for t in threading.enumerate() if t.name == HELPER_THREAD]
    assert not leaked, f"test left {len(leaked)} asyncio helper thread(s) running"
