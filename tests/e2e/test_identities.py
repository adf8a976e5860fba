"""Identities that own names (issue 10, item 2; ARCHITECTURE.md "Identities and claims"), end to
end on 127.0.0.1: an in-process router with a tokens file (or the one shared ``--token``), real
backends (``ptth.serve``, or ``python -m ptth`` where its exit code or its retrying matters), users
on httpx with explicit Host headers.

* another identity's claim on a host is 409 with a ``router.security`` line, and a backend of
  the same service but another identity receives none of the owner's requests;
* a host the tokens file lists stays its identity's while it is away; without a tokens file
  another service may take it after the grace period, and the owner keeps retrying its 409;
* 403 for a service or host outside a token's entry and for the router's own hosts, with the
  router's reason in ``HandshakeRefused.reason`` (and ``python -m ptth`` exits 2);
* routing precedence by specificity, one backend per level; host names in one canonical form;
* SIGHUP (``Router.reload``): revoked tunnels drain and close, the others stay, a broken file is
  logged and the old one kept.

Refusals are read either from ``ptth.serve`` (what the helper sees) or from one raw handshake
(:func:`handshake`, a :class:`ClientHandshake` on a socket) when only the router's answer matters.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio

import ptth
from ptth import BackendOptions
from ptth.errors import HandshakeRefused
from ptth.proto.handshake import Accepted, ClientHandshake, Registration
from ptth.types import ASGIApp, Receive, Scope, Send
from router.registry import RouterTunnel
from tests.support import (
    RunningBackend,
    RunningRouter,
    child,
    make_hello_app,
    read_body,
    serve_lifespan,
    start_backend,
    start_router,
)

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789"
OPS = "ops-token-0123456789"
SHARED = "shared-s3cret"


@pytest.fixture(autouse=True)
def logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router")
    caplog.set_level(logging.INFO, logger="ptth")


# -- helpers -------------------------------------------------------------------------------


def write_tokens(path: Path, *entries: dict[str, Any]) -> str:
    """A tokens file with one ``[[token]]`` table per entry (JSON strings and arrays are TOML)."""
    lines: list[str] = []
    for entry in entries:
        lines.append("[[token]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in entry.items())
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def alice(hosts: Sequence[str] = ("api.test",)) -> dict[str, Any]:
    return {"name": "alice", "token": ALICE, "services": ["api"], "hosts": list(hosts)}


def bob(hosts: Sequence[str] = ("*.test",), token: str = BOB) -> dict[str, Any]:
    return {"name": "bob", "token": token, "services": ["api"], "hosts": list(hosts)}


def ops() -> dict[str, Any]:
    return {"name": "ops", "token": OPS, "services": ["*"], "hosts": ["*"]}


def options(
    name: str,
    *,
    token: str | None = None,
    service: str = "api",
    hosts: Sequence[str] = (),
    path_prefix: str | None = None,
) -> BackendOptions:
    """Registration of one named backend; a short backoff so refused ones retry quickly."""
    return BackendOptions(
        service=service,
        hosts=tuple(hosts),
        path_prefix=path_prefix,
        token=token,
        instance=name,
        backoff_base=0.05,
        backoff_cap=0.3,
        drain_timeout=5,
    )


async def backend(
    nursery: trio.Nursery, router: RunningRouter, name: str, app: ASGIApp | None = None, **kw: Any
) -> RunningBackend:
    """``ptth.serve`` of an app that names itself, registered before this returns."""
    before = len(tunnels_of(router, name))
    handle = await start_backend(
        nursery, app or make_hello_app(name), router.tunnel, options=options(name, **kw)
    )
    with trio.fail_after(5):
        while len(tunnels_of(router, name)) <= before:
            if handle.done.is_set():
                raise AssertionError(f"backend {name} ended: {handle.error!r}")
            await trio.sleep(0.01)
    return handle


async def refused_by_serve(router: RunningRouter, name: str, **kw: Any) -> HandshakeRefused:
    """What ``ptth.serve`` raises for a refusal it does not retry (400/401/403)."""
    with trio.fail_after(5), pytest.raises(HandshakeRefused) as info:
        await ptth.serve(make_hello_app(name), router.tunnel, options=options(name, **kw))
    return info.value


async def handshake(router: RunningRouter, registration: Registration) -> Accepted:
    """One raw handshake: the router's 101 (the socket is then closed: nothing registers), or
    its refusal raised as :class:`HandshakeRefused`."""
    host, _, port = router.tunnel.rpartition(":")
    with trio.fail_after(5):
        async with await anyio.connect_tcp(host, int(port)) as sock:
            client = ClientHandshake(registration, router.tunnel)
            await sock.send(client.request_bytes())
            while True:
                try:
                    data = await sock.receive(65536)
                except anyio.EndOfStream:
                    data = b""
                accepted = client.receive(data)
                if accepted is not None:
                    return accepted


async def refused_by_router(router: RunningRouter, **kw: Any) -> HandshakeRefused:
    with pytest.raises(HandshakeRefused) as info:
        await handshake(router, Registration(**kw))
    return info.value


def tunnels_of(router: RunningRouter, instance: str) -> list[RouterTunnel]:
    return [t for t in router.router.registry.tunnels() if t.registration.instance == instance]


def tunnel_id(router: RunningRouter, instance: str) -> str:
    [tunnel] = tunnels_of(router, instance)
    return tunnel.tunnel_id


def security_lines(caplog: pytest.LogCaptureFixture, needle: str = "") -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "router.security" and needle in r.getMessage()
    ]


def log_lines(caplog: pytest.LogCaptureFixture, logger: str, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and needle in r.getMessage()]


async def who(client: httpx.AsyncClient, host: str, path: str = "/") -> str:
    """The backend that answered (its X-Backend), or the router's status for no backend."""
    response = await client.get(path, headers={"host": host})
    if response.status_code == 200:
        return response.headers["x-backend"]
    return str(response.status_code)


# -- 1: another identity may neither take nor share a name -----------------------------------


async def test_another_identity_cannot_take_or_share_a_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = write_tokens(tmp_path / "tokens.toml", alice(), bob())
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens)
        owner = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])

        # bob's pattern *.test covers api.test, but alice owns it: 409 and a security line.
        refusal = await refused_by_router(
            router, service="api", hosts=("api.test",), token=BOB, instance="bob"
        )
        assert refusal.status == 409
        assert refusal.reason == "host api.test belongs to another identity"
        [line] = security_lines(caplog, "identity token:bob")
        assert "service api) refused: host api.test belongs to another identity" in line

        # The helper keeps retrying a 409 (the holder's claim may expire) and never registers.
        intruder = await start_backend(
            nursery,
            make_hello_app("bob"),
            router.tunnel,
            options=options("bob", token=BOB, hosts=["api.test"]),
        )
        with trio.fail_after(5):
            while len(log_lines(caplog, "ptth.backend", "409 host api.test belongs")) < 2:
                await trio.sleep(0.01)
        retries = log_lines(caplog, "ptth.backend", "409 host api.test belongs")
        assert all("retrying in" in m and "(the holder's claim may expire)" in m for m in retries)
        assert not intruder.done.is_set()
        assert not tunnels_of(router, "bob")
        await intruder.stop()

        # With no host at all bob would claim every host of his service: a host-less claim
        # needs hosts = ["*"] (ARCHITECTURE.md), so it is 403, and the helper gives up.
        refusal = await refused_by_serve(router, "bob", token=BOB)
        assert refusal.status == 403
        assert refusal.reason == "this token may not claim a host-less claim (every host)"
        assert not refusal.retryable

        # bob of the same service on his own host: he gets none of alice's requests.
        other = await backend(nursery, router, "bob", token=BOB, hosts=["other.test"])
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            # Before issue 10, 17 of 40 went to the intruder (23 of 40 with no host claim).
            answers = Counter([await who(client, "api.test") for _ in range(40)])
            assert answers == {"alice": 40}
            assert Counter([await who(client, "other.test") for _ in range(10)]) == {"bob": 10}
        await owner.stop()
        await other.stop()
        assert owner.error is None and other.error is None
        nursery.cancel_scope.cancel()


# -- 2: ownership outlives the connection ----------------------------------------------------


async def wait_gone(router: RunningRouter, instance: str) -> None:
    with trio.fail_after(5):
        while tunnels_of(router, instance):
            await trio.sleep(0.01)


async def test_a_host_the_tokens_file_lists_stays_its_owners_while_away(tmp_path: Path) -> None:
    grace = 0.5
    tokens = write_tokens(tmp_path / "tokens.toml", alice(), bob())
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens, grace=grace)
        owner = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])
        await owner.stop()
        await wait_gone(router, "alice")
        await trio.sleep(grace + 0.2)
        # The grace period is over and nobody holds api.test, yet the file says it is alice's.
        assert not router.router.registry.routing.claims(trio.current_time())
        refusal = await refused_by_router(
            router, service="api", hosts=("api.test",), token=BOB, instance="bob"
        )
        assert (refusal.status, refusal.reason) == (
            409,
            "host api.test belongs to another identity",
        )
        # ... and she comes back to it.
        owner = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            assert [await who(client, "api.test") for _ in range(5)] == ["alice"] * 5
        await owner.stop()
        nursery.cancel_scope.cancel()


async def test_without_a_tokens_file_another_service_may_take_a_host_after_the_grace(
    tmp_path: Path,
) -> None:
    """Everyone with the shared token is one identity: a claim is kept for the grace period only.
    The owner that comes back to a taken host gets 409 and keeps retrying (before issue 10
    ``python -m ptth`` exited), and registers as soon as the host is free again."""
    grace = 0.5
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, token=SHARED, grace=grace)
        args = (
            *("-m", "ptth", "tests.e2e.apps_identities:app", "--router", router.tunnel),
            *("--service", "api", "--host", "api.test", "--token", SHARED, "--loop", "trio"),
            *("--instance", "owner", "--drain-timeout", "2"),
        )
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            async with child(nursery, *args, PTTH_TEST_NAME="owner") as first:
                await router.wait_tunnels(1, "api")
                assert await who(client, "api.test") == "owner"
                first.process.terminate()
                assert await first.process.wait() == 0
            await wait_gone(router, "owner")

            # Within the grace period the claim is still the service's.
            refusal = await refused_by_router(
                router, service="web", hosts=("api.test",), token=SHARED
            )
            assert (refusal.status, refusal.reason) == (
                409,
                "host api.test with path prefix / is held by service 'api'",
            )
            await trio.sleep(grace + 0.1)
            taker = await backend(
                nursery, router, "web", token=SHARED, service="web", hosts=["api.test"]
            )
            assert await who(client, "api.test") == "web"

            async with child(nursery, *args, PTTH_TEST_NAME="owner") as again:
                pattern = re.compile(
                    rb"refused the tunnel: 409 host api\.test with path prefix / is held by "
                    rb"service 'web'; retrying in [0-9.]+ s \(the holder's claim may expire\)"
                )
                with trio.fail_after(8):
                    while len(pattern.findall(again.output)) < 2:
                        await trio.sleep(0.05)
                assert again.process.poll() is None  # still there, retrying
                assert await who(client, "api.test") == "web"
                await taker.stop()
                await router.wait_tunnels(1, "api", timeout=8)
                assert await who(client, "api.test") == "owner"
                again.process.terminate()
                assert await again.process.wait() == 0
        nursery.cancel_scope.cancel()


# -- 3: 403 for what an identity may not claim -----------------------------------------------


async def test_403_for_claims_outside_a_tokens_entry_and_for_the_routers_own_hosts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = write_tokens(tmp_path / "tokens.toml", alice(), ops())
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens, reserved_hosts=("admin.test",))
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("alice", {"service": "web", "hosts": ["api.test"]}, "may not register service 'web'"),
            ("alice", {"hosts": ["x.test"]}, "this token may not claim x.test"),
            ("alice", {"hosts": ["api.test", "x.api.test"]}, "this token may not claim x.api.test"),
            ("ops", {"hosts": ["127.0.0.1"]}, "host 127.0.0.1 is reserved for the router"),
            ("ops", {"hosts": ["127.0.0.1:8080"]}, "host 127.0.0.1 is reserved for the router"),
            ("ops", {"hosts": ["LocalHost."]}, "host localhost is reserved for the router"),
            ("ops", {"hosts": ["admin.test"]}, "host admin.test is reserved for the router"),
            ("ops", {"hosts": ["Admin.Test:443"]}, "host admin.test is reserved for the router"),
            # A wildcard over a reserved host would take it too.
            ("ops", {"hosts": ["*.test"]}, "wildcard *.test would cover admin.test, reserved"),
        ]
        for name, claim, reason in cases:
            token = ALICE if name == "alice" else OPS
            refusal = await refused_by_serve(router, name, token=token, **claim)
            assert refusal.status == 403, (claim, refusal)
            assert reason in refusal.reason, (claim, refusal.reason)
            assert security_lines(caplog, f"(identity token:{name}) refused: {refusal.reason}")
        # ops may claim anything else, host-less claims included.
        await backend(nursery, router, "ops", token=OPS, service="chat", path_prefix="/chat")
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            assert await who(client, "anything.example", "/chat") == "ops"
        nursery.cancel_scope.cancel()


async def test_a_claim_on_the_routers_own_host_is_refused_and_chat_reaches_chat() -> None:
    """The issue's regression: a backend claiming host 127.0.0.1 took every request for that
    host, another service's /chat prefix included (502). Now the claim is refused (reserved)."""
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await backend(nursery, router, "chat", service="chat", path_prefix="/chat")
        await backend(nursery, router, "default", service="default")
        refusal = await refused_by_serve(router, "intruder", service="web", hosts=["127.0.0.1"])
        assert (refusal.status, refusal.reason) == (
            403,
            "host 127.0.0.1 is reserved for the router",
        )
        refusal = await refused_by_serve(router, "intruder", service="web", hosts=["localhost"])
        assert (refusal.status, refusal.reason) == (
            403,
            "host localhost is reserved for the router",
        )
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            # httpx sends the front end's own address as Host: 127.0.0.1:<port>
            response = await client.get("/chat/room")
            assert (response.status_code, response.headers["x-backend"]) == (200, "chat")
            response = await client.get("/")
            assert (response.status_code, response.headers["x-backend"]) == (200, "default")
        nursery.cancel_scope.cancel()


async def test_python_m_ptth_exits_2_on_a_403_naming_the_reason() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        async with child(
            nursery,
            *("-m", "ptth", "tests.e2e.apps_identities:app", "--router", router.tunnel),
            *("--service", "web", "--host", "127.0.0.1", "--loop", "trio"),
        ) as proc:
            with trio.fail_after(8):
                code = await proc.process.wait()
            await trio.sleep(0.1)  # the last output
            assert code == 2, proc.text()
            assert (
                "ptth: router refused the tunnel: 403 host 127.0.0.1 is reserved for the router"
                in proc.text()
            )
            assert (
                "not retrying: check that the token may claim this service and these hosts"
                in proc.text()
            )
        nursery.cancel_scope.cancel()


# -- 4: routing precedence by specificity ----------------------------------------------------


async def test_routing_precedence_is_by_specificity() -> None:
    """One backend per level; each request hits the most specific level that matches it."""
    levels: list[tuple[str, dict[str, Any]]] = [
        ("exact-longest", {"hosts": ["app.test"], "path_prefix": "/api/v2"}),
        ("exact-prefix", {"hosts": ["app.test"], "path_prefix": "/api"}),
        ("exact", {"hosts": ["app.test"]}),
        ("wild-longest", {"hosts": ["*.deep.test"]}),
        ("wild", {"hosts": ["*.test"]}),
        ("prefix", {"path_prefix": "/api"}),
        ("default", {}),
    ]
    expected = [
        ("app.test", "/api/v2/x", "exact-longest"),
        ("APP.test:80", "/api/v2", "exact-longest"),
        ("app.test", "/api/v3", "exact-prefix"),
        ("app.test", "/api", "exact-prefix"),
        ("app.test", "/apiary", "exact"),  # prefixes match whole segments only
        ("app.test", "/", "exact"),
        ("x.deep.test", "/api/v2", "wild-longest"),  # a wildcard beats a host-less prefix
        ("deep.test", "/", "wild"),  # *.deep.test does not cover deep.test itself
        ("zzz.test", "/api", "wild"),
        ("a.b.test", "/", "wild"),
        ("other.example", "/api/v2", "prefix"),
        ("other.example", "/apiary", "default"),
        ("other.example", "/", "default"),
    ]
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backends = []
        for name, claim in levels:
            service = "default" if name == "default" else name
            backends.append(await backend(nursery, router, name, service=service, **claim))
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            answers = [(host, path, await who(client, host, path)) for host, path, _ in expected]
        assert answers == expected
        for handle in backends:
            await handle.stop()
        nursery.cancel_scope.cancel()


# -- 5: host names in one canonical form -----------------------------------------------------


async def test_claims_and_requests_meet_in_one_canonical_host_form() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        await backend(nursery, router, "upper", service="upper", hosts=["API.Test."])
        await backend(nursery, router, "port", service="port", hosts=["api2.test:8080"])
        await backend(nursery, router, "idna", service="idna", hosts=["bücher.test"])
        assert tunnels_of(router, "idna")[0].registration.hosts == ("xn--bcher-kva.test",)
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            for host in ("api.test", "API.TEST", "api.test.", "api.test:8888"):
                assert await who(client, host) == "upper", host
            for host in ("api2.test", "api2.test:8080", "Api2.Test:1"):
                assert await who(client, host) == "port", host
            for host in ("xn--bcher-kva.test", "XN--BCHER-KVA.TEST."):
                assert await who(client, host) == "idna", host
        nursery.cancel_scope.cancel()


async def raw_registration(router: RunningRouter, hosts: str) -> bytes:
    """The router's answer head to a hand-written upgrade claiming ``hosts`` verbatim (the helper
    would have normalised them itself)."""
    host, _, port = router.tunnel.rpartition(":")
    request = (
        f"POST /.well-known/ptth HTTP/1.1\r\nHost: {router.tunnel}\r\nConnection: Upgrade\r\n"
        f"Upgrade: reverse\r\nALPN: h2\r\nContent-Length: 0\r\nPtth-Service: raw\r\n"
        f"Ptth-Hosts: {hosts}\r\n\r\n"
    ).encode()
    head = b""
    with trio.fail_after(5):
        async with await anyio.connect_tcp(host, int(port)) as sock:
            await sock.send(request)
            while b"\r\n\r\n" not in head:
                head += await sock.receive(65536)
    return head.partition(b"\r\n\r\n")[0]


async def test_the_router_normalises_claims_it_receives_verbatim() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        head = await raw_registration(router, "API.Test., api3.test:8080, XN--BCHER-KVA.test")
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"\r\nPtth-Hosts: api.test, api3.test, xn--bcher-kva.test" in head, head
        head = await raw_registration(router, "xn--zz.test")  # an A-label that does not decode
        assert head.startswith(b"HTTP/1.1 400 "), head
        nursery.cancel_scope.cancel()


async def test_tokens_file_patterns_are_normalised_like_claims(tmp_path: Path) -> None:
    entry = {"name": "books", "token": ALICE, "services": ["api"], "hosts": ["BÜCHER.Test."]}
    tokens = write_tokens(tmp_path / "tokens.toml", entry, bob())
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens)
        await backend(nursery, router, "books", token=ALICE, hosts=["bücher.test"])
        refusal = await refused_by_router(
            router, service="api", hosts=("xn--bcher-kva.test",), token=BOB
        )
        assert (refusal.status, refusal.reason) == (
            409,
            "host xn--bcher-kva.test belongs to another identity",
        )
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            assert await who(client, "xn--bcher-kva.test") == "books"
        nursery.cancel_scope.cancel()


# -- 6: SIGHUP reloads the tokens file -------------------------------------------------------


def slow_app(name: str, started: trio.Event) -> ASGIApp:
    """``/slow`` answers after 0.5 s (``started`` set when it begins); anything else at once."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await read_body(receive)
        if scope["path"] == "/slow":
            started.set()
            await trio.sleep(0.5)
        headers = [(b"content-type", b"text/plain"), (b"x-backend", name.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    return app


async def wait_done(handle: RunningBackend, timeout: float = 5) -> BaseException | None:
    with trio.fail_after(timeout):
        await handle.done.wait()
    return handle.error


async def test_reload_revokes_a_removed_identity_after_its_streams_and_keeps_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.toml"
    tokens = write_tokens(path, alice(), bob(["bob.test"]))
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens, grace=5)
        owner = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])
        started = trio.Event()
        revoked = await backend(
            nursery, router, "bob", slow_app("bob", started), token=BOB, hosts=["bob.test"]
        )
        alice_id, bob_id = tunnel_id(router, "alice"), tunnel_id(router, "bob")
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            slow: list[httpx.Response] = []

            async def fetch_slow() -> None:
                slow.append(await client.get("/slow", headers={"host": "bob.test"}))

            async with trio.open_nursery() as requests:
                requests.start_soon(fetch_slow)
                with trio.fail_after(5):
                    await started.wait()
                write_tokens(path, alice())
                router.router.reload()
                # Out of rotation at once; its request in flight still finishes.
                assert not tunnels_of(router, "bob")
                assert await who(client, "bob.test") == "503"
            [response] = slow
            assert (response.status_code, response.text) == (200, "/slow")
            assert response.headers["x-backend"] == "bob"
            # Then the tunnel is closed; bob's helper comes back with a token the file no
            # longer has: 401, which it does not retry.
            error = await wait_done(revoked)
            assert isinstance(error, HandshakeRefused) and error.status == 401, error
            [line] = security_lines(caplog, f"tunnel {bob_id} (identity token:bob, instance bob)")
            assert "revoked by the new tokens file (missing or invalid bearer token)" in line
            assert log_lines(caplog, "router.tunnel", "tokens file reloaded: 1 identities; 1 ")
            # alice's tunnel is the same one, never reconnected, and keeps serving.
            assert [await who(client, "api.test") for _ in range(5)] == ["alice"] * 5
            assert tunnel_id(router, "alice") == alice_id
            assert not log_lines(caplog, "router.tunnel", f"tunnel {alice_id}: lost")
            assert len(log_lines(caplog, "router.tunnel", "instance=alice ")) == 1
        await owner.stop()
        nursery.cancel_scope.cancel()


async def test_reload_revokes_a_tunnel_whose_claims_or_token_the_new_file_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.toml"
    tokens = write_tokens(path, alice(), bob(["bob.test"]))
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens)
        owner = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])
        other = await backend(nursery, router, "bob", token=BOB, hosts=["bob.test"])
        alice_id, bob_id = tunnel_id(router, "alice"), tunnel_id(router, "bob")

        # alice may no longer claim api.test: revoked; coming back with it is 403.
        write_tokens(path, alice(["new.test"]), bob(["bob.test"]))
        router.router.reload()
        error = await wait_done(owner)
        assert isinstance(error, HandshakeRefused), error
        assert (error.status, error.reason) == (403, "this token may not claim api.test")
        [line] = security_lines(caplog, f"tunnel {alice_id} (identity token:alice")
        assert "revoked by the new tokens file (this token may not claim api.test)" in line
        assert tunnel_id(router, "bob") == bob_id

        # bob's token changed under the same name: revoked too (401 when he comes back).
        write_tokens(path, alice(["new.test"]), bob(["bob.test"], token="bob-new-token-xyz"))
        router.router.reload()
        error = await wait_done(other)
        assert isinstance(error, HandshakeRefused) and error.status == 401, error
        assert security_lines(caplog, f"tunnel {bob_id} (identity token:bob")
        assert not router.router.registry.tunnels()
        nursery.cancel_scope.cancel()


async def test_a_tokens_file_that_does_not_load_is_logged_and_the_old_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.toml"
    tokens = write_tokens(path, alice(), bob(["bob.test"]))
    carol = {"name": "carol", "token": "carol-token-0123456789", "services": ["*"], "hosts": ["*"]}
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens)
        first = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])
        second = await backend(nursery, router, "bob", token=BOB, hosts=["bob.test"])
        ids = tunnel_id(router, "alice"), tunnel_id(router, "bob")
        broken = [
            ("[[token]\nname = 'alice'\n", "is not valid TOML"),
            # carol is new, and alice is listed twice: the whole file is refused.
            (None, "[[token]] #3 ('alice'): name 'alice' is used twice"),
        ]
        for text, reason in broken:
            if text is None:
                write_tokens(path, alice(), carol, alice(["x.test"]), bob(["bob.test"]))
            else:
                path.write_text(text)
            router.router.reload()
            [line] = log_lines(caplog, "router.tunnel", reason)
            assert line.startswith("tokens file not reloaded (keeping the previous one): ")
            assert str(path) in line
            assert (tunnel_id(router, "alice"), tunnel_id(router, "bob")) == ids
        assert not security_lines(caplog, "revoked")
        # The old file is in force: alice and bob serve, bob may still register, carol may not.
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            assert await who(client, "api.test") == "alice"
            assert await who(client, "bob.test") == "bob"
        await handshake(router, Registration(service="api", hosts=("bob.test",), token=BOB))
        refusal = await refused_by_router(router, token="carol-token-0123456789")
        assert refusal.status == 401
        await first.stop()
        await second.stop()
        assert first.error is None and second.error is None
        nursery.cancel_scope.cancel()


# -- regressions found while writing these tests -----------------------------------------------


async def test_an_owned_host_is_not_served_by_another_identitys_wildcard_while_its_owner_is_away(
    tmp_path: Path,
) -> None:
    """The tokens file gives api.test to alice; bob's *.test must not receive its users once
    alice's grace period is over (it did: every request for api.test reached bob)."""
    grace = 0.3
    tokens = write_tokens(tmp_path / "tokens.toml", alice(), bob(), ops())
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens, grace=grace)
        owner = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])
        wildcard = await backend(nursery, router, "bob", token=BOB, hosts=["*.test"])
        catch_all = await backend(nursery, router, "ops", token=OPS, service="default")
        async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
            assert await who(client, "api.test") == "alice"
            await owner.stop()
            await wait_gone(router, "alice")
            await trio.sleep(grace + 0.2)
            # Not bob's wildcard, not ops' catch-all: 503 until alice is back.
            assert [await who(client, "api.test") for _ in range(10)] == ["503"] * 10
            assert await who(client, "x.test") == "bob"  # other names still reach them
            assert await who(client, "example.org") == "ops"
            owner = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])
            assert await who(client, "api.test") == "alice"
        for handle in (owner, wildcard, catch_all):
            await handle.stop()
        nursery.cancel_scope.cancel()


async def test_reload_giving_a_held_host_to_another_identity_hands_it_over(
    tmp_path: Path,
) -> None:
    """alice holds api.test under her pattern *.test; the new file lists api.test for bob. The
    file says the name is bob's "connected or not": alice's tunnel should be revoked and bob
    able to register it at once, not after alice leaves and her grace runs out."""
    path = tmp_path / "tokens.toml"
    tokens = write_tokens(path, alice(["*.test"]), bob(["bob.test"]))
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, tokens=tokens, grace=5)
        owner = await backend(nursery, router, "alice", token=ALICE, hosts=["api.test"])
        write_tokens(path, alice(["*.test"]), bob(["api.test"]))
        router.router.reload()
        try:
            with trio.fail_after(2):
                await wait_gone(router, "alice")
            taker = await backend(nursery, router, "bob", token=BOB, hosts=["api.test"])
            async with httpx.AsyncClient(base_url=router.url, timeout=5) as client:
                assert await who(client, "api.test") == "bob"
            await taker.stop()
        finally:
            await owner.stop()
            nursery.cancel_scope.cancel()
