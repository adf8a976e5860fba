"""The httpsock protocol's rules, with no I/O: bytes, offsets and time in, decisions out.

A byte stream over plain HTTP requests (ARCHITECTURE.md, "Transports" > "Socket over plain
HTTP"). Each direction is a byte sequence numbered by offset from 0. The sender keeps every byte
until the receiver acknowledges its offset, so any request or response may be lost, retried,
duplicated or reordered without a byte lost or applied twice:

- client → server: ``PUT`` carries ``X-Seq`` (the offset of its first body byte); the server
  applies only bytes past what it already has and answers ``X-Ack`` (its receive offset);
- server → client: ``GET`` carries ``X-Ack`` (the client's receive offset, which also frees the
  server's copy of everything before it) and ``X-Content-Length`` (at most that many bytes); the
  answer carries ``X-Seq`` and the bytes from there, so a lost answer is fetched again.

``X-EOF: 1`` marks the last bytes of a direction; ``X-Reset: 1`` (with ``410 Gone``) an aborted
session. :class:`Inbox` and :class:`Outbox` are one direction each; :class:`ServerSession` and
:class:`ClientSession` put a pair together with the request rules; :class:`SessionTable` holds
the server's sessions (tokens, bindings, caps, idle expiry).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "CACHE_BUST",
    "ClientSession",
    "GetAnswer",
    "GetRequest",
    "Inbox",
    "Limits",
    "Outbox",
    "PutAnswer",
    "PutRequest",
    "ServerSession",
    "SessionTable",
    "binding",
    "parse_offset",
]

# Header names (lower case, as ASGI and h11 give them).
SEQ = "x-seq"
ACK = "x-ack"
EOF = "x-eof"
RESET = "x-reset"
CONTENT_LENGTH = "x-content-length"
SESSION = "x-session"
SESSION_KEY = "x-session-key"
MAX_PUT = "x-max-put"
POLL_TIMEOUT = "x-poll-timeout"
IDLE_TIMEOUT = "x-idle-timeout"
CACHE_BUST = "r"  # the query parameter every request carries, different each time

# Offsets are decimal; 20 digits cover 2**64, more is an attack on int().
_MAX_OFFSET_DIGITS = 20


def parse_offset(value: str | None) -> int | None:
    """A non-negative decimal offset or count, or None when absent or malformed."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > _MAX_OFFSET_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_seconds(value: str | None) -> float | None:
    """A positive, finite number of seconds, or None."""
    if value is None or len(value) > 32:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def flag(value: str | None) -> bool:
    """``X-EOF: 1`` / ``X-Reset: 1``."""
    return value is not None and value.strip() == "1"


@dataclass(frozen=True)
class Limits:
    """Per-session bounds (both sides) and the server's timers, in bytes and seconds."""

    # 4 MiB: one PUT or GET per round trip carries this much (1 MiB gave a third of the
    # throughput through the router: benchmarks/httpsock_tunnel.py).
    max_put: int = 4 * 1024 * 1024  # one PUT body; the client sends no more
    max_get: int = 4 * 1024 * 1024  # one GET answer, whatever X-Content-Length asks
    inbox: int = 4 * 1024 * 1024  # received, not yet read by the application
    outbox: int = 4 * 1024 * 1024  # written, not yet acknowledged by the peer
    poll_timeout: float = 25.0  # a GET with nothing to say is answered 204 after this
    idle_timeout: float = 60.0  # a session with no request in flight for this long expires

    def __post_init__(self) -> None:
        for name in ("max_put", "max_get", "inbox", "outbox", "poll_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.idle_timeout <= self.poll_timeout:
            raise ValueError("idle_timeout must be longer than poll_timeout")


class Outbox:
    """One direction's sending side: bytes kept from the first unacknowledged offset on."""

    def __init__(self) -> None:
        self.base = 0  # offset of buf[0]: everything before it is acknowledged
        self.buf = bytearray()
        self.eof = False  # nothing follows self.end
        self.eof_acked = False  # the peer said it has every byte and the EOF

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def write(self, data: bytes) -> None:
        if self.eof:
            raise ValueError("write after EOF")
        self.buf += data

    def close(self) -> None:
        self.eof = True

    def ack(self, offset: int, eof: bool = False) -> bool:
        """The peer has every byte before ``offset``; False if it claims bytes never sent."""
        if offset > self.end:
            return False
        if offset > self.base:
            del self.buf[: offset - self.base]
            self.base = offset
        if eof and self.eof and offset == self.end:
            self.eof_acked = True
        return True

    def peek(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (which must be in ``[base, end]``)."""
        start = offset - self.base
        return bytes(self.buf[start : start + size])


@dataclass(frozen=True)
class Applied:
    """What a receiver did with a piece: its receive offset after, and the new bytes taken."""

    ack: int
    taken: int
    gap: bool = False  # the piece starts past the receive offset: nothing taken
    beyond_eof: bool = False  # the piece claims bytes after the end it announced


class Inbox:
    """One direction's receiving side: what arrived in order, until the application reads it."""

    def __init__(self) -> None:
        self.offset = 0  # every byte before it has been received (the acknowledgement)
        self.buf = bytearray()  # received, not yet read
        self.eof = False  # the sender's EOF sits at self.offset

    def apply(self, seq: int, data: bytes, eof: bool, room: int) -> Applied:
        """Take the part of ``data`` (starting at offset ``seq``) not already taken, up to
        ``room`` bytes; a duplicate or an old retry takes nothing and is no error."""
        end = seq + len(data)
        if self.eof:
            return Applied(self.offset, 0, beyond_eof=end > self.offset)
        if seq > self.offset:
            return Applied(self.offset, 0, gap=True)
        new = data[self.offset - seq :] if end > self.offset else b""
        take = min(len(new), max(room, 0))
        if take:
            self.buf += new[:take]
            self.offset += take
        if eof and self.offset == end:
            self.eof = True
        return Applied(self.offset, take)

    def read(self, size: int) -> bytes:
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data


# -- server side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PutAnswer:
    status: int  # 204 taken (maybe partly: resend from ack), 409 gap, 400 bad, 410 reset
    ack: int = 0
    eof: bool = False  # the server has the client's EOF
    taken: int = 0  # new bytes now in the inbox


@dataclass(frozen=True)
class GetAnswer:
    status: int  # 200 bytes (maybe none, with eof), 204 nothing yet, 409 stale, 400 bad, 410
    seq: int = 0
    data: bytes = b""
    eof: bool = False


def binding(client: str, authorization: str | None, key: str | None = None) -> bytes:
    """What a session is bound to at creation, besides its token: the client's address, its
    credentials and the secret ``X-Session-Key`` its client chose. A leaked token (proxies log
    URLs; clients behind one proxy share its address) is not enough alone."""
    text = f"{client}\0{authorization or ''}\0{key or ''}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(text).digest()


@dataclass
class ServerSession:
    """One session on the server: the client's bytes in, the application's bytes out."""

    token: str
    bound_to: bytes
    limits: Limits
    last_seen: float
    inbox: Inbox = field(default_factory=Inbox)
    outbox: Outbox = field(default_factory=Outbox)
    aborted: bool = False  # reset by either side, or expired: both directions are gone
    closed: bool = False  # the client said DELETE: no request follows
    in_flight: int = 0  # requests being served (a held GET keeps the session alive)
    app_closed: bool = False  # the application will read no more
    version: int = 0  # bumped on every change a waiter may care about
    client: str = ""  # the address that opened it (for the per-client cap)

    def _changed(self) -> None:
        self.version += 1

    # Requests: each begins with begin(now) and ends with end(now).
    def begin(self, now: float) -> None:
        self.in_flight += 1
        self.last_seen = now

    def end(self, now: float) -> None:
        self.in_flight -= 1
        self.last_seen = now

    def _room(self, budget: int | None) -> int:
        room = self.limits.inbox - len(self.inbox.buf)
        return room if budget is None else min(room, budget)

    def put(self, seq: int | None, data: bytes, eof: bool, budget: int | None = None) -> PutAnswer:
        """Apply a PUT; ``budget`` caps the new bytes taken (the server's memory for all
        sessions), as the inbox limit does for one."""
        if self.aborted:
            return PutAnswer(410)
        if seq is None or len(data) > self.limits.max_put or self.closed:
            return PutAnswer(400, self.inbox.offset, self.inbox.eof)
        if self.app_closed and seq + len(data) > self.inbox.offset:
            # New bytes for an application that closed: TCP answers RST (RFC 9293 §3.6.1).
            self.reset()
            return PutAnswer(410)
        had_eof = self.inbox.eof
        applied = self.inbox.apply(seq, data, eof, self._room(budget))
        if applied.beyond_eof:
            return PutAnswer(400, applied.ack, True)
        if applied.taken or self.inbox.eof != had_eof:
            self._changed()
        status = 409 if applied.gap else 204
        return PutAnswer(status, applied.ack, self.inbox.eof, applied.taken)

    def put_would_wait(self, seq: int | None, data: bytes, budget: int | None = None) -> bool:
        """The PUT brings new bytes and there is no room for any: hold it until the
        application reads (backpressure) instead of answering 'resend' at once."""
        return (
            not self.aborted
            and not self.closed
            and seq is not None
            and not self.app_closed
            and not self.inbox.eof
            and seq <= self.inbox.offset < seq + len(data)
            and self._room(budget) <= 0
        )

    def get(self, ack: int | None, size: int | None) -> GetAnswer | None:
        """The answer to a GET, or None: nothing to say yet (hold it)."""
        if self.aborted:
            return GetAnswer(410)
        if ack is None or size is None:
            return GetAnswer(400)
        out = self.outbox
        if ack < out.base:
            return GetAnswer(409, out.base)  # an old, overtaken GET: the client ignores it
        base = out.base
        if not out.ack(ack):
            return GetAnswer(400, out.base)
        if out.base != base:
            self._changed()  # room for the application's writes
        if size == 0:  # a client with no room left keeps its session alive
            return GetAnswer(204, ack)
        data = out.peek(ack, min(size, self.limits.max_get))
        at_end = out.eof and ack + len(data) == out.end
        if data or at_end:
            return GetAnswer(200, ack, data, at_end)
        return None

    def delete(self, reset: bool) -> None:
        """The client is done. Before its EOF (or with ``X-Reset``) that is an abort: bytes may
        still have been on their way. Either way no request follows."""
        if reset or not self.inbox.eof:
            self.reset()
        self.closed = True
        self._changed()

    def reset(self) -> None:
        if not self.aborted:
            self.aborted = True
            self.inbox.buf.clear()
            self._changed()

    def _idle_limit(self) -> float:
        # Once the application has closed, a client that is still there keeps a GET
        # outstanding; one that fetches nothing for a poll's length is not coming back.
        return self.limits.poll_timeout if self.app_closed else self.limits.idle_timeout

    def expired(self, now: float) -> bool:
        return self.in_flight == 0 and now - self.last_seen > self._idle_limit()

    def deadline(self) -> float:
        """When it expires if nothing happens (meaningful while no request is in flight)."""
        return self.last_seen + self._idle_limit()

    def forgettable(self, now: float) -> bool:
        """Closed by the client, or reset and then left alone for a poll's length (so the
        client's next request still learns of the reset: 410, not 404)."""
        return self.closed or (
            self.aborted and self.in_flight == 0 and now - self.last_seen > self.limits.poll_timeout
        )

    # The application's side.
    def app_read(self, size: int) -> bytes | None:
        """Bytes, ``b""`` at EOF, or None: nothing yet. Raises ConnectionResetError."""
        if self.aborted:
            raise ConnectionResetError("httpsock session reset")
        if self.inbox.buf:
            data = self.inbox.read(size)
            self._changed()  # room for a held PUT
            return data
        if self.inbox.eof:
            return b""
        return None

    def app_room(self) -> int:
        """How many bytes the application may write now. Raises ConnectionResetError when
        nobody will ever read them."""
        if self.aborted or self.closed:
            raise ConnectionResetError("httpsock session closed by the client")
        return max(0, self.limits.outbox - len(self.outbox.buf))

    def app_write(self, data: bytes) -> None:
        self.outbox.write(data)
        self._changed()

    def app_eof(self) -> None:
        if not self.outbox.eof:
            self.outbox.close()
            self._changed()

    def app_close(self) -> None:
        self.app_eof()
        self.app_closed = True
        self.inbox.buf.clear()
        self._changed()


class SessionTable:
    """The server's sessions by token: 256-bit tokens, bound to a binding, capped, expiring.

    Tokens are looked up by their SHA-256 so that a lookup's timing says nothing about a token.
    ``max_per_client`` caps the sessions of one client address, so that one client cannot hold
    them all. Expiry is swept at most once per ``SWEEP_INTERVAL`` (and when a cap is reached).
    """

    SWEEP_INTERVAL = 1.0

    def __init__(
        self, limits: Limits, max_sessions: int, max_per_client: int | None = None
    ) -> None:
        self.limits = limits
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client
        self._sessions: dict[bytes, ServerSession] = {}
        self._per_client: Counter[str] = Counter()
        self._swept_at = -math.inf

    def _drop(self, key: bytes) -> None:
        session = self._sessions.pop(key, None)
        if session is not None:
            self._per_client[session.client] -= 1
            if self._per_client[session.client] <= 0:
                del self._per_client[session.client]

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[ServerSession]:
        return iter(list(self._sessions.values()))

    def _full(self, client: str) -> bool:
        return len(self._sessions) >= self.max_sessions or (
            self.max_per_client is not None and self._per_client[client] >= self.max_per_client
        )

    def create(self, bound_to: bytes, now: float, client: str = "") -> ServerSession | None:
        """A new session for ``client`` (its address), or None at a cap (after forgetting the
        expired ones)."""
        self.sweep(now)
        if self._full(client):
            self.sweep(now, force=True)
            if self._full(client):
                return None
        token = secrets.token_urlsafe(32)  # 256 random bits
        session = ServerSession(token, bound_to, self.limits, now, client=client)
        self._sessions[hashlib.sha256(token.encode()).digest()] = session
        self._per_client[client] += 1
        return session

    def find(self, token: str, bound_to: bytes, now: float) -> ServerSession | None:
        """The session, if the token and its binding both match and it is not closed. A reset
        one is still found (its requests get 410) until it has been idle for a while."""
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        session = self._sessions.get(key)
        if session is None or not hmac.compare_digest(session.bound_to, bound_to):
            return None
        if not session.aborted and session.expired(now):
            session.reset()
            session.last_seen = now  # the reset is news from now on
        if session.forgettable(now):
            self._drop(key)
            return None
        return session

    def forget(self, session: ServerSession) -> None:
        key = hashlib.sha256(session.token.encode()).digest()
        if self._sessions.get(key) is session:
            self._drop(key)

    def sweep(self, now: float, *, force: bool = False) -> list[ServerSession]:
        """Expire idle sessions and forget finished ones; the ones reset now are returned.
        Does nothing within ``SWEEP_INTERVAL`` of the last sweep unless ``force``."""
        if not force and now - self._swept_at < self.SWEEP_INTERVAL:
            return []
        self._swept_at = now
        reset: list[ServerSession] = []
        for key, session in list(self._sessions.items()):
            if not session.aborted and session.expired(now):
                session.reset()
                session.last_seen = now
                reset.append(session)
            if session.forgettable(now):
                self._drop(key)
        return reset


# -- client side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PutRequest:
    seq: int
    data: bytes
    eof: bool


@dataclass(frozen=True)
class GetRequest:
    ack: int
    size: int


class ClientSession:
    """The client's half: what to PUT and GET next, and what the answers mean.

    One PUT and one GET at a time; a PUT always carries every unacknowledged byte (up to
    ``max_put``), so bytes written while one is in flight go out together in the next.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.outbox = Outbox()
        self.inbox = Inbox()
        self.reset = False

    def write_room(self) -> int:
        return max(0, self.limits.outbox - len(self.outbox.buf))

    def next_put(self) -> PutRequest | None:
        """The PUT to send now, or None: nothing new to say."""
        out = self.outbox
        if self.reset or out.eof_acked or (not out.buf and not out.eof):
            return None
        data = out.peek(out.base, self.limits.max_put)
        return PutRequest(out.base, data, out.eof and out.base + len(data) == out.end)

    def on_put_answer(self, status: int, headers: Mapping[str, str]) -> None:
        """204 or 409: the server's offset (resend from there); 410: reset. Anything else is
        a broken session (ValueError)."""
        if status == 410:
            self.reset = True
            return
        ack = parse_offset(headers.get(ACK))
        if (
            status not in (204, 409)
            or ack is None
            or not self.outbox.ack(ack, flag(headers.get(EOF)))
        ):
            raise ValueError(f"unexpected answer to PUT: {status}")

    def next_get(self) -> GetRequest | None:
        """The GET to hold open now, or None: the inbox is full or at EOF."""
        room = self.limits.inbox - len(self.inbox.buf)
        if self.reset or self.inbox.eof or room <= 0:
            return None
        return GetRequest(self.inbox.offset, min(room, self.limits.max_get))

    def on_get_answer(self, status: int, headers: Mapping[str, str], body: bytes) -> int:
        """Bytes taken from an answer (old or duplicate answers give 0); 410: reset."""
        if status == 410:
            self.reset = True
            return 0
        if status in (204, 409):
            return 0
        seq = parse_offset(headers.get(SEQ))
        if status != 200 or seq is None:
            raise ValueError(f"unexpected answer to GET: {status}")
        room = self.limits.inbox - len(self.inbox.buf)
        applied = self.inbox.apply(seq, body, flag(headers.get(EOF)), room)
        if applied.beyond_eof or applied.gap:
            raise ValueError("GET answer past the stream's end or ahead of it")
        return applied.taken
