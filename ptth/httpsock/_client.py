"""The httpsock client: :func:`dial` opens a session and returns it as a byte stream.

Two pumps run behind the stream (``_tasks.Pump``): one keeps a GET always outstanding (so the
server's bytes leave as soon as they exist, within one response), the other sends a PUT with
every unacknowledged byte whenever there is something new, so writes made while a PUT is in
flight go out together in the next. A request that fails (connection lost, timeout, a proxy's
5xx) is sent again with the same offsets; the protocol (:mod:`ptth.httpsock.protocol`) makes
that safe. httpx does the HTTP, on asyncio and trio alike, through ``proxy=`` or the
``HTTP(S)_PROXY``/``NO_PROXY`` environment (``trust_env``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import httpx

from ..errors import ConfigError, ForwardProxyError, HandshakeRefused, PTTHError, TunnelTLSError
from . import protocol as p
from ._tasks import Pump
from .protocol import ClientSession, GetRequest, Limits

__all__ = ["ClientStream", "dial"]

log = logging.getLogger("ptth.httpsock")

# Beyond the server's poll timeout, how long an answer may take before the request is retried.
ANSWER_MARGIN = 10.0
RETRY_BASE = 0.05
RETRY_CAP = 2.0
CLOSE_TIMEOUT = 5.0  # aclose: to flush the last bytes and the EOF, then to say DELETE
RESET_TIMEOUT = 1.0  # aclose_forcefully: to say DELETE with X-Reset
CUT_AFTER = 1.0  # a request failing after this long was cut on its way, not refused
MIN_POLL = 1.0  # the shortest hold a GET asks for


def _bust() -> dict[str, str]:
    """A query parameter no cache has seen (caching proxies then pass every request on)."""
    return {p.CACHE_BUST: secrets.token_urlsafe(9)}


class ClientStream(anyio.abc.ByteStream):
    """The client's end of one session (made by :func:`dial`)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        headers: Mapping[str, str],
        limits: Limits,
        *,
        retry_for: float,
        owns_client: bool,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        self._extensions = extensions or {}
        self._client = client
        self._url = url
        self._headers = dict(headers)
        self._limits = limits
        self._retry_for = retry_for
        self._owns_client = owns_client
        self._core = ClientSession(limits)
        self._poll = limits.poll_timeout  # how long a GET asks to be held (X-Poll-Timeout)
        self._event = anyio.Event()
        self._error: str | None = None
        self._closed = False
        self._send_lock = anyio.Lock()
        self._pumps = [Pump(self._get_pump, self._failed), Pump(self._put_pump, self._failed)]

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}

    def _failed(self, exc: BaseException) -> None:
        """A pump died of something unforeseen: the stream is broken, never silently stuck."""
        if self._error is None:
            self._error = f"httpsock: {type(exc).__name__}: {exc}"
        self._notify()

    # -- the application's side ----------------------------------------------------------

    def _notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    def _check(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._core.reset:
            raise anyio.BrokenResourceError("httpsock session reset")
        if self._error is not None:
            raise anyio.BrokenResourceError(self._error)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            inbox = self._core.inbox
            if inbox.buf:
                data = inbox.read(max_bytes)
                self._notify()  # room: the GET pump may ask for more
                return data
            if inbox.eof:
                if self._closed:
                    raise anyio.ClosedResourceError
                raise anyio.EndOfStream
            self._check()
            await self._event.wait()

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        async with self._send_lock:
            while view:
                self._check()
                if self._core.outbox.eof:
                    raise anyio.ClosedResourceError
                room = self._core.write_room()
                if room:
                    self._core.outbox.write(bytes(view[:room]))
                    view = view[room:]
                    self._notify()
                else:
                    await self._event.wait()

    async def send_eof(self) -> None:
        if not self._core.outbox.eof:
            self._core.outbox.close()
            self._notify()
        await anyio.lowlevel.checkpoint()

    async def wait_sent(self) -> None:
        """Until the server has acknowledged every byte written (and the EOF, if sent)."""
        while self._core.outbox.buf or (self._core.outbox.eof and not self._core.outbox.eof_acked):
            self._check()
            await self._event.wait()

    async def aclose(self) -> None:
        """Send the EOF after the last bytes, wait (up to 5 s) until the server has them, then
        DELETE the session. Cancelled (``aclose_forcefully``), it DELETEs with ``X-Reset``."""
        if self._closed:
            return
        clean = False
        try:
            await self.send_eof()
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await self.wait_sent()
                clean = True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._closed = True
            self._notify()
            with anyio.CancelScope(shield=True):
                for pump in self._pumps:
                    await pump.stop()
                await self._delete(reset=not clean)
                if self._owns_client:
                    await self._client.aclose()

    async def _delete(self, *, reset: bool) -> None:
        if self._core.reset or self._error is not None:
            return  # the server has already forgotten it
        headers = dict(self._headers)
        if reset:
            headers[p.RESET] = "1"
        # An abort is often a way out of trouble: it must not keep its caller long.
        with anyio.move_on_after(RESET_TIMEOUT if reset else CLOSE_TIMEOUT):
            try:
                await self._client.delete(
                    self._url, params=_bust(), headers=headers, extensions=self._extensions
                )
            except httpx.HTTPError as exc:
                log.debug("httpsock DELETE failed: %s", exc)

    # -- the pumps -----------------------------------------------------------------------

    async def _request(
        self, method: str, headers: dict[str, str], content: bytes | None = None
    ) -> httpx.Response | None:
        """One request, retried with the same offsets until an answer comes, or None after
        ``retry_for`` seconds of failures (the session is then as good as expired).

        A held GET that something on the way cuts (an attempt that failed after a while)
        shortens the hold the client asks for (``X-Poll-Timeout``) to half of what got
        through, down to 1 s: proxies that end quiet requests early still carry the session.
        """
        delay = RETRY_BASE
        give_up = anyio.current_time() + self._retry_for
        while True:
            if method in ("GET", "PUT"):  # both may be held by the server
                headers[p.POLL_TIMEOUT] = f"{self._poll:g}"
            timeout = httpx.Timeout(self._poll + ANSWER_MARGIN)
            started = anyio.current_time()
            try:
                response = await self._client.request(
                    method,
                    self._url,
                    params=_bust(),
                    headers={**self._headers, **headers},
                    content=content,
                    timeout=timeout,
                    extensions=self._extensions,
                )
                if response.status_code not in (429, 502, 503, 504):
                    return response
                failure = f"{response.status_code} {response.reason_phrase}"
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            lasted = anyio.current_time() - started
            if lasted >= CUT_AFTER:
                # The server was there and something cut the request: not an outage.
                delay = RETRY_BASE
                give_up = anyio.current_time() + self._retry_for
                if method == "GET" and lasted < self._poll + ANSWER_MARGIN / 2:
                    self._poll = max(MIN_POLL, min(self._poll, lasted / 2))
                    log.info(
                        "httpsock: held GETs cut after %.1f s; asking for %.1f s",
                        lasted,
                        self._poll,
                    )
            if anyio.current_time() + delay > give_up:
                self._error = f"httpsock {method} failed for {self._retry_for:g} s: {failure}"
                return None
            log.debug("httpsock %s failed (%s); retrying in %.2f s", method, failure, delay)
            await anyio.sleep(delay)
            delay = min(RETRY_CAP, delay * 2)

    async def _get_pump(self) -> None:
        core = self._core
        try:
            while not self._closed and not core.reset and not core.inbox.eof:
                request = core.next_get()
                if request is None:  # the application has not read: no room
                    with anyio.move_on_after(self._limits.idle_timeout / 3) as waited:
                        await self._event.wait()
                    if not waited.cancelled_caught:
                        continue
                    # Still no room: an empty GET, so that the session does not expire.
                    request = GetRequest(core.inbox.offset, 0)
                headers = {p.ACK: str(request.ack), p.CONTENT_LENGTH: str(request.size)}
                response = await self._request("GET", headers)
                if response is None:
                    return
                if response.status_code == 404:
                    core.reset = True  # expired, or never ours: gone either way
                else:
                    core.on_get_answer(response.status_code, response.headers, response.content)
                self._notify()
        except ValueError as exc:
            self._error = f"httpsock server answered nonsense: {exc}"
        finally:
            self._notify()

    async def _put_pump(self) -> None:
        core = self._core
        try:
            while not core.reset and not core.outbox.eof_acked:
                request = core.next_put()
                if request is None:
                    if self._closed:
                        return
                    await self._event.wait()
                    continue
                headers = {p.SEQ: str(request.seq), "content-type": "application/octet-stream"}
                if request.eof:
                    headers[p.EOF] = "1"
                response = await self._request("PUT", headers, request.data)
                if response is None:
                    return
                if response.status_code == 404:
                    core.reset = True
                else:
                    core.on_put_answer(response.status_code, response.headers)
                self._notify()
        except ValueError as exc:
            self._error = f"httpsock server answered nonsense: {exc}"
        finally:
            self._notify()


async def dial(
    url: str,
    *,
    proxy: str | httpx.Proxy | None = None,
    trust_env: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    authorization: str | None = None,
    headers: Mapping[str, str] | None = None,
    limits: Limits | None = None,
    timeout: float = 30.0,
    retry_for: float | None = None,
    http_client: httpx.AsyncClient | None = None,
    connect_ip: str | None = None,
) -> ClientStream:
    """Open an httpsock session at ``url`` (``http://`` or ``https://``, the listener's base)
    and return it as a byte stream.

    ``proxy`` is a forward proxy URL (else ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` when
    ``trust_env``); ``ssl_context`` verifies an ``https://`` server (default: the system trust
    store). ``authorization`` is sent on every request: the session is bound to it (and to the
    client's address), so its token alone opens nothing. ``retry_for`` is how long requests are
    retried before the stream breaks (default: the idle timeout, after which the server has
    expired the session anyway). ``http_client`` reuses a client of your own (not closed here).
    ``connect_ip`` connects to that address of the URL's host name (``Host`` and the TLS name
    stay the URL's).

    Raises :class:`~ptth.errors.HandshakeRefused` when the server answers the POST with
    anything but ``201``, ``OSError`` (``ConnectionError``) or ``TimeoutError`` when it cannot
    be reached within ``timeout`` seconds, :class:`~ptth.errors.ConfigError` for a bad URL.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise ConfigError(f"httpsock URL must be http:// or https://, got {url!r}")
    limits = limits or Limits()
    extra = dict(headers or {})
    if authorization is not None:
        extra["authorization"] = authorization
    # A secret of this client's, sent on every request and bound to the session with the
    # token: the token travels in URLs, which proxies log; headers they seldom do.
    extra[p.SESSION_KEY] = secrets.token_urlsafe(32)
    extensions: dict[str, Any] = {}
    if connect_ip is not None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"bad httpsock URL {url!r}: {exc}") from None
        extra.setdefault("host", parsed.netloc.decode("ascii"))
        if parsed.scheme == "https":
            extensions["sni_hostname"] = parsed.host
        url = str(parsed.copy_with(host=connect_ip))
    owns = http_client is None
    if http_client is None:
        http_client = httpx.AsyncClient(
            proxy=proxy,
            trust_env=trust_env,
            verify=ssl_context if ssl_context is not None else True,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        )
    try:
        with anyio.fail_after(timeout):
            response = await http_client.post(
                url, params=_bust(), headers=extra, extensions=extensions
            )
        if response.status_code != 201:
            raise _refusal(response, _proxy_in_use(url, proxy, trust_env))
        token = response.headers.get(p.SESSION, "").strip()
        if not token or not token.replace("-", "").replace("_", "").isalnum():
            raise HandshakeRefused(502, "no session token in the server's 201 answer")
        limits = _adopt(limits, response.headers)
    except httpx.InvalidURL as exc:
        if owns:
            await http_client.aclose()
        raise ConfigError(f"bad httpsock URL {url!r}: {exc}") from None
    except httpx.TimeoutException:
        if owns:
            await http_client.aclose()
        raise TimeoutError(f"httpsock server {url} did not answer in time") from None
    except httpx.ProxyError as exc:
        if owns:
            await http_client.aclose()
        raise ForwardProxyError(f"the proxy did not open the way to {url}: {exc}") from None
    except httpx.TransportError as exc:
        if owns:
            await http_client.aclose()
        if _tls_failure(exc):
            raise TunnelTLSError(f"TLS with {url} failed: {_tls_failure(exc)}") from None
        raise ConnectionError(f"cannot reach httpsock server {url}: {exc}") from None
    except BaseException:
        if owns:
            with anyio.CancelScope(shield=True):
                await http_client.aclose()
        raise
    session_url = url.rstrip("/") + "/" + token
    return ClientStream(
        http_client,
        session_url,
        extra,
        limits,
        retry_for=limits.idle_timeout if retry_for is None else retry_for,
        owns_client=owns,
        extensions=extensions,
    )


def _adopt(limits: Limits, headers: Mapping[str, str]) -> Limits:
    """The server's PUT size, poll timeout and idle timeout where they are smaller than ours:
    the client must not send more than it takes, nor stay silent longer than it waits."""
    max_put = p.parse_offset(headers.get(p.MAX_PUT)) or limits.max_put
    poll = min(limits.poll_timeout, p.parse_seconds(headers.get(p.POLL_TIMEOUT)) or math.inf)
    idle = min(limits.idle_timeout, p.parse_seconds(headers.get(p.IDLE_TIMEOUT)) or math.inf)
    try:
        return dataclasses.replace(
            limits, max_put=min(max_put, limits.max_put), poll_timeout=poll, idle_timeout=idle
        )
    except ValueError:  # nonsense from the server (idle not above poll): keep ours
        return limits


def _proxy_in_use(url: str, proxy: str | httpx.Proxy | None, trust_env: bool) -> str | None:
    """The forward proxy the session's POST went through, credentials hidden, or None."""
    if proxy is None and trust_env:
        scheme = "https" if url.lower().startswith("https:") else "http"
        proxy = next(
            (
                os.environ[name]
                for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY")
                if os.environ.get(name)
            ),
            None,
        )
    if proxy is None:
        return None
    try:
        parsed = proxy.url if isinstance(proxy, httpx.Proxy) else httpx.URL(proxy)
    except httpx.InvalidURL:
        return "the proxy"
    userinfo = "***@" if parsed.userinfo else ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"proxy {parsed.scheme}://{userinfo}{parsed.host}{port}"


def _refusal(response: httpx.Response, proxy: str | None) -> PTTHError:
    """What a non-201 answer to the session's POST means. The httpsock server marks its own
    answers (``Cache-Control: no-store``); another answer through a proxy is the proxy's
    (tinyproxy answers a bad password with 401), named without its page, which may echo what
    was sent."""
    status = response.status_code
    ours = response.headers.get("cache-control") == "no-store" and status != 407
    if proxy is not None and not ours:
        said = f"{proxy} answered the session's POST with {status} {response.reason_phrase}"
        if status in (401, 407):  # RFC 9110 §15.5.8
            hint = "proxy authentication required (check the user and password in its URL)"
        elif status == 403:
            hint = "the proxy forbids this destination"
        elif status in (502, 503, 504):
            hint = "the proxy could not reach the server"
        else:
            hint = "the proxy refused the request"
        return ForwardProxyError(f"{said}: {hint}", proxy_status=status)
    retry_after = response.headers.get("retry-after")
    if ours:
        reason = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    else:
        reason = f"not an httpsock server? ({response.reason_phrase})"
    return HandshakeRefused(
        status,
        reason or response.reason_phrase,
        float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS error under an httpx error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate not accepted: {seen.verify_message or seen.reason}"
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or seen)
        seen = seen.__cause__ or seen.__context__
    return None
