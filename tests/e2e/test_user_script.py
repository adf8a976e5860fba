"""End-to-end tests for examples/user.py against a throwaway hypercorn server or a real router.

The server is a tiny ASGI app run by ``python -m hypercorn`` in a subprocess.  The test binds
the listening socket itself (127.0.0.1, port 0) and hands it over as ``fd://N``, so there is
no pick-a-free-port race.  ``--workers 0`` keeps hypercorn in that one process, so killing
it leaves nothing behind.  The ``--duration`` and ``--json`` tests run user.py against an
in-process router with an example backend behind it (``tests.support``).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import select
import signal
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
import trio

from examples.backend import make_app
from tests.support import RunningRouter, start_backend, start_router

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
    """Run user.py with stdout and stderr captured (so never a terminal: plain output)."""
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
def test_closed_port_stops_at_once_and_says_so() -> None:
    url = f"http://127.0.0.1:{free_closed_port()}/foo"
    res = run_user("--requests", "200", "--concurrency", "4", "--timeout", "2", "--url", url)
    assert res.returncode == 1
    assert "Traceback" not in res.stdout + res.stderr
    f = summary_fields(res.stdout)
    # Each of the 4 workers' first attempt is refused: the run stops instead of sending 200.
    # Workers whose first attempt failed early may have started another meanwhile.
    assert 4 <= int(f["requests"]) < 200
    assert f["errors"] == f["requests"]
    assert f["statuses"] == "-"
    assert f["latency"] == "-"
    assert f["failures"] == f"ConnectError={f['requests']}"
    bang = [ln for ln in res.stdout.splitlines() if ln.startswith("! ")]
    assert len(bang) == int(f["requests"])
    assert all(re.match(r"! ConnectError: ", ln) for ln in bang)
    assert f"user.py: cannot reach {url}: ConnectError: " in res.stderr
    assert "is the router running" in res.stderr


@pytest.mark.timeout(60)
def test_unreachable_with_duration_stops_early() -> None:
    url = f"http://127.0.0.1:{free_closed_port()}/foo"
    started = time.monotonic()
    res = run_user("--json", "--duration", "30", "--url", url)
    wall = time.monotonic() - started
    assert res.returncode == 1
    assert wall < 20  # far less than the 30 s asked for (interpreter start-up is the bulk)
    data = json.loads(res.stdout)
    assert data["unreachable"] is True
    assert data["requests"] == data["errors"] == data["failures"]["ConnectError"] > 0
    assert data["duration"] < 5
    assert "cannot reach" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.timeout(60)
def test_timeouts_are_counted() -> None:
    # A listening socket that never accepts: connections complete (the kernel's backlog) but
    # no answer ever comes, so every request times out; that is not "unreachable".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/foo"
        res = run_user("--quiet", "--requests", "3", "--timeout", "0.5", "--url", url)
    assert res.returncode == 1
    f = summary_fields(res.stdout)
    assert (f["requests"], f["errors"], f["failures"]) == ("3", "3", "ReadTimeout=3")
    assert res.stderr == ""


@pytest.mark.timeout(60)
def test_sigint_prints_the_summary(server: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(USER_SCRIPT), "--duration", "30", "--url", f"{server}/foo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until requests are being answered
            if line.startswith("< 200"):
                break
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        stopped_in = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 130, err
    assert stopped_in < 10
    assert "Traceback" not in err
    assert re.search(r"^user\.py: interrupted after \d+ requests$", err, re.M)
    f = summary_fields(out)
    assert f["errors"] == "0"
    assert float(f["duration"].removesuffix(" s")) < 25
    assert f["statuses"] == f"200={f['requests']}"


def test_help_documents_exit_status() -> None:
    res = run_user("--help")
    assert res.returncode == 0
    assert "exit status: 0 if every request" in res.stdout
    assert "1 if any request failed" in res.stdout
    assert "--duration SECONDS" in res.stdout and "--json" in res.stdout


# --- --duration, --json and the usage rules, against a real router and backend --------------


async def run_user_async(*args: str) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """Run user.py from a trio test (the router keeps serving meanwhile); result, wall time."""
    started = time.monotonic()
    with trio.fail_after(45):
        res = await trio.run_process(
            [sys.executable, str(USER_SCRIPT), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=str(REPO),
        )
    return res, time.monotonic() - started


async def _router_with_backend(nursery: trio.Nursery, *names: str) -> RunningRouter:
    """A router with one example backend per name (each answers ``X-Backend: <name>``)."""
    router = await start_router(nursery)
    for name in names:
        await start_backend(nursery, make_app(name), router.tunnel)
    await router.wait_tunnels(len(names))
    return router


@pytest.mark.timeout(60)
async def test_duration_bounds_the_run() -> None:
    async with trio.open_nursery() as nursery:
        router = await _router_with_backend(nursery, "timed-1")
        args = ["--quiet", "--duration", "1", "--concurrency", "4"]
        res, wall = await run_user_async(*args, "--url", f"{router.url}/foo")
        nursery.cancel_scope.cancel()
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()
    assert "\x1b" not in out  # not a terminal: no bar, no colours, no tables
    f = summary_fields(out)
    # Loose bounds only: the run stops by itself at about 1 s (plus interpreter start-up).
    assert 0.8 <= float(f["duration"].removesuffix(" s")) <= 5
    assert 0.8 <= wall <= 15
    assert int(f["requests"]) > 0
    assert f["errors"] == "0"
    assert f["statuses"] == f"200={f['requests']}"
    assert f["backends"] == f"timed-1={f['requests']} (100.0%)"


@pytest.mark.timeout(60)
async def test_json_output_parses_and_counts_match() -> None:
    async with trio.open_nursery() as nursery:
        router = await _router_with_backend(nursery, "json-1", "json-2")
        url = f"{router.url}/foo"
        by_count, _ = await run_user_async("--json", "--requests", "300", "--url", url)
        timed, wall = await run_user_async("--json", "--duration", "1", "--url", url)
        nursery.cancel_scope.cancel()

    assert by_count.returncode == 0, by_count.stdout + by_count.stderr
    assert by_count.stderr == b""
    data = json.loads(by_count.stdout)  # the whole of stdout is one JSON object
    assert set(data) == {
        "requests",
        "errors",
        "duration",
        "rps",
        "latency_ms",
        "statuses",
        "backends",
        "backend_shares",
        "failures",
        "unreachable",
        "interrupted",
    }
    assert data["requests"] == 300
    assert data["errors"] == 0
    assert data["statuses"] == {"200": 300}
    # The router balances over both backends; how evenly is its business, not this test's.
    assert set(data["backends"]) == {"json-1", "json-2"}
    assert sum(data["backends"].values()) == 300
    shares = data["backend_shares"]
    assert list(shares) == list(data["backends"])  # same order: largest first
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    for name, n in data["backends"].items():
        assert shares[name] == pytest.approx(n / 300, abs=1e-6)
    assert data["failures"] == {}
    assert (data["unreachable"], data["interrupted"]) == (False, False)
    latency = data["latency_ms"]
    assert set(latency) == {"p50", "p90", "p99", "max"}
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert data["duration"] > 0
    assert data["rps"] == pytest.approx(300 / data["duration"], rel=0.01)

    assert timed.returncode == 0, timed.stdout + timed.stderr
    data = json.loads(timed.stdout)
    assert 0.8 <= data["duration"] <= 5 and wall <= 15
    assert data["requests"] > 0
    assert data["errors"] == 0
    assert sum(data["statuses"].values()) == data["requests"]
    assert sum(data["backends"].values()) == data["requests"]
    assert set(data["backends"]) <= {"json-1", "json-2"}
    assert sum(data["backend_shares"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.timeout(60)
def test_json_output_with_errors(server: str) -> None:
    res = run_user("--json", "--requests", "6", "--url", f"{server}/boom")
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert (data["requests"], data["errors"]) == (6, 6)
    assert data["statuses"] == {"503": 6}
    assert data["failures"] == {"HTTP 503": 6}
    assert data["backends"] == {"backend-a": 3, "backend-b": 3}

    assert data["backend_shares"] == {"backend-a": 0.5, "backend-b": 0.5}
    assert data["unreachable"] is False

    url = f"http://127.0.0.1:{free_closed_port()}/foo"
    res = run_user("--json", "--requests", "4", "--timeout", "2", "--url", url)
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert (data["requests"], data["errors"]) == (4, 4)
    assert data["statuses"] == {} and data["backends"] == {} and data["backend_shares"] == {}
    assert data["latency_ms"] == {"p50": None, "p90": None, "p99": None, "max": None}
    assert data["unreachable"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["--requests", "10", "--duration", "1"],
        ["--duration", "0"],
        ["--duration", "-1"],
        ["--duration", "nan"],
        ["--requests", "-1"],
    ],
)
def test_usage_errors(args: list[str]) -> None:
    # Refused before any request: the URL is a closed port and nothing is sent.
    res = run_user(*args, "--url", f"http://127.0.0.1:{free_closed_port()}/foo")
    assert res.returncode == 2
    assert res.stdout == ""
    assert "usage:" in res.stderr
    if "--requests" in args and "--duration" in args:
        assert "not allowed with argument" in res.stderr


@pytest.mark.parametrize("url", ["foo", "ftp://127.0.0.1/x", "http:///nohost"])
def test_bad_url_is_a_usage_error(url: str) -> None:
    res = run_user("--requests", "1", "--url", url)
    assert (res.returncode, res.stdout) == (2, "")
    assert "argument --url: want an http:// or https:// URL with a host" in res.stderr


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


@pytest.mark.timeout(60)
def test_run_load_duration_api(server: str) -> None:
    import asyncio

    user = _load_user_module()
    ticks: list[object] = []
    summary = asyncio.run(
        user.run_load(
            f"{server}/foo", duration=0.5, concurrency=2, quiet=True, on_tick=ticks.append
        )
    )
    assert 0.4 <= summary.duration <= 5
    assert summary.requests > 0
    assert summary.statuses == {200: summary.requests}
    assert ticks and ticks[-1].done == summary.requests  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        asyncio.run(user.run_load(f"{server}/foo", requests=5, duration=1.0))


def test_summary_dict_and_tables() -> None:
    from rich.console import Console

    user = _load_user_module()
    summary = user.Summary(
        requests=4,
        errors=1,
        duration=2.0,
        rps=2.0,
        p50=0.001,
        p90=0.002,
        p99=0.003,
        statuses={200: 3, 503: 1},
        backends={"b": 1, "a": 3},
        max_latency=0.004,
        failures={"HTTP 503": 1},
    )
    data = user.summary_dict(summary)
    assert json.loads(json.dumps(data)) == data
    assert data["latency_ms"] == {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0}
    assert data["statuses"] == {"200": 3, "503": 1}
    assert list(data["backends"].items()) == [("a", 3), ("b", 1)]
    assert data["backend_shares"] == {"a": 0.75, "b": 0.25}
    assert (data["unreachable"], data["interrupted"]) == (False, False)

    console = Console(record=True, width=100, force_terminal=True)
    user.print_tables(console, summary)
    text = console.export_text()
    for expected in ("latency p99", "3.0 ms", "503", "75.0%", "X-Backend", "HTTP 503"):
        assert expected in text


# --- on a terminal: the progress bar and the tables ------------------------------------------


def run_user_on_pty(*args: str, stderr_piped: bool = False) -> tuple[int, str, str]:
    """Run user.py with stdout (and stderr unless ``stderr_piped``) on a pseudo-terminal.

    Returns the exit code, what the terminal showed and what went to the stderr pipe.
    """
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    proc: subprocess.Popen[bytes] | None = None
    shown = bytearray()
    try:
        proc = subprocess.Popen(
            [sys.executable, str(USER_SCRIPT), *args],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE if stderr_piped else slave,
            env=env,
            cwd=REPO,
        )
        os.close(slave)
        slave = -1
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        err = proc.stderr.read().decode() if proc.stderr is not None else ""
        returncode = proc.wait(timeout=10)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()
    return returncode, shown.decode(errors="replace"), err


@pytest.mark.timeout(60)
def test_terminal_gets_progress_bar_and_tables(server: str) -> None:
    code, shown, _ = run_user_on_pty("--quiet", "--requests", "400", "--url", f"{server}/foo")
    assert code == 0, shown
    assert "\x1b[" in shown  # rich drew on the terminal
    assert "400/400 req" in shown and "req/s" in shown and "0 errors" in shown  # the bar
    for cell in ("load test", "latency p99", "X-Backend", "backend-a", "50.0%", "┏", "┃"):
        assert cell in shown, cell
    assert not re.search(r"^requests\s{2,}400", shown, re.M)  # not the plain summary

    # Per-request lines still appear (in batches above the bar), one per request.
    code, shown, _ = run_user_on_pty("--requests", "30", "--url", f"{server}/foo")
    assert code == 0, shown
    assert shown.count(f"> GET {server}/foo") == 30
    assert shown.count('< 200 OK "bar"') == 30


@pytest.mark.timeout(60)
def test_terminal_plain_when_stderr_piped_or_json(server: str) -> None:
    args = ("--quiet", "--requests", "20", "--url", f"{server}/foo")
    code, shown, err = run_user_on_pty(*args, stderr_piped=True)
    assert code == 0, shown + err
    assert "\x1b" not in shown and err == ""
    assert summary_fields(shown.replace("\r\n", "\n"))["statuses"] == "200=20"

    code, shown, _ = run_user_on_pty("--json", "--requests", "20", "--url", f"{server}/foo")
    assert code == 0, shown
    assert "\x1b" not in shown
    assert json.loads(shown)["requests"] == 20
