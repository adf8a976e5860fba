"""The tunnel port: handshake each backend connection, then run it as an HTTP/2 client tunnel.

A connection that sends garbage, nothing (handshake deadline), or an oversized head is answered
(when possible) and closed; nothing it does reaches the rest of the router.
"""

from __future__ import annotations

import hmac
import logging
import secrets

import anyio
import anyio.abc

from ptth.driver import Connection
from ptth.engine import Liveness, Settings
from ptth.errors import HandshakeError, HandshakeRefused, PTTHError
from ptth.proto.handshake import Registration, ServerHandshake

from .config import RouterConfig
from .outlier import OutlierDetector, OutlierPolicy
from .registry import Registry, RouterTunnel

__all__ = ["TunnelListener"]

log = logging.getLogger("router.tunnel")

SETTINGS_TIMEOUT = 10.0
PEER_CLOSE_GRACE = 1.0


def token_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison (ARCHITECTURE.md, attack 20); no token configured: all pass."""
    if expected is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def _peer(stream: anyio.abc.ByteStream) -> str:
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except (OSError, anyio.TypedAttributeLookupError):
        return "?"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


class TunnelListener:
    def __init__(self, config: RouterConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.draining = False
        self.connections: set[Connection] = set()
        self._pending = 0

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        """One accepted socket (the tunnel port listener's handler)."""
        peer = _peer(stream)
        if self._pending >= self.config.max_pending_handshakes:
            log.warning("tunnel port: too many pending handshakes; dropping %s", peer)
            await anyio.aclose_forcefully(stream)
            return
        self._pending += 1
        try:
            result = await self._handshake(stream, peer)
        finally:
            self._pending -= 1
        if result is None:
            return
        registration, trailing, tunnel_id = result
        await self._run_tunnel(stream, peer, registration, trailing, tunnel_id)

    async def _handshake(
        self, stream: anyio.abc.ByteStream, peer: str
    ) -> tuple[Registration, bytes, str] | None:
        handshake = ServerHandshake()
        try:
            with anyio.fail_after(self.config.handshake_timeout):
                registration = None
                while registration is None:
                    try:
                        data = await stream.receive(16384)
                    except anyio.EndOfStream:
                        data = b""  # the parser reports the close
                    registration = handshake.receive(data)
                self._authorize(registration)
                tunnel_id = secrets.token_hex(6)
                await stream.send(
                    handshake.accept(
                        tunnel_id,
                        registration.hosts,
                        max_streams=self.config.max_streams_per_tunnel,
                    )
                )
            return registration, handshake.trailing, tunnel_id
        except HandshakeRefused as exc:
            log.info("tunnel port: refused %s: %s %s", peer, exc.status, exc.reason)
            retry_after = 5 if exc.status == 503 else None
            await self._refuse(
                stream, handshake.refuse(exc.status, exc.reason, retry_after=retry_after)
            )
        except HandshakeError as exc:
            log.info("tunnel port: bad handshake from %s: %s", peer, exc)
            await self._refuse(stream, handshake.refuse(exc.status, str(exc)))
        except TimeoutError:
            log.info(
                "tunnel port: %s sent no complete handshake in %.0f s",
                peer,
                self.config.handshake_timeout,
            )
            await anyio.aclose_forcefully(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            log.info("tunnel port: %s went away during the handshake: %r", peer, exc)
            await anyio.aclose_forcefully(stream)
        return None

    def _authorize(self, registration: Registration) -> None:
        if self.draining:
            raise HandshakeRefused(503, "router is draining; retry later")
        if not token_matches(self.config.token, registration.token):
            raise HandshakeRefused(401, "missing or invalid bearer token")
        if len(self.registry.tunnels()) >= self.config.max_tunnels:
            raise HandshakeRefused(503, "router has reached its tunnel limit")
        self.registry.check(registration)

    async def _refuse(self, stream: anyio.abc.ByteStream, response: bytes) -> None:
        with anyio.move_on_after(2):
            try:
                await stream.send(response)
                await stream.send_eof()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
        await anyio.aclose_forcefully(stream)

    async def _run_tunnel(
        self,
        stream: anyio.abc.ByteStream,
        peer: str,
        registration: Registration,
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
                    log.warning("tunnel %s: no SETTINGS from %s; closing", tunnel_id, peer)
                    await connection.aclose()
                    return
                try:
                    self.registry.add(tunnel)
                except PTTHError as exc:  # lost a race for a claim since the handshake
                    log.warning("tunnel %s: %s", tunnel_id, exc)
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
                    )
                log.info(
                    "tunnel %s: registered service=%s hosts=%s prefix=%s weight=%g "
                    "instance=%s peer=%s max_streams=%d",
                    tunnel_id,
                    registration.service,
                    ",".join(registration.hosts) or "-",
                    registration.path_prefix or "-",
                    registration.weight,
                    registration.instance or "-",
                    peer,
                    tunnel.max_streams,
                )
                nursery.start_soon(self._watch_drain, tunnel)
                await connection.wait_closed()
                nursery.cancel_scope.cancel()
        finally:
            self.registry.remove(tunnel)
            self.connections.discard(connection)
            log.info(
                "tunnel %s: lost (%s); served %d",
                tunnel_id,
                connection.close_reason,
                tunnel.served,
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
        log.info("tunnel %s: draining (no new requests)", tunnel.tunnel_id)
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
            )
        else:
            log.info(
                "tunnel %s: the backend drained but kept the connection open; closing it",
                tunnel.tunnel_id,
            )
        await connection.drain(0)

    async def drain(self) -> None:
        """Router shutdown: refuse new tunnels, GOAWAY every tunnel, wait, close."""
        self.draining = True
        async with anyio.create_task_group() as nursery:
            for connection in list(self.connections):
                nursery.start_soon(connection.drain, self.config.drain_timeout)
