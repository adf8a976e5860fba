"""``serve``: keep tunnels open to one or more routers and serve an ASGI app through them.

Each (router, connection slot) pair has a connector task: dial, handshake, serve HTTP/2 until
the tunnel drops, back off with full jitter (never sooner than a refusal's Retry-After), dial
again. Refusals that retrying cannot fix (400/401/403) end ``serve`` with
:class:`HandshakeRefused`; a 409 is retried, since another identity's claim may expire. At most
``HANDSHAKES_PER_ROUTER`` handshakes run at once per router, so thousands of tunnels open in
waves below the router's per-address cap on pending handshakes. Cancelling ``serve`` drains:
GOAWAY on every tunnel, in-flight requests finish (up to ``drain_timeout``), then lifespan shutdown.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from ._asgi_http import serve_http
from ._asgi_ws import serve_websocket
from ._backoff import Backoff
from ._dial import ClientTLS, client_tls, dial, plaintext_token_warning
from ._lifespan import Lifespan
from ._scaling import ScalePolicy
from ._targets import Target, expands, resolve, watch
from ._workers import WorkerBook, describe_worker
from .driver import Connection, Stream, StreamHandler
from .engine import Liveness, Settings
from .errors import (
    ConfigError,
    ForwardProxyError,
    HandshakeError,
    HandshakeRefused,
    HeaderError,
    PTTHError,
)
from .groups import unwrap
from .identity import certificate_fingerprint, load_or_create
from .logs import drain_summary, tunnel_fields
from .metrics import HelperMetrics, TunnelView, failure_reason, serve_metrics
from .proto.address import RouterAddress, format_address, parse_address, parse_router_address
from .proto.connect import ProxyURL, proxy_for
from .proto.handshake import ClientHandshake, Registration, WorkerInfo
from .proto.headers import parse_request_block
from .proto.hostnames import normalize_claim
from .proto.keyid import key_label
from .types import ASGIApp

__all__ = ["BackendOptions", "parse_address", "resolve_arguments", "run_backend", "serve"]

log = logging.getLogger("ptth.backend")

HANDSHAKE_TIMEOUT = 10.0
# Handshakes in flight to one router at a time: well under the router's default cap on pending
# handshakes per client address (16, ARCHITECTURE.md "Admission on the tunnel port").
HANDSHAKES_PER_ROUTER = 8
# What a backend should do about a refusal it will not retry (the log line says it).
_FATAL_HINTS = {
    400: "fix the registration (service, hosts, path prefix)",
    401: "check --token",
    403: "check that the token may claim this service and these hosts",
}


def _describe_failure(router: str, exc: BaseException) -> str:
    """One readable clause naming the router and what went wrong (no advice; callers add it)."""
    if isinstance(exc, HandshakeRefused):
        return f"router {router} refused the tunnel: {exc.status} {exc.reason}"
    if isinstance(exc, anyio.BrokenResourceError | ConnectionResetError):
        return f"router {router} reset the connection"
    if isinstance(exc, anyio.EndOfStream):
        return f"router {router} closed the connection"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, HandshakeError) and text.startswith("router "):
        return f"router {router} {text.removeprefix('router ')}"
    if isinstance(exc, TimeoutError):
        return f"router {router} did not accept the connection in time"
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        return f"router {router}: cannot connect: {text}"
    return f"router {router}: {text}"


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class BackendOptions:
    service: str = "default"
    hosts: tuple[str, ...] = ()
    path_prefix: str | None = None
    token: str | None = None
    connections: int = 1
    max_concurrent_streams: int = 1000
    # Tunnels at most per router, extras opened on demand included (0: four times `connections`).
    max_connections: int = 0
    extra_idle_timeout: float = 30.0
    weight: float = 1.0
    instance: str = field(default_factory=_default_instance)
    drain_timeout: float = 30.0
    liveness: Liveness = field(default_factory=Liveness)
    backoff_base: float = 0.1
    backoff_cap: float = 30.0
    backoff_reset_after: float = 30.0
    # The ASGI root_path (as uvicorn's --root-path): for an app whose prefix a proxy in front
    # of the router already removed. The router's X-Forwarded-Prefix is appended to it.
    root_path: str = ""
    # Ask the router to cut the matched path_prefix from request paths (Ptth-Strip-Prefix).
    strip_prefix: bool = False
    # tls:// routers: whom to trust (default: the system trust store), or a whole context.
    ca_file: str | os.PathLike[str] | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    # The client certificate to present on tls:// (ptth.identity): True for the key identity in
    # the default directory (made on first use), a path for another directory; or own files.
    identity: bool | str | os.PathLike[str] = False
    client_cert: str | os.PathLike[str] | None = None
    client_key: str | os.PathLike[str] | None = None
    # The HTTP forward proxy to CONNECT through (http://[user:password@]host:port); None: the
    # environment's HTTPS_PROXY / HTTP_PROXY / NO_PROXY; "" or "none": never a proxy.
    proxy: str | None = field(default=None, repr=False)
    # A router name that resolves to several addresses: each is dialled as a router, and the
    # name is looked up again this often (and after a failed dial, at most once a second).
    resolve_interval: float = 30.0
    # HOST:PORT for this helper's own Prometheus metrics (ptth.metrics); None: not served.
    metrics: str | None = None


class _Backend:
    def __init__(
        self,
        app: ASGIApp | None,
        routers: Sequence[RouterAddress],
        options: BackendOptions,
        *,
        handler: StreamHandler | None = None,
    ) -> None:
        """Serve ``app`` (ASGI, with lifespan), or hand each stream to ``handler`` (agent mode)."""
        if (app is None) == (handler is None):
            raise ConfigError("give exactly one of an ASGI app or a stream handler")
        self.app = app
        self.handler = handler
        if len({(r.host, r.port) for r in routers}) != len(routers):
            raise ConfigError("each router address may be given once (one scheme per port)")
        self.routers = list(routers)
        self.options = options
        self.tls = _client_tls(options, routers)
        self.proxies: dict[RouterAddress, ProxyURL | None] = {
            router: proxy_for(router, options.proxy, os.environ) for router in routers
        }
        for router, proxy in self.proxies.items():
            if proxy is not None:
                log.info("router %s: through proxy %s (HTTP CONNECT)", router, proxy)
        self.registration = Registration(
            service=options.service,
            hosts=_canonical_hosts(options.hosts),
            path_prefix=options.path_prefix,
            weight=options.weight,
            instance=options.instance,
            token=options.token,
            strip_prefix=options.strip_prefix,
        )
        try:
            self.registration.validate()
        except HandshakeError as exc:
            raise ConfigError(str(exc)) from None
        self.tunnels: set[Connection] = set()
        self.draining = False
        self.serving = [0, 0]  # requests, WebSockets in their handlers now (the drain's log line)
        self.rng = random.Random()
        self.connected = anyio.Event()
        self.scaling = ScalePolicy(
            base=options.connections,
            maximum=max(options.max_connections or 4 * options.connections, options.connections),
            idle_after=options.extra_idle_timeout,
        )
        # Live tunnels per target (router, or one address of a router name), with their
        # capacities; extras still dialling.
        self._by_router: dict[Target, dict[Connection, int]] = {}
        self.metrics = (
            HelperMetrics(self._tunnel_views, options.instance) if options.metrics else None
        )
        self.metrics_address: tuple[str, int] | None = None  # bound, once serving
        self._dialling: dict[Target, int] = {}
        self._handshake_slots: dict[Target, anyio.Semaphore] = {}
        self._connectors: anyio.abc.TaskGroup | None = None
        # Set when a target's address vanished from DNS: its connectors stop, tunnels drain.
        self._retired: dict[Target, anyio.Event] = {}
        # Set by a failed dial to an address of a name: look the name up again now.
        self._resolve_now: dict[RouterAddress, anyio.Event] = {}
        # Slots per router worker (ARCHITECTURE.md, "Several cores"; ptth/_workers.py).
        self.workers = WorkerBook(options.connections)

    def _maybe_scale(self, target: Target, worker: WorkerInfo | None = None) -> None:
        """A stream started on a tunnel to ``target``: open an extra tunnel if all are full
        (all of that router worker's: each worker routes over its own; ptth/_workers.py)."""
        group = self._by_router.get(target, {})
        loads = [
            (tunnel.open_streams, capacity)
            for tunnel, capacity in group.items()
            if self.workers.worker_of(tunnel) == worker
        ]
        dialling = self._dialling.get(target, 0)
        if (
            self.draining
            or self._is_retired(target)
            or self._connectors is None
            or not self.scaling.wants_more(loads, dialling)
        ):
            return
        self._dialling[target] = dialling + 1
        log.info(
            "router %s: every tunnel is over %d%% full; opening another (%d of at most %d)",
            target,
            round(self.scaling.threshold * 100),
            len(loads) + dialling + 1,
            self.scaling.maximum,
        )
        self._connectors.start_soon(self._extra_connector, target, worker)

    def _is_retired(self, target: Target) -> bool:
        retired = self._retired.get(target)
        return retired is not None and retired.is_set()

    async def _extra_connector(self, target: Target, worker: WorkerInfo | None = None) -> None:
        """One on-demand tunnel (to ``worker``, when the router has several): dialled once,
        closed when idle, never replaced."""
        opts = self.options
        backoff = Backoff(
            base=opts.backoff_base, cap=opts.backoff_cap, reset_after=opts.backoff_reset_after
        )
        still_dialling = True

        def live() -> None:  # once registered it counts among the live tunnels instead
            nonlocal still_dialling
            if still_dialling:
                still_dialling = False
                self._dialling[target] -= 1

        router = str(target)
        try:
            avoid = self.workers.others(worker)
            for _ in range(self.workers.extra_dials(worker)):
                try:
                    await self._dial(target, -1, backoff, on_live=live, avoid=avoid)
                    break
                except HandshakeRefused as exc:
                    if exc.status != 421:  # 421: another worker answered; dial again
                        raise
                    await anyio.sleep(self.workers.redial_delay(self.rng))
                except BaseExceptionGroup as group:
                    raise unwrap(group, PTTHError) from None
            else:
                log.info("router %s: no extra tunnel reached its worker; not opened", router)
        except (OSError, PTTHError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            log.warning(
                "%s; extra tunnel not opened (another is dialled when one is needed)",
                _describe_failure(router, exc),
            )
        finally:
            live()

    async def _close_when_idle(self, tunnel: Connection) -> None:
        """An extra tunnel that carried nothing for ``idle_after`` seconds is drained."""
        idle_since: float | None = anyio.current_time()
        while not tunnel.closed:
            await anyio.sleep(min(1.0, self.scaling.idle_after / 4))
            now = anyio.current_time()
            if tunnel.open_streams:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            if self.scaling.idle_expired(tunnel.open_streams, idle_since, now):
                log.info("tunnel %s: extra tunnel idle; closing it", tunnel.tunnel_id)
                await tunnel.drain(self.options.drain_timeout)
                return

    async def _connector(self, target: Target, slot: int) -> None:
        """Keep one tunnel slot to one router filled; each failure is one log line that says
        what the router said and what happens next. Ends when the helper drains, or when the
        target's address left DNS (its tunnel drains)."""
        opts = self.options
        backoff = Backoff(
            base=opts.backoff_base, cap=opts.backoff_cap, reset_after=opts.backoff_reset_after
        )
        router = str(target)
        retired = self._retired.get(target) or anyio.Event()
        while not self.draining and not retired.is_set():
            failure: str | None = None
            retry_after: float | None = None
            note = ""
            try:
                try:
                    await self._dial(target, slot, backoff)
                except BaseExceptionGroup as group:
                    raise unwrap(group, PTTHError) from None
            except HandshakeRefused as exc:
                if exc.status == 421:  # a router worker this slot need not reach: dial again
                    if self.workers.retire(target.key, slot):
                        return
                    await anyio.sleep(self.workers.redial_delay(self.rng))
                    continue
                failure = _describe_failure(router, exc)
                if not exc.retryable:
                    hint = _FATAL_HINTS.get(exc.status, "the router will not accept it")
                    log.error("%s; not retrying: %s", failure, hint)
                    raise
                retry_after = exc.retry_after
                if self.metrics is not None:
                    self.metrics.dial_failed(str(target), failure_reason(exc))
                if exc.status == 409:
                    note = " (the holder's claim may expire)"
            except (OSError, PTTHError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                failure = _describe_failure(router, exc)
                if self.metrics is not None:
                    self.metrics.dial_failed(str(target), failure_reason(exc))
            except Exception:
                log.exception("router %s: unexpected error; reconnecting", router)
            backoff.disconnected(anyio.current_time())
            if self.draining or retired.is_set():
                return
            if failure is not None and target.ip is not None:
                wake = self._resolve_now.pop(target.address, None)
                if wake is not None:  # is this address still the name's?
                    wake.set()
            delay = backoff.next_delay(self.rng)
            if retry_after is not None:
                # At least what the router asked, spread a little so a fleet refused at the
                # same moment does not return at the same moment.
                delay = max(delay, retry_after * (1 + 0.2 * self.rng.random()))
            if failure is None:
                log.info("reconnecting to %s in %.1f s", router, delay)
            else:
                log.warning("%s; retrying in %.1f s%s", failure, delay, note)
            with anyio.move_on_after(delay):
                await retired.wait()

    async def _dial(
        self,
        target: Target,
        slot: int,
        backoff: Backoff,
        *,
        on_live: Callable[[], None] | None = None,
        avoid: tuple[str, ...] = (),
    ) -> None:
        """``_connect_once`` holding one of the router's ``HANDSHAKES_PER_ROUTER`` slots until
        the tunnel is registered (or failed): a helper opens thousands of tunnels in waves."""
        slots = self._handshake_slots.get(target)
        if slots is None:
            slots = self._handshake_slots[target] = anyio.Semaphore(HANDSHAKES_PER_ROUTER)
        await slots.acquire()
        held = True

        def registered() -> None:
            nonlocal held
            if held:
                held = False
                slots.release()
            if on_live is not None:
                on_live()

        try:
            await self._connect_once(target, slot, backoff, on_live=registered, avoid=avoid)
        finally:
            if held:
                slots.release()

    async def _connect_once(
        self,
        target: Target,
        slot: int,
        backoff: Backoff,
        *,
        on_live: Callable[[], None] | None = None,
        avoid: tuple[str, ...] = (),
    ) -> None:
        """``avoid``: router workers that must not take this tunnel (Ptth-Covered-Workers)."""
        proxy = self.proxies[target.address]
        try:
            sock = await dial(
                target.address,
                self.tls,
                timeout=HANDSHAKE_TIMEOUT,
                proxy=proxy,
                ip=target.ip,
                token=self.options.token,
            )
        except TimeoutError:
            if proxy is None:
                raise
            raise ForwardProxyError(
                f"no tunnel through proxy {proxy} within {HANDSHAKE_TIMEOUT:g} s"
            ) from None
        try:
            try:
                # The name, also when dialled at one of its addresses (Target.ip).
                authority = target.address.authority
                covered = self.workers.covered(target.key) if slot >= 0 else avoid
                handshake = ClientHandshake(
                    self.registration,
                    authority,
                    covered=covered,
                    target=target.address.handshake_target.encode("ascii"),
                )
                with anyio.fail_after(HANDSHAKE_TIMEOUT):
                    await sock.send(handshake.request_bytes())
                    accepted = None
                    while accepted is None:
                        try:
                            data = await sock.receive(65536)
                        except anyio.EndOfStream:
                            data = b""  # the handshake parser reports the close
                        accepted = handshake.receive(data)
            except TimeoutError:
                await anyio.aclose_forcefully(sock)
                raise HandshakeError("router did not answer the handshake in time") from None
            except BaseException:
                await anyio.aclose_forcefully(sock)
                raise
            serve_stream = self.handler or self._handle_stream

            async def on_stream(stream: Stream) -> None:
                self._maybe_scale(target, accepted.worker)
                kind = int((b":protocol", b"websocket") in (stream.headers or ()))
                self.serving[kind] += 1
                metrics = self.metrics
                if metrics is not None:
                    metrics.stream_started(bool(kind))
                try:
                    await serve_stream(stream)
                finally:
                    self.serving[kind] -= 1
                    if metrics is not None:
                        metrics.stream_finished(bool(kind), stream.sent_status)

            tunnel = Connection(
                sock,
                client_side=False,
                tunnel_id=accepted.tunnel_id,
                settings=Settings(max_concurrent_streams=self.options.max_concurrent_streams),
                liveness=self.options.liveness,
                on_stream=on_stream,
                initial_data=accepted.trailing,
            )
            capacity = min(self.options.max_concurrent_streams, accepted.max_streams or 2**31)
            log.info(
                "tunnel %s: registered with %s (service %s%s)",
                accepted.tunnel_id,
                target,
                self.options.service,
                describe_worker(accepted.worker),
                extra=tunnel_fields(
                    accepted.tunnel_id, self.options.instance, self.options.service, "registered"
                ),
            )
            self.tunnels.add(tunnel)
            if self.metrics is not None:
                self.metrics.tunnel_registered(str(target))
            group = self._by_router.setdefault(target, {})
            group[tunnel] = capacity
            self.workers.track(tunnel, accepted.worker)
            worker = accepted.worker if slot >= 0 else None
            surplus = not self.workers.registered(target.key, worker)
            if surplus:
                log.info(
                    "tunnel %s: a surplus tunnel to its worker; closing it", accepted.tunnel_id
                )
            if self._connectors is not None:  # the router named more workers: more slots
                for extra in self.workers.new_slots(target.key):
                    self._connectors.start_soon(self._connector, target, extra)
            if on_live is not None:
                on_live()
            backoff.connected(anyio.current_time())
            try:
                async with anyio.create_task_group() as nursery:
                    await nursery.start(tunnel.run)
                    self.connected.set()
                    if self.draining or surplus or self._is_retired(target):
                        nursery.start_soon(tunnel.drain, self.options.drain_timeout)
                    elif slot < 0:
                        nursery.start_soon(self._close_when_idle, tunnel)
            finally:
                self.tunnels.discard(tunnel)
                group.pop(tunnel, None)
                self.workers.dropped(target.key, worker)
                self.workers.untrack(tunnel)
                log.info(
                    "tunnel %s: closed (%s)",
                    accepted.tunnel_id,
                    tunnel.close_reason,
                    extra=tunnel_fields(accepted.tunnel_id, self.options.instance, event="closed"),
                )

        finally:
            # A safety net: every way out closes the dialled stream, also one that never reached
            # tunnel.run (which closes it itself; a second close is a no-op for every transport).
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(sock)

    async def _handle_stream(self, stream: Stream) -> None:
        assert self.app is not None
        headers = await stream.receive_headers()
        try:
            head = parse_request_block(headers)
        except HeaderError as exc:
            log.warning("tunnel %s: bad request block: %s", stream.tunnel_id, exc)
            await _answer(stream, 400, str(exc))
            return
        if head.protocol == "websocket":  # RFC 8441 extended CONNECT
            await serve_websocket(self.app, stream, head, root_path=self.options.root_path)
        elif head.protocol is not None:
            text = f"extended CONNECT protocol {head.protocol!r} is not supported"
            await _answer(stream, 501, text)
        else:
            await serve_http(self.app, stream, head, root_path=self.options.root_path)

    async def drain(self) -> None:
        """GOAWAY on every tunnel and wait (bounded) until they are idle."""
        self.draining = True
        requests, websockets = self.serving
        timeout = self.options.drain_timeout
        log.info(
            "%s",
            drain_summary(websockets, requests, timeout),
            extra={"event": "draining", "websockets": websockets, "requests": requests},
        )
        with anyio.move_on_after(self.options.drain_timeout):
            async with anyio.create_task_group() as nursery:
                for tunnel in list(self.tunnels):
                    nursery.start_soon(tunnel.drain, self.options.drain_timeout)

    async def run(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        if self.app is None:  # agent mode: the upstream server has its own lifecycle
            await self._serve_tunnels(task_status)
            return
        lifespan = Lifespan(self.app)
        async with anyio.create_task_group() as lifespan_nursery:
            try:
                await lifespan.startup(lifespan_nursery)
                try:
                    await self._serve_tunnels(task_status)
                finally:
                    # Shielded: cancelling `serve` must still run the app's shutdown.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                        await lifespan.shutdown()
            finally:
                lifespan.close()  # the app's lifespan task is shielded from our cancellation
                lifespan_nursery.cancel_scope.cancel()

    def _start_target(self, target: Target) -> None:
        assert self._connectors is not None
        self._retired[target] = anyio.Event()
        for slot in range(self.options.connections):
            self._connectors.start_soon(self._connector, target, slot)

    async def _follow_dns(self, router: RouterAddress) -> None:
        """Every address ``router``'s name resolves to is a target of its own; one that
        vanishes from DNS stops being dialled and its tunnels drain (in-flight requests end)."""

        async def changed(added: set[str], removed: set[str]) -> None:
            if self.draining:
                return
            for ip in sorted(added):
                self._start_target(Target(router, ip))
            for ip in sorted(removed):
                target = Target(router, ip)
                self._retired[target].set()
                tunnels = list(self._by_router.get(target, {}))
                log.info(
                    "router %s: no longer in DNS; draining its %d tunnel(s)", target, len(tunnels)
                )
                for tunnel in tunnels:
                    assert self._connectors is not None
                    self._connectors.start_soon(tunnel.drain, self.options.drain_timeout)

        def wake() -> anyio.Event:
            return self._resolve_now.setdefault(router, anyio.Event())

        await watch(router, self.options.resolve_interval, changed, wake, resolver=_resolver)

    async def _serve_tunnels(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        # Connectors and the requests they serve live under a shielded scope: cancelling
        # `serve` must drain them, not kill in-flight requests.
        work = anyio.CancelScope(shield=True)
        async with anyio.create_task_group() as outer:

            async def run_connectors() -> None:
                with work:
                    async with anyio.create_task_group() as nursery:
                        self._connectors = nursery
                        for router in self.routers:
                            if expands(router, self.proxies[router]):
                                nursery.start_soon(self._follow_dns, router)
                            else:
                                self._start_target(Target(router))
                outer.cancel_scope.cancel()

            outer.start_soon(run_connectors)
            if self.metrics is not None and self.options.metrics:
                self.metrics_address = await outer.start(
                    serve_metrics, self.metrics, self.options.metrics
                )
                log.info("metrics on http://%s/metrics", format_address(*self.metrics_address))
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.drain()
                    work.cancel()

    def _tunnel_views(self) -> list[TunnelView]:
        return [
            TunnelView(str(target), tunnel.tunnel_id, tunnel.open_streams, tunnel.rtt)
            for target, group in self._by_router.items()
            for tunnel in group
        ]


async def _resolver(host: str, port: int) -> list[str]:
    """The lookup behind several-address routers (a module global so tests can replace it)."""
    return await resolve(host, port)


def _client_tls(options: BackendOptions, routers: Sequence[RouterAddress]) -> ClientTLS | None:
    """The TLS context for the tls:// routers (None if there is none), with the client
    certificate to present; logs the name a key identity is granted, and tokens sent in clear."""
    for router in routers:
        warning = plaintext_token_warning(router, options.token)
        if warning is not None:
            log.warning("%s", warning)
    cert, key = options.client_cert, options.client_key
    if isinstance(options.identity, str) and not options.identity.strip():
        raise ConfigError("identity must be True or a directory")
    if options.identity is not False and cert is not None:
        raise ConfigError("give identity or client_cert/client_key, not both")
    if not any(router.tls for router in routers):
        if options.identity is not False or cert is not None or options.ca_file is not None:
            log.warning("TLS settings ignored: no router address is tls://")
        return None
    if options.identity is not False:
        directory = None if options.identity is True else options.identity
        identity = load_or_create(directory)
        cert, key = identity.cert_file, identity.key_file
    tls = client_tls(
        ca_file=options.ca_file, ssl_context=options.ssl_context, client_cert=cert, client_key=key
    )
    if cert is not None:
        label = key_label(certificate_fingerprint(cert))
        log.info("key identity %s: the router grants %s.<its --domain>", label, label)
    return tls


def _canonical_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """Claims as the router will compare them (``Bücher.example:443`` → ``xn--bcher-kva.example``),
    so the handshake carries only ASCII and the router's answer matches what was asked."""
    try:
        return tuple(dict.fromkeys(normalize_claim(h) for h in hosts))
    except HeaderError as exc:
        raise ConfigError(str(exc)) from None


async def _answer(stream: Stream, status: int, text: str) -> None:
    """The backend's own short answer, for a stream no app can serve."""
    body = f"{text}\n".encode()
    await stream.send_headers(
        [(b":status", str(status).encode()), (b"content-length", str(len(body)).encode())]
    )
    await stream.send_data(body, end_stream=True)


async def serve(
    app: ASGIApp,
    router_addr: str | Sequence[str],
    *,
    service: str = "default",
    hosts: Sequence[str] = (),
    path_prefix: str | None = None,
    token: str | None = None,
    connections: int = 1,
    max_concurrent_streams: int = 1000,
    max_connections: int = 0,
    weight: float = 1.0,
    strip_prefix: bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    identity: bool | str | os.PathLike[str] = False,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    proxy: str | None = None,
    options: BackendOptions | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` through tunnels to ``router_addr`` until cancelled (then drain and return).

    ``router_addr`` is ``"host:port"`` (or ``tcp://host:port``), ``tls://host:port``, or a list
    of them; ``connections`` tunnels are kept to each. ``strip_prefix`` asks the router to cut
    ``path_prefix`` from request paths; the app then sees it as its ``root_path`` (ASGI mount
    semantics). A ``tls://`` router's certificate is verified against the system trust store,
    or ``ca_file``, or ``ssl_context`` (which then also carries any client certificate).
    ``identity`` presents the key identity of :mod:`ptth.identity` (``True``: the default
    directory; or a directory), made on first use; ``client_cert``/``client_key`` present given
    files instead. ``proxy`` (``http://[user:password@]host:port``) reaches every router
    through that proxy's HTTP CONNECT; by default ``HTTPS_PROXY`` (tls://), ``HTTP_PROXY`` and
    ``NO_PROXY`` are honoured, and ``proxy=""`` dials directly whatever they say.
    ``options`` (a :class:`BackendOptions`) is the alternative to these keywords: giving it with
    a keyword that is not at its default raises :class:`~ptth.errors.ConfigError`. Raises
    :class:`~ptth.errors.HandshakeRefused` when a router refuses for good (400/401/403)
    and :class:`~ptth.errors.LifespanError` when startup fails.
    """
    addresses, options = resolve_arguments(
        router_addr,
        options,
        service=service,
        hosts=hosts,
        path_prefix=path_prefix,
        token=token,
        connections=connections,
        max_concurrent_streams=max_concurrent_streams,
        max_connections=max_connections,
        weight=weight,
        strip_prefix=strip_prefix,
        ca_file=ca_file,
        ssl_context=ssl_context,
        identity=identity,
        client_cert=client_cert,
        client_key=client_key,
        proxy=proxy,
    )
    await run_backend(app, addresses, options, task_status=task_status)


# The keyword defaults of serve / serve_upstream: a keyword that differs next to options= clashes.
_KEYWORD_DEFAULTS: dict[str, object] = dict(
    service="default",
    hosts=(),
    path_prefix=None,
    token=None,
    connections=1,
    max_concurrent_streams=1000,
    max_connections=0,
    weight=1.0,
    strip_prefix=False,
    ca_file=None,
    ssl_context=None,
    identity=False,
    client_cert=None,
    client_key=None,
    proxy=None,
)


def resolve_arguments(
    router_addr: str | Sequence[str],
    options: BackendOptions | None,
    *,
    service: str,
    hosts: Sequence[str],
    path_prefix: str | None,
    token: str | None,
    connections: int,
    max_concurrent_streams: int,
    max_connections: int,
    weight: float,
    strip_prefix: bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    identity: bool | str | os.PathLike[str] = False,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    proxy: str | None = None,
) -> tuple[list[str], BackendOptions]:
    """The router addresses and options that ``serve`` and ``serve_upstream`` were given, checked.

    ``options`` and the other keywords are alternatives: a keyword that differs from its
    default next to ``options`` is a :class:`ConfigError` (it would otherwise be ignored).
    """
    addresses = [router_addr] if isinstance(router_addr, str) else list(router_addr)
    if not addresses:
        raise ConfigError("at least one router address is required")
    given: dict[str, Any] = dict(
        service=service,
        hosts=tuple(hosts),
        path_prefix=path_prefix,
        token=token,
        connections=connections,
        max_concurrent_streams=max_concurrent_streams,
        max_connections=max_connections,
        weight=weight,
        strip_prefix=strip_prefix,
        ca_file=ca_file,
        ssl_context=ssl_context,
        identity=identity,
        client_cert=client_cert,
        client_key=client_key,
        proxy=proxy,
    )
    if options is not None:
        clashing = sorted(k for k, v in given.items() if v != _KEYWORD_DEFAULTS[k])
        if clashing:
            raise ConfigError(
                "give options= or keyword arguments, not both: "
                + ", ".join(clashing)
                + " would be ignored (set them in BackendOptions)"
            )
        connections = options.connections
    if connections < 1:
        raise ConfigError("connections must be at least 1")
    if options is None:
        options = BackendOptions(**given)
    return addresses, options


async def run_backend(
    app: ASGIApp | None,
    addresses: Sequence[str],
    options: BackendOptions,
    *,
    handler: StreamHandler | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The engine behind ``serve`` and agent mode: ``app`` or ``handler`` serves each stream."""
    routers = [parse_router_address(a) for a in addresses]
    backend = _Backend(app, routers, options, handler=handler)
    try:
        await backend.run(task_status)
    except BaseExceptionGroup as group:
        raise unwrap(group, PTTHError) from None
