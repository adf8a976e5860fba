"""End-to-end tests for examples/user.py against a throwaway hypercorn server.

The server is a tiny ASGI app run by ``python -m hypercorn`` in a subprocess.  The test binds
the listening socket itself (127.0.0.1, port 0) and hands it over as ``fd://N``, so there is
no pick-a-free-port race.  ``--workers 0`` keeps hypercorn in that one process, so killing
it leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import io
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
USER_SCRIPT = REPO / "examples" / "user.py"

APP_SOURCE = textwrap.dedent(
    """
    import itertools

    _turn = itertools.count()


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        headers = []
        status, body = 200, b"bar"
        if path == "/h2only" and scope["http_version"] != "2":
            status, body = 505, b"HTTP/2 required"
        elif path == "/boom":
            status, body = 503, b"down"
        elif path == "/long":
            body = b"x" * 500
        if path != "/anon":
            name = "backend-a" if next(_turn) % 2 == 0 else "backend-b"
            headers.append((b"x-backend", name.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    """
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """Start the ASGI app under hypercorn; yield its base URL; kill it afterwards."""
    (tmp_path / "loadapp.py").write_text(APP_SOURCE)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    proc: subprocess.Popen[bytes] | None = None
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypercorn",
                "--workers",
                "0",
                "--bind",
                f"fd://{fd}",
                "loadapp:app",
            ],
            cwd=tmp_path,
            pass_fds=(fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        _wait_until_serving(proc, base)
        yield base
    finally:
        listener.close()
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()


def _wait_until_serving(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"hypercorn exited with {proc.returncode}:\n{err}")
        try:
            if httpx.get(f"{base}/anon", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("hypercorn did not start serving within 20 s")


def run_user(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(USER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=REPO,
    )


SUMMARY_LINE = re.compile(
    r"^(requests/s|requests|errors|duration|latency(?: p50)?|statuses|backends|failures)\s{2,}(.*)$"
)


def summary_fields(stdout: str) -> dict[str, str]:
    """Parse the summary block: 'label<spaces>value' lines after the per-request output."""
    fields: dict[str, str] = {}
    for line in stdout.splitlines():
        m = SUMMARY_LINE.match(line)
        if m:
            fields[m.group(1).split()[0]] = m.group(2)
    return fields


def free_closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.timeout(60)
def test_http1_quiet_run_succeeds(server: str) -> None:
    res = run_user("--quiet", "--requests", "50", "--concurrency", "5", "--url", f"{server}/foo")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "> GET" not in res.stdout
    f = summary_fields(res.stdout)
    assert f["requests"] == "50"
    assert f["errors"] == "0"
    assert re.fullmatch(r"\d+\.\d{3} s", f["duration"])
    assert float(f["requests/s"]) > 0
    assert re.fullmatch(r"[\d.]+ ms   p90 [\d.]+ ms\s+p99 [\d.]+ ms\s+max [\d.]+ ms", f["latency"])
    assert "\nlatency p50   " in res.stdout
    assert f["statuses"] == "200=50"
    # The app alternates strictly, so the split is exact.
    assert f["backends"] == "backend-a=25 (50.0%)  backend-b=25 (50.0%)"
    assert "failures" not in f


@pytest.mark.timeout(60)
def test_http2_prior_knowledge(server: str) -> None:
    # /h2only answers 505 unless the request really arrived over HTTP/2.
    res = run_user("--http2", "--quiet", "--requests", "50", "--url", f"{server}/h2only")
    assert res.returncode == 0, res.stdout + res.stderr
    f = summary_fields(res.stdout)
    assert f["errors"] == "0"
    assert f["statuses"] == "200=50"

    res = run_user("--quiet", "--requests", "10", "--url", f"{server}/h2only")
    assert res.returncode == 1
    f = summary_fields(res.stdout)
    assert f["errors"] == "10"
    assert f["statuses"] == "505=10"
    assert f["failures"] == "HTTP 505=10"


@pytest.mark.timeout(60)
def test_verbose_lines_and_missing_backend(server: str) -> None:
    res = run_user("--requests", "4", "--concurrency", "2", "--url", f"{server}/anon")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines.count(f"> GET {server}/anon") == 4
    assert lines.count('< 200 OK "bar"') == 4
    assert summary_fields(res.stdout)["backends"] == "(none)=4 (100.0%)"

    res = run_user("--requests", "1", "--url", f"{server}/long")
    assert res.returncode == 0
    assert f'< 200 OK "{"x" * 60}"...' in res.stdout.splitlines()


@pytest.mark.timeout(60)
def test_server_errors_count(server: str) -> None:
    res = run_user("--quiet", "--requests", "6", "--url", f"{server}/boom")
    assert res.returncode == 1
    f = summary_fields(res.stdout)
    assert f["errors"] == "6"
    assert f["statuses"] == "503=6"


@pytest.mark.timeout(60)
def test_closed_port_all_errors() -> None:
    url = f"http://127.0.0.1:{free_closed_port()}/foo"
    res = run_user("--requests", "20", "--concurrency", "4", "--timeout", "2", "--url", url)
    assert res.returncode == 1
    f = summary_fields(res.stdout)
    assert f["requests"] == "20"
    assert f["errors"] == "20"
    assert f["statuses"] == "-"
    assert f["latency"] == "-"
    bang = [ln for ln in res.stdout.splitlines() if ln.startswith("! ")]
    assert len(bang) == 20
    assert all(re.match(r"! \w+: ", ln) for ln in bang)


# --- in-process checks of the reusable pieces ---------------------------------------------


def _load_user_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ptth_example_user", USER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while processing
    spec.loader.exec_module(module)
    return module


def test_percentile_nearest_rank() -> None:
    user = _load_user_module()
    values = [float(v) for v in range(1, 101)]
    assert user.percentile(values, 50) == 50.0
    assert user.percentile(values, 90) == 90.0
    assert user.percentile(values, 99) == 99.0
    assert user.percentile(values, 100) == 100.0
    assert user.percentile([7.0], 50) == 7.0
    assert user.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert user.percentile([], 50) == 0.0


@pytest.mark.timeout(60)
def test_run_load_api(server: str) -> None:
    import asyncio

    user = _load_user_module()
    out = io.StringIO()
    summary = asyncio.run(
        user.run_load(f"{server}/foo", 10, 3, http2=True, quiet=False, timeout=5.0, out=out)
    )
    assert summary.requests == 10
    assert summary.errors == 0
    assert summary.statuses == {200: 10}
    assert summary.backends == {"backend-a": 5, "backend-b": 5}
    assert 0 < summary.p50 <= summary.p90 <= summary.p99 <= summary.max_latency
    assert summary.rps > 0
    assert out.getvalue().count('< 200 OK "bar"') == 10
