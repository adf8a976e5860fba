"""Real frameworks through a real router, with real clients.

Each app in ``tests/apps/`` (Django, Flask via a2wsgi, Quart, FastAPI, Starlette) is served by
the backend helper as a child process, ``python -m ptth tests.apps.X:app --router HOST:PORT
--loop asyncio`` (or ``uvloop``), dialling an in-process router; the test then talks to the
router's front end with httpx, curl and the ``websockets`` client (its sync API, in a worker
thread). These apps need an asyncio loop: under trio they fail. ``tests/apps/serve_asyncio.py``
awaits ``ptth.serve`` from ``asyncio.run`` in its own process.

A framework, uvloop or curl that is missing skips locally and fails in CI (``CI=true``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

from tests.support import Child, RunningRouter, child, require_module, require_tool, start_router

require_module("websockets", reason="the websockets client is not installed")
from websockets.exceptions import ConnectionClosed  # noqa: E402 (after the availability check)
from websockets.sync.client import connect as ws_connect  # noqa: E402 (after the check)

T = TypeVar("T")
MiB = 1024 * 1024

# --loop values to serve with; uvloop needs the uvloop package (required in CI).
LOOPS = [pytest.param("asyncio", id="asyncio"), pytest.param("uvloop", id="uvloop")]


def require_loop(loop: str) -> None:
    if loop == "uvloop":
        require_module("uvloop", reason="uvloop is not installed")


def expected_loop(loop: str) -> str:
    """The prefix of ``module.Class`` the app's running loop must have under ``--loop loop``."""
    if loop == "uvloop":
        return "uvloop.Loop"
    return "asyncio."


def ws_url(router: RunningRouter, path: str) -> str:
    return router.url.replace("http://", "ws://", 1) + path


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(fn, *args))


async def wait_for_tunnel(router: RunningRouter, proc: Child, timeout: float = 20) -> None:
    """Until the child's tunnel is registered; fails with the child's output if it dies first."""
    with trio.move_on_after(timeout):
        while router.tunnel_count() < 1:
            if proc.process.poll() is not None:
                await trio.sleep(0.1)  # let the last output arrive
                raise AssertionError(
                    f"backend exited ({proc.process.returncode}) before its tunnel registered:\n"
                    f"{proc.text()}"
                )
            await trio.sleep(0.02)
        return
    raise AssertionError(f"no tunnel after {timeout} s; backend output:\n{proc.text()}")


@asynccontextmanager
async def served(
    spec: str, loop: str = "asyncio", *, require: str
) -> AsyncIterator[tuple[RunningRouter, Child]]:
    """A router in process, ``python -m ptth SPEC --loop LOOP`` dialling it as a child."""
    require_module(require, reason=f"{require} is not installed")
    require_loop(loop)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        args = ["-m", "ptth", spec, "--router", router.tunnel, "--loop", loop]
        async with child(nursery, *args) as proc:
            await wait_for_tunnel(router, proc)
            yield router, proc
            assert proc.process.poll() is None, f"backend died:\n{proc.text()}"
            assert "Traceback" not in proc.text(), proc.text()
        nursery.cancel_scope.cancel()


async def curl(*args: str) -> tuple[int, bytes, str]:
    """``curl -sS ARGS -w %{http_code}`` with the body to a file: (status, body, headers)."""
    tool = require_tool("curl")
    with trio.fail_after(25):
        handle, out = tempfile.mkstemp(prefix="ptth-curl-")
        os.close(handle)
        try:
            result = await trio.run_process(
                [
                    tool,
                    "-sS",
                    "--max-time",
                    "20",
                    "-D",
                    "-",
                    "-o",
                    out,
                    "-w",
                    "%{http_code}",
                    *args,
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr.decode()
            body = Path(out).read_bytes()
        finally:
            Path(out).unlink(missing_ok=True)
    text = result.stdout.decode("latin-1")
    headers, _, status = text.rpartition("\n")
    return int(status), body, headers


def header(headers: str, name: str) -> str | None:
    """The last value of ``name`` in a curl ``-D -`` dump (case-insensitive)."""
    values = re.findall(rf"(?im)^{re.escape(name)}:[ \t]*(.*?)\r?$", headers)
    return values[-1] if values else None


# -- Django --------------------------------------------------------------------------------


DJANGO = "tests.apps.django_site.asgi:app"


@pytest.mark.timeout(40)
async def test_django_views_404_and_csrf() -> None:
    async with (
        served(DJANGO, require="django") as (router, _),
        httpx.AsyncClient(base_url=router.url, timeout=10) as client,
    ):
        hello = await client.get("/hello")
        assert hello.status_code == 200
        assert hello.text == "hello from django on /hello\n"
        assert hello.headers["content-type"] == "text/plain"
        assert hello.headers["x-loop"].startswith("asyncio."), hello.headers["x-loop"]

        sync = await client.get("/sync")  # a sync view: asgiref runs it in a thread pool
        assert sync.status_code == 200
        assert sync.text.startswith("sync view in thread ")
        assert "MainThread" not in sync.text

        missing = await client.get("/no/such/page")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "text/html; charset=utf-8"
        assert "<title>Not Found</title>" in missing.text
        assert "The requested resource was not found on this server." in missing.text

        refused = await client.post("/submit", data={"name": "mallory"})
        assert refused.status_code == 403
        assert "<title>403 Forbidden</title>" in refused.text
        assert "CSRF verification failed. Request aborted." in refused.text
        assert "CSRF cookie" in refused.text  # the reason: no csrftoken cookie was sent

        token = await client.get("/token")  # sets the csrftoken cookie on the client
        assert token.status_code == 200
        assert "csrftoken" in client.cookies
        accepted = await client.post(
            "/submit",
            data={"name": "alice"},
            headers={"X-CSRFToken": token.json()["token"]},
        )
        assert accepted.status_code == 200, accepted.text
        assert accepted.text == "accepted 10 bytes: alice\n"

        wrong = await client.post(
            "/submit", data={"name": "eve"}, headers={"X-CSRFToken": "x" * 64}
        )
        assert wrong.status_code == 403
        assert "CSRF verification failed" in wrong.text

        method = await client.get("/submit")  # GET is safe: no CSRF check, the view says 405
        assert method.status_code == 405
        assert method.headers["allow"] == "POST"

        # curl, over HTTP/1.1 and h2c
        status, body, headers = await curl("--http1.1", router.url + "/hello")
        assert status == 200
        assert body == b"hello from django on /hello\n"
        assert (header(headers, "x-loop") or "").startswith("asyncio."), headers
        status, body, _ = await curl("--http2-prior-knowledge", router.url + "/nope")
        assert status == 404
        assert b"<h1>Not Found</h1>" in body
        status, body, _ = await curl(
            "--http2-prior-knowledge", "-d", "name=x", router.url + "/submit"
        )
        assert status == 403
        assert b"CSRF verification failed. Request aborted." in body


# -- Flask through a2wsgi ------------------------------------------------------------------


FLASK = "tests.apps.flask_app:app"


@pytest.mark.timeout(40)
@pytest.mark.parametrize("loop", LOOPS)
async def test_flask_wsgi_one_mib_round_trip(loop: str, tmp_path: Path) -> None:
    body = os.urandom(MiB)
    digest = hashlib.sha256(body).hexdigest()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    async with (
        served(FLASK, loop, require="flask") as (router, _),
        httpx.AsyncClient(base_url=router.url, timeout=15) as client,
    ):
        hello = await client.get("/hello")
        assert hello.status_code == 200
        assert hello.text.startswith("hello from flask in ")
        assert "MainThread" not in hello.text  # a2wsgi runs the WSGI app in its thread pool

        missing = await client.get("/missing")
        assert missing.status_code == 404
        assert "<h1>Not Found</h1>" in missing.text  # werkzeug's NotFound page

        echoed = await client.post(
            "/echo", content=body, headers={"content-type": "application/x-test"}
        )
        assert echoed.status_code == 200
        assert echoed.headers["content-type"] == "application/x-test"
        assert int(echoed.headers["content-length"]) == MiB
        assert echoed.content == body

        summed = await client.post("/digest", content=body)
        assert summed.status_code == 200
        assert summed.json() == {"length": MiB, "sha256": digest, "sum": sum(body)}

        status, out, _ = await curl(
            "--data-binary",
            f"@{upload}",
            "-H",
            "Content-Type: application/octet-stream",
            router.url + "/echo",
        )
        assert status == 200
        assert out == body
        status, out, _ = await curl(
            "--http2-prior-knowledge", "--data-binary", f"@{upload}", router.url + "/digest"
        )
        assert status == 200
        assert json.loads(out)["sha256"] == digest


# -- Quart ---------------------------------------------------------------------------------


QUART = "tests.apps.quart_app:app"


@pytest.mark.timeout(40)
async def test_quart_get_and_json_post() -> None:
    async with (
        served(QUART, require="quart") as (router, _),
        httpx.AsyncClient(base_url=router.url, timeout=10) as client,
    ):
        hello = await client.get("/hello")
        assert hello.status_code == 200
        assert hello.text == "hello from quart\n"
        assert hello.headers["x-started"] == "true"  # before_serving ran: lifespan startup

        created = await client.post("/json", json={"numbers": [1, 2, 3.5], "name": "q"})
        assert created.status_code == 201
        assert created.headers["content-type"] == "application/json"
        assert created.json() == {"count": 3, "name": "q", "sum": 6.5}

        bad = await client.post("/json", json=[1, 2])
        assert bad.status_code == 400
        assert "error" in bad.json()

        assert (await client.get("/missing")).status_code == 404

        numbers = list(range(1000))
        status, out, headers = await curl(
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            json.dumps({"numbers": numbers, "name": "curl"}),
            router.url + "/json",
        )
        assert status == 201
        assert header(headers, "content-type") == "application/json"
        assert json.loads(out) == {"count": 1000, "name": "curl", "sum": sum(numbers)}


# -- FastAPI -------------------------------------------------------------------------------


FASTAPI = "tests.apps.fastapi_app:app"


@pytest.mark.timeout(40)
@pytest.mark.parametrize("loop", LOOPS)
async def test_fastapi_asyncio_sleep_executor_gather(loop: str) -> None:
    async with (
        served(FASTAPI, loop, require="fastapi") as (router, _),
        httpx.AsyncClient(base_url=router.url, timeout=10) as client,
    ):
        which = await client.get("/loop")
        assert which.status_code == 200
        assert which.json()["loop"].startswith(expected_loop(loop)), which.json()

        slept = await client.get("/sleep", params={"delay": 0.2})
        assert slept.status_code == 200
        assert 0.19 <= slept.json()["slept"] < 2

        executor = await client.get("/executor", params={"n": 1000})
        assert executor.status_code == 200
        assert executor.json()["sha256"] == hashlib.sha256(bytes(1000)).hexdigest()
        assert executor.json()["off_loop_thread"] is True

        gathered = await client.get("/gather", params={"count": 5, "delay": 0.3})
        assert gathered.status_code == 200
        assert gathered.json()["results"] == [0, 1, 4, 9, 16]
        assert 0.29 <= gathered.json()["elapsed"] < 1.0  # concurrent: 0.3 s, not 1.5 s

        # Ten requests that each sleep 0.5 s, all at once: the app's loop serves them together.
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await client.get("/sleep", params={"delay": 0.5})).status_code)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
        assert statuses == [200] * 10
        assert trio.current_time() - start < 3.0  # sequential would take 5 s

        missing = await client.get("/missing")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "Not Found"}

        status, out, headers = await curl(
            "--http2-prior-knowledge", router.url + "/gather?count=3&delay=0.1"
        )
        assert status == 200
        assert header(headers, "content-type") == "application/json"
        assert json.loads(out)["results"] == [0, 1, 4]


def _fastapi_ws_session(url: str) -> tuple[int, str]:
    with ws_connect(url, proxy=None, open_timeout=10, close_timeout=5) as ws:
        assert ws.recv(timeout=5) == "ready"
        for text in ("hello", "", "héllo ✓ " * 200):
            ws.send(text)
            assert ws.recv(timeout=5) == text
        data = bytes(range(256)) * 512
        ws.send(data)
        assert ws.recv(timeout=5) == data
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    rcvd = info.value.rcvd
    assert rcvd is not None, "the server's close frame did not arrive"
    return rcvd.code, rcvd.reason


@pytest.mark.timeout(40)
async def test_fastapi_websocket_echo() -> None:
    async with served(FASTAPI, require="fastapi") as (router, _):
        assert await in_thread(_fastapi_ws_session, ws_url(router, "/ws")) == (
            4000,
            "bye from fastapi",
        )


# -- Starlette -----------------------------------------------------------------------------


STARLETTE = "tests.apps.starlette_app:app"
CHUNKS = 5
INTERVAL = 0.1


def check_paced(arrivals: list[tuple[float, bytes]]) -> None:
    """Lines ``"<i> <time produced>"``, received at ``arrival``: they came one by one."""
    assert [line.split()[0] for _, line in arrivals] == [str(i).encode() for i in range(CHUNKS)]
    produced = [float(line.split()[1]) for _, line in arrivals]
    first_arrival, last_arrival = arrivals[0][0], arrivals[-1][0]
    # The first chunk reached the client before the app even produced the last one ...
    assert first_arrival < produced[-1], (arrivals, produced)
    # ... and the chunks arrived spread out, not in one burst at the end.
    assert last_arrival - first_arrival >= (CHUNKS - 1) * INTERVAL * 0.5, arrivals
    assert produced[-1] - produced[0] >= (CHUNKS - 1) * INTERVAL * 0.9, produced


@pytest.mark.timeout(40)
@pytest.mark.parametrize("loop", LOOPS)
async def test_starlette_streaming_response_is_paced(loop: str) -> None:
    path = f"/stream?n={CHUNKS}&interval={INTERVAL}"
    async with served(STARLETTE, loop, require="starlette") as (router, _):
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            which = await client.get("/loop")
            assert which.status_code == 200
            assert which.text.startswith(expected_loop(loop)), which.text

            arrivals: list[tuple[float, bytes]] = []
            with trio.fail_after(10):
                async with client.stream("GET", path) as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/plain")
                    assert response.headers["x-chunks"] == str(CHUNKS)
                    assert "content-length" not in response.headers
                    async for line in response.aiter_lines():
                        if line:
                            arrivals.append((time.time(), line.encode()))
            check_paced(arrivals)

        # curl -N, reading its stdout as it arrives
        tool = require_tool("curl")
        with trio.fail_after(15):
            process = await trio.lowlevel.open_process(
                [tool, "-sSN", "--max-time", "10", router.url + path],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            try:
                assert process.stdout is not None
                curl_arrivals: list[tuple[float, bytes]] = []
                pending = b""
                async for data in process.stdout:
                    pending += data
                    while b"\n" in pending:
                        raw, pending = pending.split(b"\n", 1)
                        curl_arrivals.append((time.time(), raw))
                assert await process.wait() == 0
            finally:
                with trio.CancelScope(shield=True):
                    if process.poll() is None:
                        process.kill()
                    await process.wait()
                    await process.stdout.aclose()  # type: ignore[union-attr]
        check_paced(curl_arrivals)


def _starlette_ws_session(url: str) -> tuple[dict[str, Any], list[Any], int, str]:
    with ws_connect(url, proxy=None, open_timeout=10, close_timeout=5) as ws:
        greeting = json.loads(ws.recv(timeout=5))
        replies = []
        for payload in ({"n": 1}, {"text": "ünïcode", "list": [1, 2, 3]}):
            ws.send(json.dumps(payload))
            replies.append(json.loads(ws.recv(timeout=5)))
        ws.send(json.dumps({"close": 4001}))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    rcvd = info.value.rcvd
    assert rcvd is not None, "the server's close frame did not arrive"
    return greeting, replies, rcvd.code, rcvd.reason


@pytest.mark.timeout(40)
async def test_starlette_websocket() -> None:
    async with served(STARLETTE, require="starlette") as (router, _):
        url = ws_url(router, "/ws?name=router")
        greeting, replies, code, reason = await in_thread(_starlette_ws_session, url)
    assert greeting == {"hello": "router"}
    assert replies == [
        {"n": 1, "echo": True},
        {"text": "ünïcode", "list": [1, 2, 3], "echo": True},
    ]
    assert (code, reason) == (4001, "asked to close")


@pytest.mark.timeout(30)
async def test_loop_auto_prefers_uvloop_when_installed() -> None:
    try:
        import uvloop  # noqa: F401

        expected = "uvloop.Loop"
    except ImportError:
        expected = "asyncio."
    async with (
        served(STARLETTE, "auto", require="starlette") as (router, _),
        httpx.AsyncClient(base_url=router.url, timeout=10) as client,
    ):
        which = await client.get("/loop")
    assert which.status_code == 200
    assert which.text.startswith(expected), which.text


# -- ptth.serve awaited from asyncio, in process --------------------------------------------


SCRIPT_LOOP = re.compile(rb"script loop: (\S+) id=(\d+)")


@asynccontextmanager
async def asyncio_script(loop: str) -> AsyncIterator[tuple[RunningRouter, Child, str, str]]:
    """``python -m tests.apps.serve_asyncio ROUTER`` (``asyncio.run(ptth.serve(app, ROUTER))``)."""
    require_module("starlette", reason="starlette is not installed")
    require_loop(loop)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        args = ["-m", "tests.apps.serve_asyncio", router.tunnel]
        if loop == "uvloop":
            args.append("--uvloop")
        async with child(nursery, *args) as proc:
            match = await proc.wait_for(SCRIPT_LOOP)
            await wait_for_tunnel(router, proc)
            yield router, proc, match[1].decode(), match[2].decode()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("loop", LOOPS)
async def test_serve_awaited_from_asyncio_run(loop: str) -> None:
    async with asyncio_script(loop) as (router, proc, kind, loop_id):
        assert kind.startswith(expected_loop(loop)), kind
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            which = await client.get("/loop")
            assert which.status_code == 200
            # the app runs on the very loop the script's asyncio.run created
            assert which.text == f"{kind} id={loop_id}", (which.text, proc.text())
            arrivals: list[tuple[float, bytes]] = []
            async with client.stream("GET", f"/stream?n={CHUNKS}&interval={INTERVAL}") as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line:
                        arrivals.append((time.time(), line.encode()))
            check_paced(arrivals)
        greeting, replies, code, _ = await in_thread(
            _starlette_ws_session, ws_url(router, "/ws?name=inproc")
        )
        assert greeting == {"hello": "inproc"}
        assert replies[0] == {"n": 1, "echo": True}
        assert code == 4001


@pytest.mark.timeout(40)
async def test_serve_from_asyncio_cancelled_task_drains_and_ends() -> None:
    async with asyncio_script("asyncio") as (router, proc, _, _):
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            assert (await client.get("/loop")).status_code == 200
        proc.process.send_signal(signal.SIGTERM)  # the script cancels the serve task
        await proc.wait_for(re.compile(rb"serve ended: (cancelled|returned)"), timeout=15)
        with trio.fail_after(10):
            code = await proc.process.wait()
        assert code == 0, proc.text()
        with trio.fail_after(5):
            while router.tunnel_count() > 0:  # the tunnel closed with the task
                await trio.sleep(0.02)
