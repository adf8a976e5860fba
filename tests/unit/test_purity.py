"""The pure modules decide and never do I/O (STYLE.md practice 1): no event loop, no sockets.

Every module of ``ptth/engine/`` is pure, found by listing the package (a new module is covered
without editing this file), and checked through the project modules it imports: an engine module
may not reach trio, asyncio, anyio or sniffio by way of, say, ``ptth.errors`` either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("ptth", "router")
PURE = [
    "ptth/proto/handshake.py",
    "ptth/proto/headers.py",
    "ptth/proto/fields.py",
    "ptth/_backoff.py",
    "ptth/_workers.py",
    "ptth/proto/address.py",
    "ptth/_upstream_url.py",
    "ptth/proto/ws_frames.py",
    "ptth/httpsock/protocol.py",
    "ptth/errors.py",
    "router/routing.py",
    "router/balancer.py",
    "router/ratelimit.py",
    "router/tunnel_admission.py",
    "router/responses.py",
]
ENGINE = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "ptth/engine").glob("*.py"))
EVENT_LOOPS = {"trio", "asyncio", "anyio", "sniffio"}
FORBIDDEN = EVENT_LOOPS | {"socket", "selectors", "time", "httpx", "hypercorn"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_file(name: str, root: Path, project: tuple[str, ...]) -> Path | None:
    """The source file of a project module, or None (not ours, or not a module)."""
    if name.split(".")[0] not in project:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, root: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    module = _module_name(path, root)
    top = module.split(".")[0]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from .. import errors` names a submodule, not the package's __init__.
            submodules = {f"{target}.{alias.name}" for alias in node.names}
            named = {name for name in submodules if _module_file(name, root, (*PROJECT, top))}
            names.update(named or {target})
    return names


def forbidden_imports(
    path: Path,
    forbidden: set[str],
    *,
    root: Path = ROOT,
    project: tuple[str, ...] = PROJECT,
    follow: bool = True,
) -> list[str]:
    """Import chains from ``path`` to a forbidden top-level package, through project modules.

    Parent packages that Python imports implicitly are not followed (``ptth/__init__.py`` is the
    public front door and loads the driver); the modules a file names are.
    """
    found: list[str] = []
    seen = {path}
    queue = [(path, [_module_name(path, root)])]
    while queue:
        current, chain = queue.pop()
        for name in sorted(_imports(current, root)):
            if name.split(".")[0] in forbidden:
                found.append(" -> ".join([*chain, name]))
                continue
            target = _module_file(name, root, project) if follow else None
            if target is not None and target not in seen:
                seen.add(target)
                queue.append((target, [*chain, name]))
    return found


@pytest.mark.parametrize("path", PURE)
def test_pure_module_imports_no_io(path: str) -> None:
    problems = forbidden_imports(ROOT / path, FORBIDDEN, follow=False)
    assert not problems, f"{path} imports I/O: {problems}"


@pytest.mark.parametrize("path", ENGINE)
def test_engine_module_is_pure_through_its_project_imports(path: str) -> None:
    problems = forbidden_imports(ROOT / path, FORBIDDEN)
    assert not problems, f"{path} reaches I/O: {problems}"


def test_the_engine_listing_covers_the_package() -> None:
    names = {Path(path).stem for path in ENGINE}
    assert {"__init__", "connection", "stream", "events", "budget", "frame_guard"} <= names
    assert {"liveness", "settings", "_h2"} <= names
    assert not {"ptth/_budget.py", "ptth/_frame_guard.py", "ptth/_liveness.py"} & set(PURE)


def test_engine_loads_no_event_loop_at_run_time() -> None:
    """Import every engine module with ``ptth/__init__`` stubbed out: no loop library loads."""
    modules = [_module_name(ROOT / path, ROOT) for path in ENGINE]
    script = f"""
import importlib, sys, types
package = types.ModuleType("ptth")
package.__path__ = [{str(ROOT / "ptth")!r}]
sys.modules["ptth"] = package
for name in {modules!r}:
    importlib.import_module(name)
print(sorted(m for m in sys.modules if m.split(".")[0] in {sorted(EVENT_LOOPS)!r}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"the engine loaded {result.stdout.strip()}"


def test_the_check_sees_through_project_modules(tmp_path: Path) -> None:
    """The checker itself: a pure-looking module that reaches anyio via a sibling is caught."""
    package = tmp_path / "proj" / "engine"
    package.mkdir(parents=True)
    (tmp_path / "proj" / "__init__.py").write_text("import trio\n")  # implicit parent: ignored
    (tmp_path / "proj" / "helpers.py").write_text("import sniffio\n")
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text("from . import util\nfrom ..errors import Oops\n")
    (package / "util.py").write_text("from proj.helpers import thing\n")
    (tmp_path / "proj" / "errors.py").write_text("class Oops(Exception): ...\n")
    (package / "clean.py").write_text("from .. import errors\nimport h2.events\n")

    def check(name: str) -> list[str]:
        return forbidden_imports(package / name, EVENT_LOOPS, root=tmp_path, project=("proj",))

    assert check("core.py") == [
        "proj.engine.core -> proj.engine.util -> proj.helpers -> sniffio",
    ]
    assert check("clean.py") == []
