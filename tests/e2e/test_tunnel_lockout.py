"""A tunnel port nobody can lock (issue 10, item 3; ARCHITECTURE.md, "Admission on the
tunnel port").

Real router, real sockets. Attacking connections are bound to source address 127.0.0.2 (Linux
routes all of 127/8 to the loopback device) while the real backend (``ptth.serve``) dials from
127.0.0.1, so the per-address caps see two clients. The helper's own log lines are checked
against a scripted fake router that answers each handshake as the test says.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ptth import BackendOptions
from ptth.errors import HandshakeRefused
from ptth.proto.handshake import ClientHandshake, Registration, ServerHandshake
from tests.support import (
    Child,
    RunningRouter,
    child,
    free_port,
    make_hello_app,
    start_backend,
    start_router,
)

ATTACKER = "127.0.0.2"
OTHER = "127.0.0.3"
PARTIAL_HEAD = b"POST /.well-known/ptth HTTP/1.1\r\nHost: x\r\nUpgrade: reverse\r\n"


def status_of(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return int(match.group(1)) if match else None


def header(answer: bytes, name: bytes) -> bytes | None:
    head = answer.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b""


async def connect_from(router: RunningRouter, source: str) -> trio.SocketStream:
    host, port = router.addresses.tunnel
    return await trio.open_tcp_stream(host, port, local_address=source)


async def read_all(sock: trio.SocketStream, timeout: float) -> bytes:
    """Everything until EOF (or a reset), within ``timeout``."""
    received = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                data = await sock.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += data
    return bytes(received)


async def exchange_from(
    router: RunningRouter, source: str, payload: bytes, timeout: float = 3
) -> bytes:
    sock = await connect_from(router, source)
    try:
        if payload:
            await sock.send_all(payload)
        return await read_all(sock, timeout)
    finally:
        await trio.aclose_forcefully(sock)


def handshake_bytes(router: RunningRouter, token: str | None) -> bytes:
    registration = Registration(service="guess", token=token, instance="guess")
    return ClientHandshake(registration, router.tunnel).request_bytes()


def security_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "router.security"]


# -- the lockout attack --------------------------------------------------------------------


@dataclass
class Attack:
    """What the attacking process (tests/e2e/lockout_attacker.py) reported last."""

    process: Child

    def report(self) -> dict[str, Any]:
        lines = [line for line in self.process.text().splitlines() if line.startswith("{")]
        if not lines:
            return {"answers": {}, "opened": 0, "first_503": []}
        report: dict[str, Any] = json.loads(lines[-1])
        return report


@asynccontextmanager
async def attack(
    router: RunningRouter, size: int, sources: str = ATTACKER
) -> AsyncIterator[Attack]:
    """``size`` connections from ``sources`` that never finish the handshake, refilled as
    dropped, from a process of its own; yields once the attack is in its steady state."""
    async with trio.open_nursery() as nursery:
        args = ("-m", "tests.e2e.lockout_attacker", router.tunnel, sources, str(size))
        async with child(nursery, *args) as process:
            running = Attack(process)
            # Steady state: the attacker holds its share of pending slots and is turned away.
            admission = router.router.listener.admission
            config = router.router.config
            held = min(size, config.max_pending_handshakes)
            if sources == ATTACKER:
                held = config.max_pending_per_address
            with trio.fail_after(10):
                while admission.pending < held:
                    await trio.sleep(0.01)
                while running.report()["answers"].get("503", 0) < 100:
                    await trio.sleep(0.05)
            yield running
            nursery.cancel_scope.cancel()


async def get(router: RunningRouter, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
        return await client.get(path)


REGISTRATION_TIMES: dict[str, float] = {}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("token", [None, "s3cret"], ids=["no-token", "token"])
async def test_backend_registers_within_2s_during_1000_connection_lockout(
    token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="router.security")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, token=token)
        async with attack(router, 1000) as running:
            started = trio.current_time()
            kwargs: dict[str, Any] = {} if token is None else {"token": token}
            backend = await start_backend(nursery, make_hello_app("real"), router.tunnel, **kwargs)
            await router.wait_tunnels(1, timeout=2)
            REGISTRATION_TIMES[str(token)] = elapsed = trio.current_time() - started
            print(f"registered {elapsed:.3f} s into the attack (token={token})")
            response = await get(router)
            assert response.status_code == 200 and response.text == "bar"
            assert response.headers["x-backend"] == "real"
            # The attacker never held more than its share, and was answered, not dropped.
            assert router.router.listener.admission.pending_from(ATTACKER) <= 16
            report = running.report()
            print(f"attacker during the run: {report['opened']} connections, {report['answers']}")
            refusal = report["first_503"][0].encode("latin-1")
            assert header(refusal, b"retry-after") == b"5"
            assert body(refusal) == b"too many pending handshakes from your address\n"
            assert b"connection: close" in refusal.lower()
            assert "null" not in report["answers"], report  # never a bare close
        # A full cap is logged, but not once per refused connection.
        capped = [line for line in security_lines(caplog) if "503 to 127.0.0.2" in line]
        assert 1 <= len(capped) <= 3, capped
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_backend_registers_within_2s_while_250_addresses_fill_the_router_wide_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 2,000 connections from 127.0.1.1-250 (8 each, under the per-address cap) fill the
    # router-wide cap of 1,024; the oldest pending one makes room for each newcomer.
    caplog.set_level(logging.WARNING, logger="router.security")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, token="s3cret")
        async with attack(router, 2000, "127.0.1.1-250") as running:
            assert router.router.listener.admission.pending == 1024  # full: only eviction helps
            started = trio.current_time()
            backend = await start_backend(
                nursery, make_hello_app("real"), router.tunnel, token="s3cret"
            )
            await router.wait_tunnels(1, timeout=2)
            elapsed = trio.current_time() - started
            print(f"registered {elapsed:.3f} s into the 250-address attack")
            assert (await get(router)).status_code == 200
            report = running.report()
            print(f"attacker during the run: {report['opened']} connections, {report['answers']}")
            assert "null" not in report["answers"], report  # evicted ones are answered too
            assert router.router.listener.admission.pending <= 1024
        capped = [line for line in security_lines(caplog) if "503 to 127.0.1." in line]
        assert capped, security_lines(caplog)[:3]
        await backend.stop()
        assert backend.error is None
        nursery.cancel_scope.cancel()


# -- the caps, the deadline, garbage -------------------------------------------------------


@pytest.mark.timeout(15)
async def test_per_address_cap_answers_503_at_once_without_reading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="router.security")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, max_pending_per_address=2)
        held = [await connect_from(router, ATTACKER) for _ in range(2)]
        try:
            admission = router.router.listener.admission
            with trio.fail_after(2):
                while admission.pending_from(ATTACKER) < 2:
                    await trio.sleep(0.01)
            start = trio.current_time()
            answer = await exchange_from(router, ATTACKER, b"")  # sends nothing at all
            assert trio.current_time() - start < 0.5
            assert status_of(answer) == 503, answer
            assert header(answer, b"retry-after") == b"5"
            assert header(answer, b"content-type") == b"text/plain; charset=utf-8"
            assert body(answer) == b"too many pending handshakes from your address\n"
            # Another address is not affected.
            answer = await exchange_from(router, OTHER, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(answer) == 426
        finally:
            for sock in held:
                await trio.aclose_forcefully(sock)
        assert any("503 to 127.0.0.2" in line for line in security_lines(caplog))
        with trio.fail_after(2):
            while admission.pending:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(15)
async def test_global_cap_evens_out_shares_then_answers_503() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, max_pending_handshakes=3)
        admission = router.router.listener.admission
        held = [await connect_from(router, ATTACKER) for _ in range(3)]
        try:
            with trio.fail_after(2):
                while admission.pending < 3:
                    await trio.sleep(0.01)
            # A newcomer from elsewhere takes the slot of the busiest address's oldest, which
            # is answered 503 at once.
            newcomer = await connect_from(router, OTHER)
            held.append(newcomer)
            answer = await read_all(held[0], timeout=2)
            assert status_of(answer) == 503, answer
            assert header(answer, b"retry-after") == b"5"
            assert body(answer) == (
                b"too many pending tunnel handshakes on this router, most of them from your "
                b"address\n"
            )
            with trio.fail_after(2):
                while admission.pending_from(OTHER) < 1:
                    await trio.sleep(0.01)
            assert admission.pending_from(ATTACKER) == 2 and admission.pending == 3
            # 2, 1 and a newcomer from a third address: evens out once more (2 > 0 + 1) ...
            held.append(await connect_from(router, "127.0.0.4"))
            assert status_of(await read_all(held[1], timeout=2)) == 503
            # ... and now every address holds one: a fourth is refused itself.
            answer = await exchange_from(router, "127.0.0.5", b"")
            assert status_of(answer) == 503, answer
            assert body(answer) == b"too many pending tunnel handshakes on this router\n"
        finally:
            for sock in held:
                await trio.aclose_forcefully(sock)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(15)
async def test_handshake_deadline_answers_408_with_a_reason() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)  # the default deadline: 5 s
        assert router.router.config.handshake_timeout == 5
        start = trio.current_time()
        answer = await exchange_from(router, ATTACKER, PARTIAL_HEAD, timeout=8)
        elapsed = trio.current_time() - start
        assert 4.9 <= elapsed < 6, elapsed
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert body(answer) == b"no complete handshake within 5 s\n"
        assert router.router.listener.admission.pending == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(15)
async def test_garbage_gets_400_at_once() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        start = trio.current_time()
        answer = await exchange_from(router, ATTACKER, b"\x00\xff garbage \r\n\r\n")
        assert trio.current_time() - start < 0.5
        assert status_of(answer) == 400, answer
        assert body(answer).startswith(b"malformed handshake")
        nursery.cancel_scope.cancel()


# -- token guessing ------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_token_guessing_is_throttled_per_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    guesses = 1000
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, token="s3cret")
        answers: list[bytes] = []
        remaining = guesses

        async def guesser() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                wrong = f"wrong-guess-{remaining:04d}"
                answers.append(
                    await exchange_from(router, ATTACKER, handshake_bytes(router, wrong))
                )

        start = trio.current_time()
        async with trio.open_nursery() as workers:
            for _ in range(8):
                workers.start_soon(guesser)
        elapsed = trio.current_time() - start
        statuses = Counter(status_of(a) for a in answers)
        print(f"{guesses} wrong tokens in {elapsed:.2f} s: {dict(statuses)}")
        # The burst (10) is spent, then everything is 429; at most one token refilled meanwhile.
        assert set(statuses) == {401, 429}, statuses
        assert 10 <= statuses[401] <= 10 + int(elapsed * 0.2) + 1, statuses
        first_429 = next(a for a in answers if status_of(a) == 429)
        retry_after = header(first_429, b"retry-after")
        assert retry_after is not None and 1 <= int(retry_after) <= 5
        assert body(first_429) == b"too many failed authentications from your address\n"

        # The right token from the throttled address is not even looked at ...
        answer = await exchange_from(router, ATTACKER, handshake_bytes(router, "s3cret"))
        assert status_of(answer) == 429
        # ... while a backend elsewhere with the right token registers at once.
        started = trio.current_time()
        backend = await start_backend(
            nursery, make_hello_app("real"), router.tunnel, token="s3cret"
        )
        await router.wait_tunnels(1, timeout=2)
        assert trio.current_time() - started < 2
        assert (await get(router)).status_code == 200

        lines = security_lines(caplog)
        failures = [line for line in lines if "failed authentication from 127.0.0.2" in line]
        assert len(failures) == statuses[401]
        assert all("missing or invalid bearer token" in line for line in failures)
        trips = [line for line in lines if "127.0.0.2 throttled" in line]
        assert 1 <= len(trips) <= 2, trips
        assert "429" in trips[0]
        assert all(
            r.levelno == logging.WARNING for r in caplog.records if r.name == "router.security"
        )
        assert "wrong-guess" not in caplog.text and "s3cret" not in caplog.text  # never a token
        await backend.stop()
        nursery.cancel_scope.cancel()


# -- the helper's side ---------------------------------------------------------------------


Script = Callable[[int, ServerHandshake], bytes | None]


@dataclass
class FakeRouter:
    """A tunnel port that answers the n-th handshake with ``script(n, handshake)``.

    ``None`` means: read the head, then close without a word.
    """

    script: Script
    port: int = 0
    arrivals: list[float] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, sock: trio.SocketStream) -> None:
        n = len(self.arrivals)
        self.arrivals.append(trio.current_time())
        handshake = ServerHandshake()
        try:
            with trio.fail_after(5):
                while handshake.receive(await sock.receive_some(65536)) is None:
                    pass
            response = self.script(n, handshake)
            if response is not None:
                await sock.send_all(response)
                await sock.send_eof()
                await read_all(sock, timeout=2)
        finally:
            await trio.aclose_forcefully(sock)


def helper_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ptth.backend" and r.levelno >= logging.WARNING]


@pytest.mark.timeout(20)
async def test_helper_logs_one_line_per_refusal_and_retries_503_429_409(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ptth.backend")

    def script(n: int, handshake: ServerHandshake) -> bytes | None:
        if n == 0:
            return handshake.refuse(
                503, "too many pending handshakes from your address", retry_after=1
            )
        if n == 1:
            return handshake.refuse(
                429, "too many failed authentications from your address", retry_after=1
            )
        if n == 2:
            return None  # closed during the handshake
        if n == 3:
            return handshake.refuse(409, "host api.test is held by another identity")
        return handshake.refuse(401, "missing or invalid bearer token")

    fake = FakeRouter(script)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        options = BackendOptions(hosts=("api.test",), backoff_base=0.05, backoff_cap=0.2)
        backend = await start_backend(nursery, make_hello_app("b"), fake.address, options=options)
        with trio.fail_after(10):
            await backend.done.wait()
        nursery.cancel_scope.cancel()

    assert isinstance(backend.error, HandshakeRefused) and backend.error.status == 401
    assert len(fake.arrivals) == 5  # 503, 429, close and 409 were retried; 401 was not
    gaps = [b - a for a, b in zip(fake.arrivals, fake.arrivals[1:], strict=False)]
    assert gaps[0] >= 1.0 and gaps[1] >= 1.0, gaps  # Retry-After honoured
    assert gaps[0] <= 1.5 and gaps[1] <= 1.5, gaps
    router = fake.address
    messages = [r.getMessage() for r in helper_lines(caplog)]
    patterns = [
        rf"router {router} refused the tunnel: 503 too many pending handshakes from your address;"
        r" retrying in 1\.\d s",
        rf"router {router} refused the tunnel: 429 too many failed authentications from your "
        r"address; retrying in 1\.\d s",
        rf"router {router} closed the connection during the handshake; retrying in \d+\.\d s",
        rf"router {router} refused the tunnel: 409 host api\.test is held by another identity; "
        r"retrying in \d+\.\d s \(the holder's claim may expire\)",
        rf"router {router} refused the tunnel: 401 missing or invalid bearer token; "
        r"not retrying: check --token",
    ]
    assert len(messages) == len(patterns), messages
    for message, pattern in zip(messages, patterns, strict=True):
        assert re.fullmatch(pattern, message), (message, pattern)
    assert all("\n" not in m and "h11" not in m and "ConnectionClosed" not in m for m in messages)
    levels = [r.levelname for r in helper_lines(caplog)]
    assert levels == ["WARNING"] * 4 + ["ERROR"]


@pytest.mark.timeout(20)
async def test_helper_retries_the_real_routers_503_until_all_tunnels_register(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ptth.backend")
    async with trio.open_nursery() as nursery:
        # One pending handshake per address, Retry-After 1: the helper's 8 parallel dials collide.
        router = await start_router(nursery, max_pending_per_address=1, handshake_timeout=1)
        backend = await start_backend(nursery, make_hello_app("b"), router.tunnel, connections=4)
        await router.wait_tunnels(4, timeout=10)
        assert (await get(router)).status_code == 200
        await backend.stop()
        nursery.cancel_scope.cancel()
    refused = [r.getMessage() for r in helper_lines(caplog) if "refused" in r.getMessage()]
    assert refused, "the cap was never hit: the test proves nothing"
    for message in refused:
        assert re.fullmatch(
            rf"router {router.tunnel} refused the tunnel: 503 too many pending handshakes from "
            r"your address; retrying in 1\.\d s",
            message,
        ), message


@pytest.mark.timeout(60)
async def test_helper_with_2000_connections_stays_under_the_per_address_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A process of its own (as in production), so that its 2,000 tunnels are not also the
    # router's event loop's work; it is killed at the end, which the router must handle anyway.
    caplog.set_level(logging.WARNING, logger="router.security")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        started = trio.current_time()
        args = ("-m", "ptth", "tests.e2e.apps_faults:app", "--router", router.tunnel)
        async with child(nursery, *args, "--connections", "2000") as helper:
            await router.wait_tunnels(2000, timeout=30)
            print(f"2000 tunnels registered in {trio.current_time() - started:.1f} s")
            assert (await get(router, "/small")).status_code == 200
            assert router.router.listener.admission.pending == 0
        nursery.cancel_scope.cancel()
    assert not security_lines(caplog), security_lines(caplog)[:3]
    complaints = [
        line
        for line in helper.text().splitlines()
        if "refused" in line or " WARNING " in line or " ERROR " in line
    ]
    assert not complaints, complaints[:3]
    assert "registered with" in helper.text()  # the output is what we think it is


# -- the caps on a TLS tunnel port ---------------------------------------------------------


@pytest.mark.timeout(15)
async def test_cap_refusal_on_a_tls_port_is_readable_and_plain_text_cannot_break_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def tls_exchange(payload: bytes) -> bytes:
        sock = await connect_from(router, ATTACKER)
        tls = trio.SSLStream(sock, client_context, server_hostname="127.0.0.1")
        try:
            with trio.fail_after(3):
                await tls.do_handshake()
                await tls.send_all(payload)
                received = bytearray()
                while True:
                    try:
                        data = await tls.receive_some(65536)
                    except trio.BrokenResourceError:
                        break
                    if not data:
                        break
                    received += data
            return bytes(received)
        finally:
            await trio.aclose_forcefully(tls)

    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        router = await start_router(
            nursery,
            max_pending_per_address=1,
            tunnel_tls_cert=str(cert),
            tunnel_tls_key=str(key),
        )
        held = await connect_from(router, ATTACKER)
        try:
            admission = router.router.listener.admission
            with trio.fail_after(2):
                while admission.pending_from(ATTACKER) < 1:
                    await trio.sleep(0.01)
            answer = await tls_exchange(PARTIAL_HEAD)
            assert status_of(answer) == 503, answer
            assert header(answer, b"retry-after") == b"5"
            # Plain text to the TLS port at its cap: the same refusal, readable, at once.
            start = trio.current_time()
            answer = await exchange_from(router, ATTACKER, handshake_bytes(router, None))
            assert trio.current_time() - start < 1
            assert status_of(answer) == 503, answer
            answer = await tls_exchange(PARTIAL_HEAD)
            assert status_of(answer) == 503, answer
        finally:
            await trio.aclose_forcefully(held)
        nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.exc_info], "a connection raised out of handle"


# -- descriptors run out -------------------------------------------------------------------

LOW_FD_ROUTER = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
sys.argv = ["router", *sys.argv[1:]]
runpy.run_module("router", run_name="__main__")
"""


@pytest.mark.timeout(30)
async def test_running_out_of_descriptors_does_not_end_the_tunnel_port() -> None:
    # A router allowed 64 descriptors, and 100 connections: accept fails with EMFILE. Before,
    # that ended the tunnel port's accept loop and the router with it.
    tunnel_port, http_port = free_port(), free_port()
    args = ("--tunnel", f"127.0.0.1:{tunnel_port}", "--http", f"127.0.0.1:{http_port}")
    async with trio.open_nursery() as nursery:
        async with child(nursery, "-c", LOW_FD_ROUTER, *args) as router:
            await router.wait_for(re.compile(rb"tunnel port on"))
            held = []
            try:
                for _ in range(100):
                    held.append(await trio.open_tcp_stream("127.0.0.1", tunnel_port))
                await router.wait_for(re.compile(rb"accept failed \(\[Errno 24\]"), timeout=5)
            finally:
                for sock in held:
                    await trio.aclose_forcefully(sock)
            backend = await start_backend(
                nursery, make_hello_app("real"), f"127.0.0.1:{tunnel_port}"
            )
            await router.wait_for(re.compile(rb"registered service=default"), timeout=10)
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://127.0.0.1:{http_port}/")
            assert response.status_code == 200 and response.text == "bar"
            assert router.process.poll() is None
            assert b"Traceback" not in router.output
            await backend.stop()
        nursery.cancel_scope.cancel()
