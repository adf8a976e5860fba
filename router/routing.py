"""The routing table: which service answers a (Host, path) pair.

Pure code, no I/O: time comes in as ``now`` so grace periods are testable without a clock.

A tunnel registers hosts ``H`` and a path prefix ``P``; it then *claims* every ``(h, P)`` for
``h`` in ``H``, or ``(None, P)`` when it names no host. A claim belongs to one service; several
tunnels of that service may hold it at once (that is the pool the balancer picks from). When the
last tunnel holding a claim goes away the claim stays for ``grace`` seconds, still routing to its
service, so a restarting backend makes its users see 503 (retry soon) rather than 404 (gone), and
another service cannot grab its hosts in the meantime.

``match`` order (first hit wins, each stage falls through to the next):

1. claims on the exact host, longest path prefix first;
2. wildcard claims (``*.example.com``), longest host suffix first, then longest path prefix;
3. host-less claims, longest path prefix first;
4. ``default_service`` (``None`` turns the catch-all off, so the answer is 404).

Claims conflict only when they have the same key ``(host, prefix)``: ``a.example.com`` and
``*.example.com`` may belong to different services (the exact one wins), and so may ``/api`` and
``/web`` on one host.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ptth.errors import ConfigError, HandshakeRefused, HeaderError

__all__ = ["Claim", "RoutingTable", "normalize_host", "normalize_prefix"]

# A DNS name or IPv4 address: LDH labels (underscore tolerated for internal names), no empty label.
_NAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*)(?:\.[a-z0-9_][a-z0-9_-]*)*")
# An IP literal's inside (RFC 3986 §3.2.2); zone ids and IPvFuture are not routable names.
_IPV6_RE = re.compile(r"[0-9a-f:.]+")
_PORT_RE = re.compile(r"[0-9]{0,5}")
# RFC 3986 pchar without "%" (checked separately as %XX): unreserved, sub-delims, ":" and "@".
_SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+")
_MAX_HOST = 253  # RFC 1035 §2.3.4 name length, as text without the trailing dot
_MAX_PREFIX = 1024

# What may follow a path prefix for it to match at a segment boundary.
_BOUNDARY = frozenset("/?#")

_Key = tuple[str | None, str | None]


def normalize_host(host: str, *, allow_wildcard: bool = False) -> str:
    """Return the canonical form of a Host value, so equal names compare equal in dict lookups.

    Lowercases, drops the port (``[::1]:8080`` -> ``[::1]``) and the trailing root dot. With
    ``allow_wildcard`` a leading ``*.`` label is kept (for claims, never for requests). Raises
    ``HeaderError`` (400, as RFC 9112 §3.2 requires for an invalid Host) on anything else.
    """
    if not host or not host.isascii():
        raise HeaderError(f"invalid host {host!r}")
    text = host.lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not _IPV6_RE.fullmatch(text, 1, end):
            raise HeaderError(f"invalid host {host!r}")
        rest = text[end + 1 :]
        if rest and not (rest[0] == ":" and _PORT_RE.fullmatch(rest, 1)):
            raise HeaderError(f"invalid host {host!r}")
        return text[: end + 1]
    name, colon, port = text.partition(":")
    if colon and not _PORT_RE.fullmatch(port):
        raise HeaderError(f"invalid host {host!r}")
    if name.endswith("."):
        name = name[:-1]
    bare = name[2:] if allow_wildcard and name.startswith("*.") else name
    if not bare or len(name) > _MAX_HOST or not _NAME_RE.fullmatch(bare):
        raise HeaderError(f"invalid host {host!r}")
    return name


def normalize_prefix(prefix: str | None) -> str | None:
    """Return a path prefix without trailing slashes, or ``None`` for "every path".

    ``None``, ``""`` and ``"/"`` all mean every path. Otherwise the prefix must be an absolute
    path of non-empty RFC 3986 segments, with no query, fragment or dot segment: a prefix that a
    request path could only reach after normalisation would silently never match.
    """
    if prefix is None or prefix == "":
        return None
    if not prefix.startswith("/") or len(prefix) > _MAX_PREFIX:
        raise HeaderError(f"invalid path prefix {prefix!r}")
    stripped = prefix.rstrip("/")
    if not stripped:
        return None
    for segment in stripped[1:].split("/"):
        if segment in (".", "..") or not _SEGMENT_RE.fullmatch(segment):
            raise HeaderError(f"invalid path prefix {prefix!r}")
    return stripped


@dataclass(frozen=True, slots=True)
class Claim:
    """One row of a routing-table snapshot (for metrics and debugging)."""

    host: str | None
    path_prefix: str | None
    service: str
    tunnels: int
    expires_at: float | None  # None while a tunnel holds it; else the end of its grace period


@dataclass(slots=True)
class _Entry:
    service: str
    tunnels: set[str] = field(default_factory=set)
    expires_at: float | None = None


class _Prefixes:
    """The path prefixes claimed under one host (or under no host): longest match wins."""

    __slots__ = ("longest_first", "services")

    def __init__(self) -> None:
        self.services: dict[str | None, str] = {}
        self.longest_first: list[str] = []

    def put(self, prefix: str | None, service: str) -> None:
        self.services[prefix] = service
        self._reorder()

    def drop(self, prefix: str | None) -> None:
        del self.services[prefix]
        self._reorder()

    def _reorder(self) -> None:
        # Claims change rarely and requests are many: sort here, not in lookup().
        self.longest_first = sorted((p for p in self.services if p), key=len, reverse=True)

    def lookup(self, path: str) -> tuple[str, str | None] | None:
        """The service and the prefix it was matched by (``None``: the prefix-less claim)."""
        for prefix in self.longest_first:
            if path.startswith(prefix) and (
                len(path) == len(prefix) or path[len(prefix)] in _BOUNDARY
            ):
                return self.services[prefix], prefix
        service = self.services.get(None)
        return None if service is None else (service, None)


class RoutingTable:
    """Maps (Host, path) to a service name; see the module docstring for the rules."""

    def __init__(self, *, default_service: str | None = "default", grace: float = 30.0) -> None:
        if not (math.isfinite(grace) and grace >= 0):
            raise ConfigError(f"grace must be a finite number of seconds >= 0, not {grace!r}")
        self.default_service = default_service
        self.grace = grace
        self._entries: dict[_Key, _Entry] = {}
        self._tunnels: dict[str, tuple[str, tuple[_Key, ...]]] = {}
        self._exact: dict[str, _Prefixes] = {}
        self._wild: dict[str, _Prefixes] = {}  # keyed by the suffix with its dot: ".example.com"
        self._hostless = _Prefixes()
        self._next_expiry = float("inf")

    def check_claim(
        self, service: str, hosts: Sequence[str], path_prefix: str | None, now: float
    ) -> None:
        """Refuse (409) a registration whose claims another service holds, live or in grace.

        Called before answering the upgrade, so the backend gets a real refusal it will not retry.
        Raises ``HeaderError`` if a host or the prefix is malformed.
        """
        self._check(service, _keys(hosts, path_prefix), now)

    def add(
        self,
        tunnel_key: str,
        service: str,
        hosts: Sequence[str],
        path_prefix: str | None,
        now: float,
    ) -> None:
        """Record a live tunnel's claims; re-checks conflicts so the table never holds two owners.

        Raises ``ValueError`` if ``tunnel_key`` is already present (a caller bug).
        """
        if tunnel_key in self._tunnels:
            raise ValueError(f"tunnel {tunnel_key!r} is already in the routing table")
        keys = _keys(hosts, path_prefix)
        self._check(service, keys, now)
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(service)
                self._index(key).put(key[1], service)
            entry.tunnels.add(tunnel_key)
            entry.expires_at = None
        self._tunnels[tunnel_key] = (service, keys)

    def remove(self, tunnel_key: str, now: float) -> None:
        """Forget a tunnel; claims it held alone keep routing until ``now + grace``.

        Unknown keys are ignored, so drivers may call this from any cleanup path.
        """
        record = self._tunnels.pop(tunnel_key, None)
        if record is None:
            return
        for key in record[1]:
            entry = self._entries[key]
            entry.tunnels.discard(tunnel_key)
            if entry.tunnels:
                continue
            if self.grace > 0:
                entry.expires_at = now + self.grace
                self._next_expiry = min(self._next_expiry, entry.expires_at)
            else:
                self._forget(key)

    def match(self, host: str, path: str, now: float) -> str | None:
        """Return the service for a request, or ``None`` (404).

        ``host`` is the raw Host / ``:authority`` value; ``""`` means the request had none, and
        only host-less claims and the catch-all can match it. ``path`` is compared as given (raw,
        query allowed). Raises ``HeaderError`` for a malformed host.
        """
        found = self.route(host, path, now)
        return None if found is None else found[0]

    def route(self, host: str, path: str, now: float) -> tuple[str, str | None] | None:
        """Like :meth:`match`, with the path prefix of the claim that matched (``None`` for a
        prefix-less claim or the catch-all): the part a ``strip_prefix`` tunnel does not see."""
        if now >= self._next_expiry:
            self._purge(now)
        if host:
            name = normalize_host(host)
            prefixes = self._exact.get(name)
            if prefixes is not None:
                found = prefixes.lookup(path)
                if found is not None:
                    return found
            if self._wild:
                dot = name.find(".")
                while dot > 0:
                    prefixes = self._wild.get(name[dot:])
                    if prefixes is not None:
                        found = prefixes.lookup(path)
                        if found is not None:
                            return found
                    dot = name.find(".", dot + 1)
        found = self._hostless.lookup(path)
        if found is not None:
            return found
        return None if self.default_service is None else (self.default_service, None)

    def claims(self, now: float) -> list[Claim]:
        """Snapshot every claim still in force, sorted by host then prefix."""
        if now >= self._next_expiry:
            self._purge(now)
        rows = [
            Claim(key[0], key[1], entry.service, len(entry.tunnels), entry.expires_at)
            for key, entry in self._entries.items()
        ]
        rows.sort(key=lambda c: (c.host or "", c.path_prefix or ""))
        return rows

    def _check(self, service: str, keys: tuple[_Key, ...], now: float) -> None:
        if now >= self._next_expiry:
            self._purge(now)
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and entry.service != service:
                host, prefix = key
                where = f"host {host}" if host else "host-less claim"
                raise HandshakeRefused(
                    409,
                    f"{where} with path prefix {prefix or '/'} is held by service "
                    f"{entry.service!r}",
                )

    def _index(self, key: _Key) -> _Prefixes:
        host = key[0]
        if host is None:
            return self._hostless
        table, name = (self._wild, host[1:]) if host.startswith("*.") else (self._exact, host)
        prefixes = table.get(name)
        if prefixes is None:
            prefixes = table[name] = _Prefixes()
        return prefixes

    def _forget(self, key: _Key) -> None:
        del self._entries[key]
        prefixes = self._index(key)
        prefixes.drop(key[1])
        host = key[0]
        if host is not None and not prefixes.services:
            if host.startswith("*."):
                del self._wild[host[1:]]
            else:
                del self._exact[host]

    def _purge(self, now: float) -> None:
        # Grace claims are few, so a full scan whenever the earliest one expires is cheap.
        expired = [
            key
            for key, entry in self._entries.items()
            if entry.expires_at is not None and entry.expires_at <= now
        ]
        for key in expired:
            self._forget(key)
        self._next_expiry = min(
            (e.expires_at for e in self._entries.values() if e.expires_at is not None),
            default=float("inf"),
        )


def _keys(hosts: Sequence[str], path_prefix: str | None) -> tuple[_Key, ...]:
    """The claim keys one registration makes, normalised and without duplicates."""
    prefix = normalize_prefix(path_prefix)
    if isinstance(hosts, str):  # a bare string would claim each of its characters
        raise TypeError("hosts must be a sequence of host names, not a string")
    if not hosts:
        return () if prefix is None else ((None, prefix),)
    names = dict.fromkeys(normalize_host(h, allow_wildcard=True) for h in hosts)
    return tuple((name, prefix) for name in names)
