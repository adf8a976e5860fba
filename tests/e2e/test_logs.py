"""Logs of the two command lines as real child processes (ARCHITECTURE.md, "Logs").

``--log-format json`` gives one JSON object per line with the structured fields; the access line
and the tunnel lifecycle lines carry the tunnel id and the instance; no credential of a run with
a tunnel token, an Authorization header, cookies and a token in the query appears in any line;
agent mode logs a request at most once (httpx's own INFO line is quieted); a drain says what it
waits for; expected events (a backend vanishing mid-response, a user leaving) are never ERROR
tracebacks.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest

from tests.e2e.test_cli import Output, wait_exit
from tests.support import require_module, spawn

APP = "tests.e2e.apps_drain:app"

TUNNEL_TOKEN = "tunnel-s3cret-Zq81"
USER_BEARER = "user-bearer-Kd72"
COOKIE_VALUE = "cookie-value-Hx55"
QUERY_TOKEN = "query-token-Wm09"
SECRETS = (TUNNEL_TOKEN, USER_BEARER, COOKIE_VALUE, QUERY_TOKEN)


@contextmanager
def router(*flags: str) -> Iterator[tuple[Any, Output, str, str]]:
    """``python -m router`` on ephemeral ports, admin off: (process, output, url, tunnel)."""
    args = ("-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", "--admin", "none")
    with spawn(*args, *flags) as proc:
        output = Output(proc)
        if "json" in flags:
            match = output.wait_for(r'"front end on (http://[\d.]+:\d+), tunnel port on ([\d.:]+)"')
        else:
            match = output.wait_for(r"front end on (http://[\d.]+:\d+), tunnel port on ([\d.:]+)")
        yield proc, output, match.group(1), match.group(2)


@contextmanager
def helper(*args: str) -> Iterator[tuple[Any, Output]]:
    with spawn("-m", "ptth", *args, env={"PTTH_TEST_BACKEND": "logs"}) as proc:
        yield proc, Output(proc)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed; a line that is not one JSON object fails the test."""
    documents = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}\nin:\n{text}") from None
        assert isinstance(document, dict), line
        for key in ("time", "level", "logger", "message"):
            assert key in document, f"{key} missing in {line}"
        documents.append(document)
    return documents


def wait_json(output: Output, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for document in json_lines(output.text):
            if predicate(document):
                return dict(document)
        time.sleep(0.05)
    raise AssertionError(f"no such line in:\n{output.text}")


@pytest.mark.timeout(60)
def test_json_logs_of_a_request_a_registration_and_a_closure() -> None:
    with ExitStack() as stack:
        proc, out, url, tunnel = stack.enter_context(router("--log-format", "json"))
        backend, backend_out = stack.enter_context(
            helper(APP, "--router", tunnel, "--instance", "inst-a", "--log-format", "json")
        )
        registered = wait_json(out, lambda d: d.get("event") == "registered", timeout=15)
        assert registered["logger"] == "router.tunnel"
        assert registered["level"] == "INFO"
        assert registered["instance"] == "inst-a"
        assert registered["service"] == "default"
        tunnel_id = registered["tunnel_id"]
        assert re.fullmatch(r"\w+", tunnel_id)
        assert registered["time"].endswith("Z")

        response = httpx.get(url + "/hello?x=1", timeout=10)
        assert response.status_code == 200
        access = wait_json(out, lambda d: d["logger"] == "router.access")
        assert access["event"] == "request"
        assert access["kind"] == "http"
        assert access["client"] == "127.0.0.1"
        assert access["method"] == "GET"
        assert access["host"] == url.removeprefix("http://")
        assert access["path"] == "/hello?x=1"
        assert access["status"] == 200
        assert access["bytes_out"] == len(response.content)
        assert access["bytes_in"] == 0
        assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
        assert access["tunnel_id"] == tunnel_id
        assert access["instance"] == "inst-a"
        assert access["service"] == "default"

        helper_registered = wait_json(backend_out, lambda d: d.get("event") == "registered")
        assert helper_registered["tunnel_id"] == tunnel_id
        assert helper_registered["instance"] == "inst-a"

        backend.send_signal(signal.SIGTERM)
        assert wait_exit(backend, timeout=10) == 0
        closed = wait_json(out, lambda d: d.get("event") == "closed")
        assert closed["tunnel_id"] == tunnel_id
        assert closed["instance"] == "inst-a"
        assert "lost" in closed["message"]
        helper_docs = json_lines(backend_out.finish())
        assert all(d.get("instance") == "inst-a" for d in helper_docs), helper_docs
        drain = [d for d in helper_docs if d.get("event") == "draining"]
        assert drain and drain[0]["message"] == "draining: 0 WebSockets, 0 requests, up to 30 s"

        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, timeout=10) == 0
        documents = json_lines(out.finish())
        messages = [d["message"] for d in documents]
        assert "router stopped" in messages
        assert not [d for d in documents if d["level"] in ("ERROR", "CRITICAL")], documents


@pytest.mark.timeout(60)
def test_no_secret_in_any_log_line() -> None:
    with ExitStack() as stack:
        proc, out, url, tunnel = stack.enter_context(
            router("--token", TUNNEL_TOKEN, "--log-level", "DEBUG")
        )
        backend, backend_out = stack.enter_context(
            helper(APP, "--router", tunnel, "--token", TUNNEL_TOKEN, "--log-level", "DEBUG")
        )
        out.wait_for(r"tunnel \w+: registered service=", timeout=15)
        headers = {"authorization": f"Bearer {USER_BEARER}", "cookie": f"sid={COOKIE_VALUE}"}
        response = httpx.get(f"{url}/hello?token={QUERY_TOKEN}", headers=headers, timeout=10)
        assert response.status_code == 200
        # A wrong token is refused, and the refusal is logged: with neither token in it.
        with spawn("-m", "ptth", APP, "--router", tunnel, "--token", USER_BEARER) as wrong:
            wrong_out = Output(wrong)
            out.wait_for(r"refused .*: 401", timeout=10)
            wrong_out.wait_for(r"401", timeout=10)
        out.wait_for(r"router\.access: .* /hello\?token=\*\*\* 200 ")
        backend.send_signal(signal.SIGTERM)
        wait_exit(backend, timeout=10)
        proc.send_signal(signal.SIGTERM)
        wait_exit(proc, timeout=10)
        logs = "\n".join((out.finish(), backend_out.finish(), wrong_out.finish()))
        for secret in SECRETS:
            assert secret not in logs, f"{secret} logged:\n" + "\n".join(
                line for line in logs.splitlines() if secret in line
            )


def _uvicorn(stack: ExitStack) -> str:
    require_module("uvicorn", "uvicorn is the agent's upstream in this test")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = stack.enter_context(
        spawn("-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port), "--no-access-log")
    )
    Output(proc).wait_for(r"Uvicorn running on", timeout=15)
    return f"http://127.0.0.1:{port}"


@pytest.mark.timeout(60)
def test_agent_mode_logs_a_request_at_most_once() -> None:
    requests = 20
    with ExitStack() as stack:
        upstream = _uvicorn(stack)
        _proc, _out, url, tunnel = stack.enter_context(router("--no-access-log"))
        agent, agent_out = stack.enter_context(helper("--to", upstream, "--router", tunnel))
        agent_out.wait_for(r"tunnel \w+: registered with", timeout=15)
        with httpx.Client(timeout=10) as client:
            for i in range(requests):
                assert client.get(f"{url}/hello/{i}").status_code == 200
        agent.send_signal(signal.SIGTERM)
        wait_exit(agent, timeout=10)
        text = agent_out.finish()
        for i in range(requests):
            lines = [line for line in text.splitlines() if f"/hello/{i} " in line + " "]
            assert len(lines) <= 1, lines
        assert "httpx:" not in text and "httpcore" not in text, text
        assert len(text.splitlines()) < requests, text  # nothing per request at INFO


@pytest.mark.timeout(60)
def test_router_drain_says_what_it_waits_for() -> None:
    with ExitStack() as stack:
        proc, out, url, tunnel = stack.enter_context(router("--drain-timeout", "7"))
        stack.enter_context(helper(APP, "--router", tunnel))
        out.wait_for(r"tunnel \w+: registered service=", timeout=15)
        results: list[int] = []

        def slow() -> None:
            results.append(httpx.get(url + "/slow?s=1.5", timeout=10).status_code)

        thread = threading.Thread(target=slow)
        thread.start()
        try:
            out.wait_for(r"tunnel \w+: registered service=")
            time.sleep(0.5)  # the request is at the backend
            proc.send_signal(signal.SIGTERM)
            line = out.wait_for(r"router: (draining: .*)$").group(1)
            assert line == "draining: 0 WebSockets, 1 request, 1 tunnel, up to 7 s"
        finally:
            thread.join(10)
        assert results == [200]
        assert wait_exit(proc, timeout=10) == 0


@pytest.mark.timeout(60)
def test_expected_events_are_not_error_tracebacks() -> None:
    """A user who leaves mid-response and a backend killed mid-response: INFO or WARNING
    lines, never ERROR and never a traceback."""
    with ExitStack() as stack:
        proc, out, url, tunnel = stack.enter_context(router())
        backend, _ = stack.enter_context(helper(APP, "--router", tunnel))
        out.wait_for(r"tunnel \w+: registered service=", timeout=15)
        host, port = url.removeprefix("http://").split(":")
        # The user leaves while the backend is still working.
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /slow?s=1 HTTP/1.1\r\nhost: x\r\n\r\n")
            time.sleep(0.3)
        out.wait_for(r"router\.access: .* /slow\?s=1 499 ", timeout=10)
        # The backend is killed with a request in flight.
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /slow?s=5 HTTP/1.1\r\nhost: x\r\n\r\n")
            time.sleep(0.5)
            backend.kill()
            sock.settimeout(5)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 502"), answer
        out.wait_for(r"tunnel \w+: lost", timeout=5)
        proc.send_signal(signal.SIGTERM)
        wait_exit(proc, timeout=10)
        text = out.finish()
        assert "Traceback" not in text, text
        assert not re.search(r" (ERROR|CRITICAL) ", text), text


@pytest.mark.timeout(60)
def test_drains_count_an_open_websocket() -> None:
    """The helper's drain and then the router's see the one WebSocket left open."""
    with ExitStack() as stack:
        proc, out, url, tunnel = stack.enter_context(router("--drain-timeout", "3"))
        backend, backend_out = stack.enter_context(
            helper("tests.e2e.apps_websocket:app", "--router", tunnel, "--drain-timeout", "3")
        )
        out.wait_for(r"tunnel \w+: registered service=", timeout=15)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"GET /whoami HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 101"), "no WebSocket session"
            backend.send_signal(signal.SIGTERM)
            line = backend_out.wait_for(r"ptth\.backend: (draining: .*)$").group(1)
            assert line == "draining: 1 WebSocket, 0 requests, up to 3 s"
            proc.send_signal(signal.SIGTERM)
            line = out.wait_for(r"router: (draining: .*)$").group(1)
            assert line == "draining: 1 WebSocket, 0 requests, 1 tunnel, up to 3 s"
        assert wait_exit(proc, timeout=15) == 0
        assert "Traceback" not in out.finish()
