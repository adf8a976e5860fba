"""TLS on the tunnel port: ``tls://`` helpers verified against a CA, mismatched schemes refused
readably, the handshake deadline, certificate reload, and the client key the router sees.

Certificates come from ``trustme`` (written to ``tmp_path``); all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest
import trio
import trustme
from anyio.streams.tls import TLSStream
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import ptth
from ptth._backend import _client_tls
from ptth._dial import plaintext_token_warning as helper_warning
from ptth.identity import load_or_create
from ptth.proto.address import parse_router_address
from ptth.proto.handshake import ClientHandshake, Registration
from ptth.proto.keyid import key_label
from router.config import RouterConfig
from router.server import Router
from router.tunnel_tls import TunnelTLS, TunnelTLSAttribute, plaintext_token_warning
from tests.support import RunningRouter, child, make_hello_app, start_backend, start_router

# Fast retries, so that a test sees several attempts in a second.
FAST = {"backoff_base": 0.05, "backoff_cap": 0.2}


@dataclass
class Certs:
    ca: trustme.CA
    ca_pem: Path
    cert: Path
    key: Path


def issue(ca: trustme.CA, cert: Path, key: Path, *names: str) -> None:
    issued = ca.issue_cert(*(names or ("localhost", "127.0.0.1")))
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))


def make_certs(directory: Path, name: str, *names: str) -> Certs:
    ca = trustme.CA()
    ca_pem = directory / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    issue(ca, cert, key, *names)
    return Certs(ca, ca_pem, cert, key)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path, "tunnel")


def spki_sha256(cert_pem: bytes) -> bytes:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    der = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


async def tls_router(nursery: trio.Nursery, certs: Certs, **overrides: object) -> RunningRouter:
    return await start_router(
        nursery, tunnel_tls_cert=str(certs.cert), tunnel_tls_key=str(certs.key), **overrides
    )


def tls_url(router: RunningRouter) -> str:
    return f"tls://{router.tunnel}"


async def get(router: RunningRouter, path: str = "/", host: str | None = None) -> httpx.Response:
    headers = {"host": host} if host is not None else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(router.url + path, headers=headers)


async def wait_log(caplog: pytest.LogCaptureFixture, pattern: str, count: int = 1) -> None:
    """Until ``count`` records match ``pattern`` (bounded by the test's timeout)."""
    regex = re.compile(pattern)
    while sum(1 for r in caplog.records if regex.search(r.getMessage())) < count:
        await trio.sleep(0.02)


def messages(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [r.getMessage() for r in caplog.records if regex.search(r.getMessage())]


# -- 1. a tls:// helper serves end to end --------------------------------------------------


@pytest.mark.timeout(30)
async def test_backend_over_tls_serves_requests(
    certs: Certs, tmp_path: Path, helper_loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """tls:// with ca_file and a key identity: registered under the name the key is granted,
    requests served, and the router's tunnel carries the SHA-256 of the helper's public key."""
    caplog.set_level(logging.INFO)
    identity = load_or_create(tmp_path / "identity")
    name = identity.host("keys.test")
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs, domain="keys.test")
        await start_backend(
            nursery,
            make_hello_app("tls"),
            tls_url(router),
            loop=helper_loop,
            hosts=[name],
            ca_file=str(certs.ca_pem),
            identity=str(tmp_path / "identity"),
        )
        await router.wait_tunnels(1)
        for i in range(3):
            response = await get(router, f"/x/{i}", host=name)
            assert response.status_code == 200, response.text
            assert response.headers["x-backend"] == "tls", response.text
        (tunnel,) = router.router.registry.tunnels()
        assert tunnel.identity.fingerprint == identity.fingerprint
        assert tunnel.identity.fingerprint == spki_sha256(identity.cert_file.read_bytes())
        nursery.cancel_scope.cancel()
    assert messages(caplog, rf"key identity {identity.label}: the router grants {identity.label}")


@pytest.mark.timeout(30)
async def test_backend_without_certificate_has_no_key_identity(certs: Certs) -> None:
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs)
        context = ssl.create_default_context(cafile=str(certs.ca_pem))
        await start_backend(nursery, make_hello_app("ctx"), tls_url(router), ssl_context=context)
        await router.wait_tunnels(1)
        assert (await get(router)).status_code == 200
        (tunnel,) = router.router.registry.tunnels()
        assert tunnel.identity.fingerprint is None
        nursery.cancel_scope.cancel()


# -- 2. an untrusted or misnamed router certificate ----------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("names", "wrong_ca", "reason"),
    [
        (("localhost", "127.0.0.1"), True, "unable to get local issuer certificate"),
        (("router.test",), False, "IP address mismatch"),
    ],
)
async def test_untrusted_router_is_retried_with_a_readable_line(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    names: tuple[str, ...],
    wrong_ca: bool,
    reason: str,
) -> None:
    """The helper logs why (and against what) and keeps retrying; the router stays usable."""
    caplog.set_level(logging.INFO)
    certs = make_certs(tmp_path, "tunnel", *names)
    other = make_certs(tmp_path, "other")
    ca_file = other.ca_pem if wrong_ca else certs.ca_pem
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs)
        backend = await start_backend(
            nursery,
            make_hello_app("bad"),
            tls_url(router),
            options=ptth.BackendOptions(ca_file=str(ca_file), **FAST),
        )
        line = rf"router {re.escape(router.tunnel)}: TLS certificate not accepted: {reason}"
        await wait_log(caplog, line + r".*; retrying in", count=3)
        assert str(ca_file) in messages(caplog, line)[0]
        assert not backend.done.is_set()
        assert router.tunnel_count() == 0
        assert (await get(router)).status_code in (404, 503)  # the router still answers
        await backend.stop()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_router_survives_bad_tls_clients(
    certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Untrusting helpers, a TLS client that sends garbage records, and one that hangs up
    mid-handshake leave the router serving a good helper."""
    caplog.set_level(logging.INFO)
    other = make_certs(tmp_path, "other")
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs)
        bad = await start_backend(
            nursery,
            make_hello_app("bad"),
            tls_url(router),
            options=ptth.BackendOptions(ca_file=str(other.ca_pem), **FAST),
        )
        host, port = router.addresses.tunnel
        for junk in (b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64, b"\x16\x03"):
            sock = await anyio.connect_tcp(host, port)
            await sock.send(junk)
            if junk == b"\x16\x03":
                await sock.aclose()  # hangs up mid-record
                continue
            with trio.fail_after(5):
                try:
                    while await sock.receive():
                        pass
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass  # closed (after OpenSSL's alert)
            await sock.aclose()
        await wait_log(caplog, r"TLS handshake failed")
        await start_backend(nursery, make_hello_app("good"), tls_url(router), ca_file=certs.ca_pem)
        await router.wait_tunnels(1)
        assert (await get(router)).headers["x-backend"] == "good"
        await bad.stop()
        nursery.cancel_scope.cancel()


# -- 3. mismatched schemes -----------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_plain_helper_on_the_tls_port_gets_a_readable_426(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """A tcp:// helper on a TLS tunnel port is answered in plain text (426, what to dial) and
    retries; a tls:// helper registers meanwhile."""
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs)
        plain = await start_backend(
            nursery,
            make_hello_app("plain"),
            router.tunnel,
            options=ptth.BackendOptions(**FAST),
        )
        await wait_log(
            caplog,
            rf"router {re.escape(router.tunnel)} refused the tunnel: 426 this tunnel port "
            r"speaks TLS: dial tls://HOST:PORT.*retrying in",
            count=2,
        )
        assert not plain.done.is_set()
        await start_backend(nursery, make_hello_app("tls"), tls_url(router), ca_file=certs.ca_pem)
        await router.wait_tunnels(1)
        assert (await get(router)).headers["x-backend"] == "tls"
        await plain.stop()
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_tls_helper_on_a_plain_port_is_told_and_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        tls = await start_backend(
            nursery, make_hello_app("tls"), tls_url(router), options=ptth.BackendOptions(**FAST)
        )
        await wait_log(
            caplog,
            rf"router {re.escape(router.tunnel)}: TLS handshake failed: .*"
            r"\(does that port speak TLS\? a plain one is tcp://\); retrying in",
            count=2,
        )
        assert not tls.done.is_set()
        await start_backend(nursery, make_hello_app("plain"), router.tunnel)
        await router.wait_tunnels(1)
        assert (await get(router)).headers["x-backend"] == "plain"
        await tls.stop()
        nursery.cancel_scope.cancel()


# -- 4. the handshake deadline covers TLS ---------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sends", [b"", b"\x16\x03\x01"])
async def test_silent_client_on_the_tls_port_is_closed_at_the_deadline(
    certs: Certs, sends: bytes
) -> None:
    """Nothing sent, or a TLS record cut short: closed at handshake_timeout, not later."""
    deadline = 0.5
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs, handshake_timeout=deadline)
        host, port = router.addresses.tunnel
        sock = await anyio.connect_tcp(host, port)
        started = trio.current_time()
        if sends:
            await sock.send(sends)
        with trio.fail_after(deadline + 3):
            try:
                while await sock.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        elapsed = trio.current_time() - started
        await sock.aclose()
        assert deadline - 0.05 <= elapsed < deadline + 1.0, elapsed
        assert router.router.listener.admission.pending == 0
        nursery.cancel_scope.cancel()


# -- 5. reload ------------------------------------------------------------------------------


async def peer_certificate(port: int, context: ssl.SSLContext) -> bytes:
    sock = await anyio.connect_tcp("127.0.0.1", port)
    try:
        tls = await TLSStream.wrap(sock, hostname="127.0.0.1", ssl_context=context)
    except BaseException:
        await anyio.aclose_forcefully(sock)
        raise
    try:
        der = tls.extra(anyio.streams.tls.TLSAttribute.peer_certificate_binary)
        assert der is not None
        return der
    finally:
        await anyio.aclose_forcefully(tls)


@pytest.mark.timeout(30)
async def test_reload_swaps_the_certificate_and_keeps_tunnels(
    certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    second = trustme.CA()
    first_context = ssl.create_default_context(cafile=str(certs.ca_pem))
    second_context = ssl.create_default_context()
    second.configure_trust(second_context)
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs)
        port = router.addresses.tunnel[1]
        await start_backend(nursery, make_hello_app("old"), tls_url(router), ca_file=certs.ca_pem)
        await router.wait_tunnels(1)
        (tunnel,) = router.router.registry.tunnels()
        before = await peer_certificate(port, first_context)

        # A broken file: logged, the old certificate kept.
        certs.cert.write_bytes(b"not a certificate\n")
        router.router.reload()
        assert messages(caplog, r"tunnel TLS reload failed, keeping the current certificate")
        assert await peer_certificate(port, first_context) == before

        issue(second, certs.cert, certs.key)
        router.router.reload()
        assert messages(caplog, r"tunnel TLS certificate reloaded")
        after = await peer_certificate(port, second_context)
        assert after != before
        with pytest.raises(ssl.SSLCertVerificationError):
            await peer_certificate(port, first_context)

        # The tunnel made under the old certificate is still the one serving.
        assert router.router.registry.tunnels() == [tunnel]
        assert (await get(router)).headers["x-backend"] == "old"
        nursery.cancel_scope.cancel()


# -- 6. the accept side alone: what the router learns of the client --------------------------


async def accept_once(
    tls: TunnelTLS, client_context: ssl.SSLContext
) -> tuple[bytes | None, object, object]:
    """One TLS connection to a bare :class:`TunnelTLS`: the fingerprint and remote address the
    server side sees, and the client's own local address."""
    seen: dict[str, object] = {}
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(sock: anyio.abc.SocketStream) -> None:
        stream = tls.wrap(sock)
        await stream.handshake()
        seen["fingerprint"] = stream.extra(TunnelTLSAttribute.client_key_sha256, None)
        seen["remote"] = stream.extra(anyio.abc.SocketAttribute.remote_address)
        await stream.send(b"x" * 1_000_000)
        await stream.aclose()

    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        sock = await anyio.connect_tcp("127.0.0.1", port)
        client = await TLSStream.wrap(
            sock, hostname="127.0.0.1", ssl_context=client_context, standard_compatible=False
        )
        received = 0
        try:
            while True:
                received += len(await client.receive())
        except anyio.EndOfStream:
            pass
        assert received == 1_000_000
        local = client.extra(anyio.abc.SocketAttribute.local_address)
        await client.aclose()
        group.cancel_scope.cancel()
    await listener.aclose()
    return seen.get("fingerprint"), seen.get("remote"), local  # type: ignore[return-value]


@pytest.mark.timeout(30)
async def test_accept_side_sees_the_client_key_fingerprint(certs: Certs) -> None:
    tls = TunnelTLS(str(certs.cert), str(certs.key))
    context = ssl.create_default_context(cafile=str(certs.ca_pem))
    client = trustme.CA().issue_cert("some-backend")  # another CA: the router accepts any
    client.configure_cert(context)
    fingerprint, remote, local = await accept_once(tls, context)
    assert fingerprint == spki_sha256(client.cert_chain_pems[0].bytes())
    assert len(key_label(fingerprint)) == 26
    assert remote == local  # socket attributes pass through the TLS wrapper


@pytest.mark.timeout(30)
async def test_accept_side_without_a_client_certificate(certs: Certs) -> None:
    tls = TunnelTLS(str(certs.cert), str(certs.key))
    fingerprint, _, _ = await accept_once(tls, ssl.create_default_context(cafile=str(certs.ca_pem)))
    assert fingerprint is None


@pytest.mark.timeout(30)
async def test_cap_refusal_reaches_a_tls_helper(certs: Certs) -> None:
    """At a full pre-auth cap the 503 goes through TLS, so the helper can read it."""
    async with trio.open_nursery() as nursery:
        router = await tls_router(nursery, certs, max_pending_handshakes=1, handshake_timeout=5)
        host, port = router.addresses.tunnel
        hog = await anyio.connect_tcp(host, port)  # holds the only pending slot
        await trio.sleep(0.1)
        sock = await anyio.connect_tcp(host, port)
        context = ssl.create_default_context(cafile=str(certs.ca_pem))
        tls = await TLSStream.wrap(
            sock, hostname="127.0.0.1", ssl_context=context, standard_compatible=False
        )
        handshake = ClientHandshake(Registration(service="x"), router.tunnel)
        await tls.send(handshake.request_bytes())
        with pytest.raises(ptth.HandshakeRefused) as refused, trio.fail_after(5):
            result = None
            while result is None:
                try:
                    data = await tls.receive()
                except anyio.EndOfStream:
                    data = b""
                result = handshake.receive(data)
        assert refused.value.status == 503
        await tls.aclose()
        await hog.aclose()
        nursery.cancel_scope.cancel()


# -- 7. warnings about tokens in clear text ------------------------------------------------


@pytest.mark.timeout(10)
def test_router_warns_when_tokens_would_travel_in_plain_text(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="router")
    Router(RouterConfig(tunnel="0.0.0.0:8887", token="secret"))  # built, never bound
    (line,) = messages(caplog, "tokens would travel in plain text")
    assert "0.0.0.0:8887" in line and "--tunnel-tls-cert" in line
    caplog.clear()
    for quiet in (
        RouterConfig(tunnel="127.0.0.1:8887", token="secret"),
        RouterConfig(tunnel="[::1]:8887", token="secret"),
        RouterConfig(tunnel="0.0.0.0:8887"),
        RouterConfig(
            tunnel="0.0.0.0:8887",
            token="secret",
            tunnel_tls_cert=str(certs.cert),
            tunnel_tls_key=str(certs.key),
        ),
    ):
        Router(quiet)
        assert plaintext_token_warning(quiet) is None
    assert not messages(caplog, "plain text")
    assert plaintext_token_warning(RouterConfig(tunnel="router.example:1", token="t"))
    assert plaintext_token_warning(RouterConfig(tunnel=":::1", token="t")) is not None
    # Tunnels on the front end: its own TLS counts; `--tunnel none` is no tunnel port at all.
    assert plaintext_token_warning(RouterConfig(tunnel="none", token="t")) is None
    public = RouterConfig(tunnel="none", http="0.0.0.0:8888", token="t")
    assert "--no-front-end-tunnels" in (plaintext_token_warning(public) or "")
    closed = dataclasses.replace(public, tunnel="127.0.0.1:8887", front_end_tunnels=False)
    assert plaintext_token_warning(closed) is None


@pytest.mark.timeout(20)
async def test_helper_warns_when_its_token_travels_in_plain_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Warned once at start for a non-loopback tcp:// router (only loopback is dialled)."""
    caplog.set_level(logging.WARNING, logger="ptth")
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery, token="secret")
        await start_backend(nursery, make_hello_app("a"), router.tunnel, token="secret")
        await router.wait_tunnels(1)
        assert not messages(caplog, "plain text")
        nursery.cancel_scope.cancel()
    # The start-up check itself, for an address this test must not dial.
    _client_tls(ptth.BackendOptions(token="secret"), [parse_router_address("192.0.2.1:8887")])
    (line,) = messages(caplog, "plain text")
    assert "tls://192.0.2.1:8887" in line

    line = helper_warning(parse_router_address("router.example:8887"), "secret")
    assert line is not None and "tls://router.example:8887" in line
    assert helper_warning(parse_router_address("router.example:8887"), None) is None
    assert helper_warning(parse_router_address("tls://router.example:8887"), "secret") is None
    assert helper_warning(parse_router_address("[::1]:8887"), "secret") is None
    assert helper_warning(parse_router_address("localhost:8887"), "secret") is None


# -- 8. the command lines ------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_cli_router_and_helper_with_a_key_identity(certs: Certs, tmp_path: Path) -> None:
    """``python -m router --tunnel-tls-cert/--tunnel-tls-key --domain`` and ``python -m ptth
    --router tls://... --ca-file --identity`` (made in XDG_CONFIG_HOME): the helper says which
    name it is granted, claims it, and serves it."""
    ready = re.compile(rb"front end on http://[\d.]+:(\d+), tunnel port on ([\d.]+:\d+)")
    async with trio.open_nursery() as nursery:
        async with child(
            nursery,
            "-m",
            "router",
            "--http",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            "--tunnel-tls-cert",
            str(certs.cert),
            "--tunnel-tls-key",
            str(certs.key),
            "--domain",
            "keys.test",
        ) as router:
            match = await router.wait_for(ready)
            http_port, tunnel = int(match.group(1)), match.group(2).decode()
            xdg = tmp_path / "xdg"
            identity = load_or_create(xdg / "ptth" / "identity")  # what the helper will use
            name = identity.host("keys.test")
            async with child(
                nursery,
                "-m",
                "ptth",
                "examples.backend:app",
                "--router",
                f"tls://{tunnel}",
                "--ca-file",
                str(certs.ca_pem),
                "--identity",
                "--host",
                name,
                XDG_CONFIG_HOME=str(xdg),
            ) as helper:
                await helper.wait_for(
                    re.compile(
                        rf"key identity {identity.label}: the router grants "
                        rf"{identity.label}\.<its --domain>".encode()
                    )
                )
                await helper.wait_for(re.compile(rb"tunnel \w+: registered with"))
                async with httpx.AsyncClient(timeout=10) as client:
                    response = await client.get(
                        f"http://127.0.0.1:{http_port}/foo", headers={"host": name}
                    )
                assert response.status_code == 200, response.text
                assert response.text == "bar"
        nursery.cancel_scope.cancel()
