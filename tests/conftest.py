"""Suite-wide guards: no test may leave a child process behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _children(pid: int) -> set[int]:
    """Live (non-zombie) processes whose parent is ``pid``, read from /proc."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, parent = fields[0], int(fields[1])
        if parent == pid and state != "Z":
            found.add(int(stat.parent.name))
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    before = _children(os.getpid())
    yield
    deadline = time.monotonic() + 5
    leaked = _children(os.getpid()) - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)  # a child that was just signalled may still be exiting
        leaked = _children(os.getpid()) - before
    assert not leaked, f"test left child processes running: {sorted(leaked)}"
