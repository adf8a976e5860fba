"""The tunnel port: handshake each backend connection, then run it as an HTTP/2 client tunnel.

A connection that sends garbage (400), nothing (408 at the handshake deadline), or an oversized
head (431) is answered and closed; nothing it does reaches the rest of the router. Admission
(ARCHITECTURE.md, "Admission on the tunnel port") caps connections still in their handshake,
router-wide and per client address (503 + Retry-After at once), and throttles failed
authentications per address (429 + Retry-After), so no stranger can lock backends out.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import anyio
import anyio.abc

from ptth.driver import Connection
from ptth.engine import Liveness, Settings
from ptth.errors import HandshakeError, HandshakeRefused, PTTHError
from ptth.logs import tunnel_fields
from ptth.proto.handshake import WELL_KNOWN_PATH, Registration, ServerHandshake

from . import worker_process
from .config import RouterConfig
from .identity import Authorizer, Identity, reserved_hosts
from .outlier import OutlierDetector, OutlierPolicy
from .registry import Registry, RouterTunnel
from .replay_stream import ReplayStream
from .tokens import TokenBook, load_tokens
from .tunnel_admission import EVICTED, TunnelAdmission
from .tunnel_tls import TunnelTLS, TunnelTLSAttribute, TunnelTLSStream

__all__ = ["TunnelListener"]

log = logging.getLogger("router.tunnel")
# Failed authentications, throttling and full admission caps: what an operator watches for.
security = logging.getLogger("router.security")

SETTINGS_TIMEOUT = 10.0
# A refusal is a few hundred bytes: a peer that does not take them in this long is dropped.
REFUSAL_WRITE_TIMEOUT = 2.0
# After a refusal, how long (and how much) we read what the peer still sends before closing;
# closing with unread bytes would reset the connection and could destroy the refusal unread.
REFUSAL_LINGER = 1.0
REFUSAL_LINGER_BYTES = 64 * 1024
# Refusals at a full admission cap are logged at most this often (an attack makes thousands).
CAP_LOG_INTERVAL = 10.0
# After a failed accept (EMFILE and the like: an attack can use up the descriptors), the accept
# loop waits this long before trying again.
ACCEPT_RETRY = 0.1
# Seconds a drained backend has, after its last stream, to close the connection itself.
PEER_CLOSE_GRACE = 1.0


def _fields(tunnel: RouterTunnel, event: str | None = None) -> dict[str, object]:
    """The structured fields of a line about ``tunnel`` (ptth/logs.py)."""
    registration = tunnel.registration
    return tunnel_fields(tunnel.tunnel_id, registration.instance, registration.service, event)


def _remote(stream: anyio.abc.ByteStream) -> tuple[str, str]:
    """The client's address without the port (what admission counts) and with it (for logs)."""
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except (OSError, anyio.TypedAttributeLookupError):
        return "?", "?"
    if isinstance(address, tuple):
        return str(address[0]), f"{address[0]}:{address[1]}"
    return str(address), str(address)


@functools.cache
def _constant_refusal(status: int, reason: str, retry_after: float | None) -> bytes:
    """The refusals an attack makes by the thousand, built once (h11 is not free)."""
    return ServerHandshake().refuse(status, reason, retry_after=retry_after)


class TunnelListener:
    def __init__(self, config: RouterConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.draining = False
        self.connections: set[Connection] = set()
        self.admission = TunnelAdmission(
            max_pending=config.max_pending_handshakes,
            max_pending_per_address=config.max_pending_per_address,
            auth_failure_rate=config.auth_failure_rate,
            auth_failure_burst=config.auth_failure_burst,
            retry_after=max(1.0, config.handshake_timeout),
        )
        self.tls = TunnelTLS.from_config(config)  # ConfigError if the files do not load
        self.tokens: TokenBook | None = load_tokens(config.tokens) if config.tokens else None
        self.authorizer = self._authorizer()
        self._revoked: dict[str, anyio.Event] = {}
        self._cap_refusals = 0
        # Refusals sent, by status (the admin listener's ptth_handshake_refusals_total).
        self.refusals: Counter[int] = Counter()
        self._cap_logged_at = -math.inf
        # Pending handshakes by admission ticket, so that an evicted one can be stopped.
        self._pending_scopes: dict[int, anyio.CancelScope] = {}

    async def serve(self, listeners: Sequence[anyio.abc.SocketListener]) -> None:
        """The tunnel port's accept loops, one per listening socket (ARCHITECTURE.md,
        "Admission on the tunnel port"); each connection is a task of its own."""
        async with anyio.create_task_group() as connections:
            for listener in listeners:
                connections.start_soon(self._accept, listener, connections)

    async def _accept(
        self, listener: anyio.abc.SocketListener, connections: anyio.abc.TaskGroup
    ) -> None:
        """Accept until cancelled. A failed accept (EMFILE and the like, which a flood of
        connections can cause) waits and retries: anyio's ``serve`` would end the tunnel port,
        and the router with it."""
        logged_at = -math.inf
        while True:
            try:
                stream = await listener.accept()
            except (OSError, anyio.BrokenResourceError) as exc:
                now = anyio.current_time()
                if now - logged_at >= CAP_LOG_INTERVAL:
                    logged_at = now
                    reason = exc.__cause__ if exc.__cause__ is not None else exc
                    log.warning("tunnel port: accept failed (%s); retrying every 0.1 s", reason)
                await anyio.sleep(ACCEPT_RETRY)
                continue
            connections.start_soon(self.handle, stream)

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        """One accepted socket (the tunnel port listener's handler; each runs in its own task).

        The socket is closed on every way out, cancellation included (router shutdown).
        """
        if self.tls is not None:  # TLS handshake in _handshake, within its deadline
            stream = self.tls.wrap(stream)
        address, peer = _remote(stream)
        try:
            await self._admit(stream, address, peer, WELL_KNOWN_PATH)
        except Exception:  # a bug must cost one connection, never the tunnel port's listener
            log.exception("tunnel port: unexpected error on a connection from %s", peer)
        finally:
            await anyio.aclose_forcefully(stream)

    async def accept_stream(
        self,
        stream: anyio.abc.ByteStream,
        *,
        initial: bytes = b"",
        client: str,
        transport: str,
        path: bytes = WELL_KNOWN_PATH,
    ) -> None:
        """Run a tunnel that arrived some other way than the tunnel port (ARCHITECTURE.md,
        "Transports"): a plain handshake on the front end, a WebSocket, an httpsock session.

        ``stream`` carries the backend's bytes from its first handshake byte on; ``initial`` is
        what was already read from it (given back first, before reading ``stream``). ``client``
        is the backend's IP address as the front end saw it (no port; admission caps, the
        authentication throttle and logs count by it), ``transport`` a short name for logs
        (``"front-end"``, ``"ws"``, ``"httpsock"``), ``path`` the request target the handshake
        must name. Everything the tunnel port does applies: admission, the handshake deadline,
        authentication and its throttle, tunnel limits, the drain. Returns when the tunnel has
        ended; ``stream`` is closed on every way out, cancellation included. Never raises but
        for cancellation: an error costs this tunnel only.
        """
        if initial:
            stream = ReplayStream(stream, initial)
        peer = f"{client} ({transport})"
        try:
            await self._admit(stream, client, peer, path)
        except Exception:
            log.exception("tunnel (%s): unexpected error on a connection from %s", transport, peer)
        finally:
            await anyio.aclose_forcefully(stream)

    async def _admit(
        self, stream: anyio.abc.ByteStream, address: str, peer: str, path: bytes
    ) -> None:
        admitted = self.admission.enter(address)
        if isinstance(admitted, HandshakeRefused):
            # Answered at once, head unread: a full cap costs the router one short write, and
            # the helper gets a status and a Retry-After to act on instead of a bare close.
            self._log_cap_refusal(peer, admitted.reason)
            response = _constant_refusal(admitted.status, admitted.reason, admitted.retry_after)
            await self._refuse(stream, response)
            return
        if admitted.evicted is not None:  # the router-wide cap: the oldest pending one goes
            victim = self._pending_scopes.pop(admitted.evicted, None)
            if victim is not None:
                victim.cancel()
        ticket = admitted.ticket
        try:
            with anyio.CancelScope() as scope:
                self._pending_scopes[ticket] = scope
                result = await self._handshake(stream, address, peer, path)
        finally:
            self._pending_scopes.pop(ticket, None)
            self.admission.leave(ticket)  # a refusal being written holds no pending slot
        if scope.cancelled_caught:
            self._log_cap_refusal(peer, EVICTED)
            result = _constant_refusal(503, EVICTED, self.admission.retry_after)
        if isinstance(result, bytes):
            await self._refuse(stream, result)
            return
        if result is None:
            return
        registration, identity, trailing, tunnel_id = result
        await self._run_tunnel(stream, peer, registration, identity, trailing, tunnel_id)

    async def _handshake(
        self, stream: anyio.abc.ByteStream, address: str, peer: str, path: bytes
    ) -> tuple[Registration, Identity, bytes, str] | bytes | None:
        """The registration (with bytes past the head and the tunnel id) once the 101 is sent;
        else the refusal to send (bytes), or None when the peer is already gone."""
        handshake = ServerHandshake(path=path, worker=worker_process.worker_info())
        try:
            with anyio.fail_after(self.config.handshake_timeout):
                if isinstance(stream, TunnelTLSStream):
                    await stream.handshake()  # HandshakeError: 426 to plain text, else closed
                registration = None
                while registration is None:
                    try:
                        data = await stream.receive(16384)
                    except anyio.EndOfStream:
                        data = b""  # the parser reports the close
                    registration = handshake.receive(data)
                with self._auth_throttle(peer, address):
                    registration, identity = self._authorize(registration, stream, peer)
                tunnel_id = secrets.token_hex(6)
                await stream.send(
                    handshake.accept(
                        tunnel_id,
                        registration.hosts,
                        max_streams=self.config.max_streams_per_tunnel,
                    )
                )
            return registration, identity, handshake.trailing, tunnel_id
        except HandshakeRefused as exc:
            # A throttled address's 429s are counted by the throttle's own line, not each logged;
            # a 421 is a helper looking for another worker (ARCHITECTURE.md, "Several cores").
            log.log(
                logging.DEBUG if exc.status in (421, 429) else logging.INFO,
                "tunnel port: refused %s: %s %s",
                peer,
                exc.status,
                exc.reason,
            )
            retry_after = exc.retry_after
            if retry_after is None and exc.status == 503:
                retry_after = 5
            return handshake.refuse(exc.status, exc.reason, retry_after=retry_after)
        except HandshakeError as exc:
            log.info("tunnel port: bad handshake from %s: %s", peer, exc)
            return handshake.refuse(exc.status, str(exc))
        except TimeoutError:
            timeout = self.config.handshake_timeout
            log.info("tunnel port: %s sent no complete handshake in %g s; 408", peer, timeout)
            return handshake.refuse(408, f"no complete handshake within {timeout:g} s")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            log.info("tunnel port: %s went away during the handshake: %r", peer, exc)
            await anyio.aclose_forcefully(stream)
        return None

    def _authorize(
        self, registration: Registration, stream: anyio.abc.ByteStream, peer: str
    ) -> tuple[Registration, Identity]:
        """Who the backend is and whether it may claim what it asks (ARCHITECTURE.md,
        "Identities and claims"): 401, 403, 409 or 503; the registration as granted."""
        if self.draining:
            raise HandshakeRefused(503, "router is draining; retry later")
        fingerprint = stream.extra(TunnelTLSAttribute.client_key_sha256, None)
        identity = self.authorizer.identify(registration.token, fingerprint)
        try:
            granted = self.authorizer.authorize(identity, registration)
        except HandshakeRefused as exc:
            if exc.status == 403:
                security.warning(
                    "tunnel port: %s (identity %s) refused: %s", peer, identity.owner, exc.reason
                )
            raise
        if len(self.registry.tunnels()) >= self.config.max_tunnels:
            raise HandshakeRefused(503, "router has reached its tunnel limit")
        try:
            self.registry.check(granted, identity.owner)
        except HandshakeRefused as exc:
            if exc.status == 409:
                security.warning(
                    "tunnel port: %s (identity %s, service %s) refused: %s",
                    peer,
                    identity.owner,
                    granted.service,
                    exc.reason,
                )
            raise
        return granted, identity

    def _authorizer(self) -> Authorizer:
        cfg = self.config
        listening = [cfg.http] + ([cfg.tunnel] if cfg.tunnel.strip().lower() != "none" else [])
        reserved = reserved_hosts(listening, cfg.reserved_hosts, cfg.domain)
        authorizer = Authorizer(
            token=cfg.token, tokens=self.tokens, domain=cfg.domain, reserved=reserved
        )
        owned = self.tokens.owned_hosts() if self.tokens is not None else {}
        self.registry.routing.set_owned({h: f"token:{name}" for h, name in owned.items()})
        return authorizer

    def reload_tokens(self) -> None:
        """SIGHUP: read the tokens file again. Tunnels whose identity is gone, whose token
        changed, or whose claims the new file no longer allows are drained and closed; every
        other tunnel stays. A file that does not load is logged and the old one kept."""
        if self.config.tokens is None:
            return
        try:
            self.tokens = load_tokens(self.config.tokens)
        except PTTHError as exc:
            log.error("tokens file not reloaded (keeping the previous one): %s", exc)
            return
        self.authorizer = self._authorizer()
        kept = 0
        for tunnel in self.registry.tunnels():
            reason = self._still_allowed(tunnel)
            if reason is None:
                kept += 1
                continue
            security.warning(
                "tunnel %s (identity %s, instance %s): revoked by the new tokens file (%s); "
                "draining it",
                tunnel.tunnel_id,
                tunnel.identity.owner,
                tunnel.registration.instance or "-",
                reason,
                extra=_fields(tunnel, "revoked"),
            )
            self.registry.remove(tunnel, keep_claims=False)
            event = self._revoked.get(tunnel.tunnel_id)
            if event is not None:
                event.set()
        log.info("tokens file reloaded: %d identities; %d tunnels kept", len(self.tokens), kept)

    def _still_allowed(self, tunnel: RouterTunnel) -> str | None:
        """Why the new tokens file refuses this live tunnel, or None if it may stay."""
        fingerprint = tunnel.identity.fingerprint
        try:
            identity = self.authorizer.identify(tunnel.registration.token, fingerprint)
            self.authorizer.authorize(identity, tunnel.registration)
        except HandshakeRefused as exc:
            return exc.reason
        if identity.owner != tunnel.identity.owner:
            return f"now identity {identity.owner}"
        for host in tunnel.registration.hosts:
            owner = self.tokens.owned_hosts().get(host) if self.tokens is not None else None
            if owner is not None and f"token:{owner}" != identity.owner:
                return f"host {host} now belongs to identity token:{owner}"
        return None

    @contextmanager
    def _auth_throttle(self, peer: str, address: str) -> Iterator[None]:
        """Around ``_authorize``: 429 for an address out of attempts before its token is even
        looked at; each 401 spends one of its attempts (ARCHITECTURE.md, "Admission on the
        tunnel port"). Failures are logged on ``router.security``, never with the token."""
        now = anyio.current_time()
        throttled = self.admission.throttled(address, now)
        if throttled is not None:
            raise throttled
        try:
            yield
        except HandshakeRefused as exc:
            if exc.status == 401:  # 403 and 409 are logged by _authorize, with the identity
                security.warning(
                    "tunnel port: failed authentication from %s: %d %s",
                    peer,
                    exc.status,
                    exc.reason,
                )
                throttled_for = self.admission.failed(address, now)
                if throttled_for is not None:
                    security.warning(
                        "tunnel port: %s throttled after repeated failed authentications: "
                        "its handshakes get 429 for %.0f s (then %g attempts per second)",
                        address,
                        throttled_for,
                        self.config.auth_failure_rate,
                    )
            raise

    def _log_cap_refusal(self, peer: str, reason: str) -> None:
        """One line per CAP_LOG_INTERVAL however many connections a full cap turns away."""
        self._cap_refusals += 1
        now = anyio.current_time()
        if now - self._cap_logged_at < CAP_LOG_INTERVAL:
            return
        security.warning(
            "tunnel port: 503 to %s: %s (%d such refusal(s) since the last line; %d handshakes "
            "pending)",
            peer,
            reason,
            self._cap_refusals,
            self.admission.pending,
        )
        self._cap_refusals = 0
        self._cap_logged_at = now

    async def _refuse(self, stream: anyio.abc.ByteStream, response: bytes) -> None:
        """Send a refusal and close, bounded in time whatever the peer does.

        After the response we half-close and read (and drop) what the peer still sends until it
        closes too: closing with unread bytes makes the kernel send a RST, which can destroy
        the refusal before the peer has read it (RFC 9112, section 9.6, on closing).
        """
        self.refusals[int(response[9:12])] += 1  # "HTTP/1.1 NNN ..."
        with anyio.move_on_after(REFUSAL_WRITE_TIMEOUT + REFUSAL_LINGER):
            try:
                with anyio.fail_after(REFUSAL_WRITE_TIMEOUT):
                    await stream.send(response)
                with anyio.move_on_after(REFUSAL_LINGER):
                    try:
                        await stream.send_eof()
                    except NotImplementedError:  # TLS before 1.3 cannot half-close
                        pass
                    drained = 0
                    while drained < REFUSAL_LINGER_BYTES:
                        drained += len(await stream.receive(16384))
            except (
                TimeoutError,
                HandshakeError,  # a TLS handshake that failed on the way to the refusal
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                pass
        await anyio.aclose_forcefully(stream)

    async def _run_tunnel(
        self,
        stream: anyio.abc.ByteStream,
        peer: str,
        registration: Registration,
        identity: Identity,
        trailing: bytes,
        tunnel_id: str,
    ) -> None:
        cfg = self.config
        connection = Connection(
            stream,
            client_side=True,
            tunnel_id=tunnel_id,
            settings=Settings(),
            liveness=Liveness(interval=cfg.ping_interval, dead_after=cfg.dead_after),
            initial_data=trailing,
        )
        tunnel = RouterTunnel(
            tunnel_id=tunnel_id,
            registration=registration,
            connection=connection,
            peer=peer,
            stream_cap=cfg.max_streams_per_tunnel,
            identity=identity,
            health=OutlierDetector(
                OutlierPolicy(cfg.outlier_failures, cfg.outlier_ejection, cfg.outlier_max_ejection)
            ),
        )
        self.connections.add(connection)
        try:
            async with anyio.create_task_group() as nursery:
                await nursery.start(connection.run)
                # The backend's SETTINGS carry its stream limit: register only once they came.
                with anyio.move_on_after(SETTINGS_TIMEOUT) as scope:
                    await connection.wait_remote_settings()
                if scope.cancelled_caught or connection.closed:
                    log.warning(
                        "tunnel %s: no SETTINGS from %s; closing",
                        tunnel_id,
                        peer,
                        extra=tunnel_fields(tunnel_id, registration.instance),
                    )
                    await connection.aclose()
                    return
                # Before the tunnel is routable, so a reload right after cannot miss it.
                revoked = self._revoked[tunnel_id] = anyio.Event()
                try:
                    self.registry.add(tunnel)
                except PTTHError as exc:  # lost a race for a claim since the handshake
                    log.warning(
                        "tunnel %s: %s",
                        tunnel_id,
                        exc,
                        extra=tunnel_fields(tunnel_id, registration.instance),
                    )
                    await connection.aclose()
                    return
                offered = connection.peer_max_concurrent_streams
                if offered > tunnel.stream_cap:
                    log.info(
                        "tunnel %s: backend allows %d concurrent streams; capped at the router's "
                        "--max-streams-per-tunnel %d",
                        tunnel_id,
                        offered,
                        tunnel.stream_cap,
                        extra=_fields(tunnel),
                    )
                log.info(
                    "tunnel %s: registered service=%s hosts=%s prefix=%s weight=%g "
                    "instance=%s identity=%s peer=%s max_streams=%d",
                    tunnel_id,
                    registration.service,
                    ",".join(registration.hosts) or "-",
                    registration.path_prefix or "-",
                    registration.weight,
                    registration.instance or "-",
                    identity.owner,
                    peer,
                    tunnel.max_streams,
                    extra=_fields(tunnel, "registered"),
                )
                nursery.start_soon(self._watch_drain, tunnel)
                nursery.start_soon(self._watch_revocation, tunnel, revoked)
                await connection.wait_closed()
                nursery.cancel_scope.cancel()
        finally:
            self.registry.remove(tunnel)
            self._revoked.pop(tunnel_id, None)
            self.connections.discard(connection)
            log.info(
                "tunnel %s: lost (%s); served %d; instance=%s",
                tunnel_id,
                connection.close_reason,
                tunnel.served,
                registration.instance or "-",
                extra=_fields(tunnel, "closed"),
            )

    async def _watch_drain(self, tunnel: RouterTunnel) -> None:
        """Stop routing to a tunnel as soon as its backend announces a drain (GOAWAY NO_ERROR),
        then see the connection end: a backend that drains but keeps its socket open is closed
        once its streams are done, or after the drain timeout (ARCHITECTURE.md, "Passive
        health"); otherwise it would hold a connection, and its claim, forever."""
        connection = tunnel.connection
        while not connection.draining:
            await connection.wait_streams_changed()
        if connection.closed:
            return  # lost, or a GOAWAY with an error: _run_tunnel logs why
        log.info(
            "tunnel %s: draining (no new requests); instance=%s",
            tunnel.tunnel_id,
            tunnel.registration.instance or "-",
            extra=_fields(tunnel, "draining"),
        )
        self.registry.remove(tunnel)
        if self.draining:
            return  # the router's own GOAWAY: drain() closes the connection
        timeout = self.config.drain_timeout
        with anyio.move_on_after(timeout):
            await connection.wait_idle()
            # A backend that drains properly closes right after its last stream (ptth's helper
            # does, RFC 9113 §6.8): give it that moment before closing from this side.
            with anyio.move_on_after(PEER_CLOSE_GRACE):
                while not connection.closed:
                    await connection.wait_streams_changed()
        if connection.closed:
            return
        if connection.open_streams:
            log.warning(
                "tunnel %s: %d stream(s) still open %g s after the backend's GOAWAY; closing "
                "the connection (drain timeout)",
                tunnel.tunnel_id,
                connection.open_streams,
                timeout,
                extra=_fields(tunnel),
            )
        else:
            log.info(
                "tunnel %s: the backend drained but kept the connection open; closing it",
                tunnel.tunnel_id,
                extra=_fields(tunnel),
            )
        await connection.drain(0)

    async def _watch_revocation(self, tunnel: RouterTunnel, event: anyio.Event) -> None:
        """A tunnel revoked by a tokens reload finishes its streams (up to the drain timeout),
        then its connection is closed."""
        await event.wait()
        await tunnel.connection.drain(self.config.drain_timeout)

    async def drain(self) -> None:
        """Router shutdown: refuse new tunnels, GOAWAY every tunnel, wait, close."""
        self.draining = True
        async with anyio.create_task_group() as nursery:
            for connection in list(self.connections):
                nursery.start_soon(connection.drain, self.config.drain_timeout)
