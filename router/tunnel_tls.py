"""TLS on the tunnel port (ARCHITECTURE.md, "Tunnel TLS and key identities").

A backend may present a client certificate of its own making (self-signed is fine): the router
never checks it against a CA, it only learns the SHA-256 of its public key, which *is* the
backend's key identity. Python's ``ssl`` cannot accept a client certificate it cannot verify (it
has no verify callback), so this side runs pyOpenSSL over memory BIOs, wrapped as an anyio byte
stream: the sockets stay anyio's, OpenSSL only encrypts and decrypts buffers, in large chunks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
from anyio import TypedAttributeSet, typed_attribute
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from OpenSSL import SSL
from OpenSSL.crypto import X509

from ptth.errors import ConfigError, HandshakeError
from ptth.proto.address import parse_address

from .config import RouterConfig

__all__ = [
    "TunnelTLS",
    "TunnelTLSAttribute",
    "TunnelTLSStream",
    "plaintext_token_warning",
]

log = logging.getLogger("router.tunnel")

# What is read from the socket at once, and the most taken out of OpenSSL's output buffer at
# once: large, so a bulk transfer costs a few Python calls per 256 KiB, not per 16 KiB record.
TRANSPORT_READ = 256 * 1024
FLUSH_CHUNK = 256 * 1024
# Plain text is cut into pieces this big before encryption, so that OpenSSL's output buffer
# (which has no limit) never holds more than one piece's records.
WRITE_CHUNK = 256 * 1024
# The first byte of every TLS handshake record (RFC 8446 §5.1, ContentType handshake).
_TLS_HANDSHAKE = 0x16
# How long a last record (an alert, close_notify) may take to leave; nothing waits for a reply.
LAST_WORDS_TIMEOUT = 1.0


class TunnelTLSAttribute(TypedAttributeSet):
    """Read with ``stream.extra(TunnelTLSAttribute.client_key_sha256, None)``."""

    #: SHA-256 of the DER SubjectPublicKeyInfo of the client certificate, when one was presented.
    client_key_sha256: bytes = typed_attribute()


def _accept_any(_conn: SSL.Connection, _cert: X509, _errno: int, _depth: int, _ok: int) -> bool:
    """Every client certificate is acceptable: it names a key, not a CA-vouched subject."""
    return True


def _context(cert: str, key: str) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No renegotiation: a write must never need a read (RFC 9113 §9.2.1 forbids it for h2 too).
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    try:
        context.use_certificate_chain_file(cert)
        context.use_privatekey_file(key)
        context.check_privatekey()
    except (OSError, SSL.Error) as exc:
        raise ConfigError(
            f"cannot load tunnel TLS certificate {cert} / key {key}: {_describe(exc)}"
        ) from None
    # Request a certificate, accept any, and none at all (no VERIFY_FAIL_IF_NO_PEER_CERT).
    context.set_verify(SSL.VERIFY_PEER, _accept_any)
    return context


def _describe(exc: BaseException) -> str:
    """OpenSSL's error queue as one short clause (``wrong version number``)."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(entry[-1]) for entry in exc.args[0] if entry and entry[-1]]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    return str(exc) or type(exc).__name__


class TunnelTLS:
    """The tunnel port's certificate files and the context made from them; reloadable.

    A reload builds a new context; connections already open keep the one they started with.
    """

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.context = _context(cert, key)  # ConfigError if unreadable

    @classmethod
    def from_config(cls, config: RouterConfig) -> TunnelTLS | None:
        if config.tunnel_tls_cert is None or config.tunnel_tls_key is None:
            return None
        return cls(config.tunnel_tls_cert, config.tunnel_tls_key)

    def reload(self) -> bool:
        """SIGHUP: read the files again; a file that does not load keeps the old context."""
        try:
            self.context = _context(self.cert, self.key)
        except ConfigError as exc:
            log.warning("tunnel TLS reload failed, keeping the current certificate: %s", exc)
            return False
        log.info("tunnel TLS certificate reloaded from %s", self.cert)
        return True

    def wrap(self, transport: anyio.abc.ByteStream) -> TunnelTLSStream:
        """The server side of TLS over ``transport``; the handshake happens on first use."""
        return TunnelTLSStream(transport, self.context)


class TunnelTLSStream(anyio.abc.ByteStream):
    """TLS (server side) over a byte stream, by pyOpenSSL over memory BIOs.

    :meth:`handshake` runs the TLS handshake (a first ``receive`` or ``send`` runs it too); it
    raises :class:`HandshakeError` when the client does not speak TLS (status 426, and from then
    on this stream carries plain text, so that the refusal reaches it readably) or fails the TLS
    handshake (status 400, and the stream is broken), and ``BrokenResourceError`` when the client
    goes away. A handshake interrupted (the tunnel handshake deadline) leaves the stream broken.
    ``receive`` and ``send`` may run at the same time in two tasks, as the HTTP/2 driver does.
    """

    def __init__(self, transport: anyio.abc.ByteStream, context: SSL.Context) -> None:
        self.transport = transport
        self._conn = SSL.Connection(context, None)
        self._conn.set_accept_state()
        self._state = "new"  # -> "tls" | "plain" | "broken"
        self._handshake_lock = anyio.Lock()
        self._send_lock = anyio.Lock()
        self._fingerprint: bytes | None = None

    # -- the handshake -------------------------------------------------------------------

    async def handshake(self) -> None:
        async with self._handshake_lock:
            if self._state == "new":
                self._state = "broken"  # unless it completes
                self._state = await self._run_handshake()
        if self._state == "broken":
            raise anyio.BrokenResourceError("the TLS handshake did not complete")

    async def _run_handshake(self) -> str:
        first = True
        while True:
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                await self._flush()
                data = await self._receive_raw()
                if first and data[0] != _TLS_HANDSHAKE:
                    error = HandshakeError(
                        "this tunnel port speaks TLS: dial tls://HOST:PORT, not tcp://"
                    )
                    error.status = 426
                    self._state = "plain"
                    raise error from None
                first = False
                self._conn.bio_write(data)
                continue
            except SSL.Error as exc:
                with anyio.move_on_after(LAST_WORDS_TIMEOUT):  # OpenSSL's alert says why
                    await self._flush()
                raise HandshakeError(f"TLS handshake failed: {_describe(exc)}") from None
            break
        await self._flush()
        certificate = self._conn.get_peer_certificate(as_cryptography=True)
        if certificate is not None:
            spki = certificate.public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo
            )
            self._fingerprint = hashlib.sha256(spki).digest()
        return "tls"

    async def _ensure_handshake(self) -> None:
        """The handshake on first use: a stream whose client spoke plain text carries plain
        text from then on (the refusal must reach it); any other failure breaks it."""
        try:
            await self.handshake()
        except HandshakeError:
            if self._state != "plain":
                raise anyio.BrokenResourceError("the TLS handshake failed") from None

    async def _receive_raw(self) -> bytes:
        try:
            return await self.transport.receive(TRANSPORT_READ)
        except anyio.EndOfStream:
            # What a client does when it rejects this certificate (ssl sends no alert then).
            raise anyio.BrokenResourceError(
                "closed during the TLS handshake (does it trust this certificate?)"
            ) from None

    # -- moving bytes ----------------------------------------------------------------------

    def _take_output(self) -> bytes:
        """Everything OpenSSL wrote for the peer so far (records, alerts)."""
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(self._conn.bio_read(FLUSH_CHUNK))
            except SSL.WantReadError:
                break
        return b"".join(chunks)

    async def _flush(self) -> None:
        """Send what OpenSSL has produced. Output is taken under the send lock, so records
        leave in order; whatever a reader adds while a send is blocked goes out next."""
        async with self._send_lock:
            while data := self._take_output():
                try:
                    await self.transport.send(data)
                except BaseException:
                    self._state = "broken"  # a record is lost: nothing after it decrypts
                    raise

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._state != "tls":
            await self._ensure_handshake()
            if self._state == "plain":
                return await self.transport.receive(max_bytes)
        while True:
            try:
                data = self._conn.recv(max_bytes)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:  # close_notify
                raise anyio.EndOfStream from None
            except SSL.Error as exc:
                self._state = "broken"
                raise anyio.BrokenResourceError(f"TLS error: {_describe(exc)}") from None
            else:
                return self._more(data, max_bytes)
            # An end without close_notify is an end too: HTTP/2 frames its own (RFC 9113 §9.2.1).
            self._conn.bio_write(await self.transport.receive(TRANSPORT_READ))
            # Reading may have produced output (a TLS 1.3 KeyUpdate reply): send it, unless a
            # writer is sending, who sends it next.
            if not self._send_lock.locked():
                await self._flush()

    def _more(self, data: bytes, max_bytes: int) -> bytes:
        """One record per ``recv``: gather what is already decryptable, up to ``max_bytes``."""
        chunks = [data]
        total = len(data)
        while total < max_bytes:
            try:
                more = self._conn.recv(max_bytes - total)
            except SSL.Error:  # WantRead, close_notify, or an error: the next receive says
                break
            chunks.append(more)
            total += len(more)
        return data if len(chunks) == 1 else b"".join(chunks)

    async def send(self, item: bytes) -> None:
        if self._state != "tls":
            await self._ensure_handshake()
            if self._state == "plain":
                await self.transport.send(item)
                return
        view = memoryview(item)
        for start in range(0, len(view), WRITE_CHUNK):
            try:
                self._conn.sendall(view[start : start + WRITE_CHUNK])
            except SSL.Error as exc:
                self._state = "broken"
                raise anyio.BrokenResourceError(f"TLS error: {_describe(exc)}") from None
            await self._flush()

    async def send_eof(self) -> None:
        """TLS 1.3 closes one direction with close_notify (RFC 8446 §6.1); TLS 1.2 cannot."""
        if self._state == "plain":
            await self.transport.send_eof()
            return
        if self._state != "tls" or self._conn.get_protocol_version_name() != "TLSv1.3":
            raise NotImplementedError("half-close needs TLS 1.3")
        self._conn.shutdown()
        await self._flush()

    async def aclose(self) -> None:
        try:
            if self._state == "tls":
                try:
                    self._conn.shutdown()  # close_notify, best effort: nothing waits for a reply
                except SSL.Error:
                    pass
                with anyio.move_on_after(LAST_WORDS_TIMEOUT):
                    await self._flush()
        finally:
            self._state = "broken"
            await self.transport.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        fingerprint = self._fingerprint
        if fingerprint is None:
            return self.transport.extra_attributes
        return {
            **self.transport.extra_attributes,
            TunnelTLSAttribute.client_key_sha256: lambda: fingerprint,
        }


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every address)


def plaintext_token_warning(config: RouterConfig) -> str | None:
    """Why tokens would cross the network in clear text with this config, or None: on the
    tunnel port (unless ``none``), and on the front end when it takes tunnels."""
    if config.token is None and config.tokens is None:
        return None
    if config.tunnel.strip().lower() != "none" and config.tunnel_tls_cert is None:
        host, _ = parse_address(config.tunnel, allow_port_zero=True)
        if not _loopback(host):
            return (
                f"tokens would travel in plain text: the tunnel port {config.tunnel} is not "
                "loopback and has no TLS (give --tunnel-tls-cert and --tunnel-tls-key; "
                "backends then dial tls://HOST:PORT)"
            )
    if config.front_end_tunnels and config.tls_cert is None:
        host, _ = parse_address(config.http, allow_port_zero=True)
        if not _loopback(host):
            return (
                f"tokens would travel in plain text: the front end {config.http} takes tunnels "
                "and has no TLS (give --tls-cert and --tls-key, backends then dial wss:// or "
                "https://; or --no-front-end-tunnels)"
            )
    return None
