"""The pure modules decide and never do I/O (STYLE.md practice 1): no trio, no sockets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "ptth/_handshake.py",
    "ptth/_headers.py",
    "ptth/_fields.py",
    "ptth/_backoff.py",
    "ptth/_budget.py",
    "ptth/_address.py",
    "ptth/_frame_guard.py",
    "ptth/_liveness.py",
    "ptth/_upstream_url.py",
    "ptth/_ws_frames.py",
    "ptth/errors.py",
    "router/routing.py",
    "router/balancer.py",
    "router/ratelimit.py",
    "router/responses.py",
]
FORBIDDEN = {"trio", "socket", "asyncio", "anyio", "time", "httpx", "hypercorn"}


@pytest.mark.parametrize("path", PURE)
def test_pure_module_imports_no_io(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path} imports {sorted(imported & FORBIDDEN)}"
