"""The routing table: which service answers a (Host, path) pair.

Pure code, no I/O: time comes in as ``now`` so grace periods are testable without a clock.

A tunnel registers hosts ``H`` and a path prefix ``P``; it then *claims* every ``(h, P)`` for
``h`` in ``H``, or ``(None, P)`` when it names no host; a tunnel of the catch-all service that
names neither claims ``(None, None)``, the catch-all itself. A claim belongs to one *owner* (an
identity, ARCHITECTURE.md "Identities and claims") and one service; the tunnels of that owner
and service that hold it are the pool the balancer picks from, so a backend of the same service
but another identity never receives it. When the last tunnel holding a claim goes away the claim
stays for ``grace`` seconds, still routing to its service, so a restarting backend makes its users
see 503 (retry soon) rather than 404 (gone), and another identity cannot grab its hosts in the
meantime. Hosts an operator assigned to an identity (``owned``) can never be claimed by another,
and a request for one is matched against that identity's claims only: while it is away another's
wildcard or host-less claim does not receive its users (stage 4 answers them instead).

``match`` order (first hit wins, each stage falls through to the next):

1. claims on the exact host, longest path prefix first;
2. wildcard claims (``*.example.com``), longest host suffix first, then longest path prefix;
3. host-less claims, longest path prefix first, then the catch-all claim ``(None, None)``;
4. ``default_service`` with no tunnel (503 until one registers; ``None`` turns the catch-all
   off, so the answer is 404).

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
from ptth.proto.hostnames import normalize_claim, normalize_host

__all__ = ["Claim", "Route", "RoutingTable", "normalize_host", "normalize_prefix"]

# RFC 3986 pchar without "%" (checked separately as %XX): unreserved, sub-delims, ":" and "@".
_SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+")
_MAX_PREFIX = 1024

# What may follow a path prefix for it to match at a segment boundary.
_BOUNDARY = frozenset("/?#")

_Key = tuple[str | None, str | None]


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
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the service, the path prefix that matched (the part a
    ``strip_prefix`` tunnel does not see), and the claim whose tunnels serve it (``None``: the
    catch-all service with no tunnel holding the catch-all claim)."""

    service: str
    prefix: str | None
    claim: _Key | None


@dataclass(slots=True)
class _Entry:
    service: str
    owner: str
    tunnels: set[str] = field(default_factory=set)
    expires_at: float | None = None


class _Prefixes:
    """The path prefixes claimed under one host (or under no host): longest match wins."""

    __slots__ = ("host", "longest_first", "owners", "services")

    def __init__(self, host: str | None) -> None:
        self.host = host  # the claim key's host: a name, "*.suffix", or None
        self.services: dict[str | None, str] = {}
        self.owners: dict[str | None, str] = {}
        self.longest_first: list[str] = []

    def put(self, prefix: str | None, service: str, owner: str) -> None:
        self.services[prefix] = service
        self.owners[prefix] = owner
        self._reorder()

    def drop(self, prefix: str | None) -> None:
        del self.services[prefix]
        del self.owners[prefix]
        self._reorder()

    def _reorder(self) -> None:
        # Claims change rarely and requests are many: sort here, not in lookup().
        self.longest_first = sorted((p for p in self.services if p), key=len, reverse=True)

    def lookup(self, path: str, owner: str | None = None) -> Route | None:
        """The longest matching claim; with ``owner``, only that owner's claims count."""
        for prefix in self.longest_first:
            if (
                (owner is None or self.owners[prefix] == owner)
                and path.startswith(prefix)
                and (len(path) == len(prefix) or path[len(prefix)] in _BOUNDARY)
            ):
                return Route(self.services[prefix], prefix, (self.host, prefix))
        service = self.services.get(None)
        if service is None or (owner is not None and self.owners[None] != owner):
            return None
        return Route(service, None, (self.host, None))


class RoutingTable:
    """Maps (Host, path) to a :class:`Route`; see the module docstring for the rules."""

    def __init__(self, *, default_service: str | None = "default", grace: float = 30.0) -> None:
        if not (math.isfinite(grace) and grace >= 0):
            raise ConfigError(f"grace must be a finite number of seconds >= 0, not {grace!r}")
        self.default_service = default_service
        self.grace = grace
        self._entries: dict[_Key, _Entry] = {}
        self._tunnels: dict[str, tuple[str, tuple[_Key, ...]]] = {}
        self._exact: dict[str, _Prefixes] = {}
        self._wild: dict[str, _Prefixes] = {}  # keyed by the suffix with its dot: ".example.com"
        self._hostless = _Prefixes(None)
        self._next_expiry = float("inf")
        self._owned: dict[str, str] = {}

    def set_owned(self, owned: dict[str, str]) -> None:
        """Hosts (canonical, exact) that belong to one owner whatever is connected (the tokens
        file's exact host names): every other owner's claim on them is refused."""
        self._owned = dict(owned)

    def keys_for(
        self, service: str, hosts: Sequence[str], path_prefix: str | None
    ) -> tuple[_Key, ...]:
        """The claim keys one registration makes, normalised and without duplicates."""
        return _keys(hosts, path_prefix, catch_all=service == self.default_service)

    def check_claim(
        self,
        service: str,
        hosts: Sequence[str],
        path_prefix: str | None,
        now: float,
        owner: str = "",
    ) -> None:
        """Refuse (409) a registration whose claims another owner or service holds, live or in
        grace, or that names a host owned by another identity.

        Called before answering the upgrade, so the backend gets a real refusal.
        Raises ``HeaderError`` if a host or the prefix is malformed.
        """
        self._check(service, owner, self.keys_for(service, hosts, path_prefix), now)

    def add(
        self,
        tunnel_key: str,
        service: str,
        hosts: Sequence[str],
        path_prefix: str | None,
        now: float,
        owner: str = "",
    ) -> None:
        """Record a live tunnel's claims; re-checks conflicts so the table never holds two owners.

        Raises ``ValueError`` if ``tunnel_key`` is already present (a caller bug).
        """
        if tunnel_key in self._tunnels:
            raise ValueError(f"tunnel {tunnel_key!r} is already in the routing table")
        keys = self.keys_for(service, hosts, path_prefix)
        self._check(service, owner, keys, now)
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(service, owner)
                self._index(key).put(key[1], service, owner)
            entry.tunnels.add(tunnel_key)
            entry.expires_at = None
        self._tunnels[tunnel_key] = (service, keys)

    def remove(self, tunnel_key: str, now: float, *, keep_claims: bool = True) -> None:
        """Forget a tunnel; claims it held alone keep routing until ``now + grace`` (or are
        forgotten at once with ``keep_claims=False``: a revoked identity keeps nothing).

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
            if self.grace > 0 and keep_claims:
                entry.expires_at = now + self.grace
                self._next_expiry = min(self._next_expiry, entry.expires_at)
            else:
                self._forget(key)

    def holders(self, claim: _Key) -> frozenset[str] | set[str]:
        """The tunnels holding a claim right now (empty during its grace period)."""
        entry = self._entries.get(claim)
        return entry.tunnels if entry is not None else frozenset()

    def match(self, host: str, path: str, now: float) -> str | None:
        """Return the service for a request, or ``None`` (404).

        ``host`` is the raw Host / ``:authority`` value; ``""`` means the request had none, and
        only host-less claims and the catch-all can match it. ``path`` is compared as given (raw,
        query allowed). Raises ``HeaderError`` for a malformed host.
        """
        found = self.route(host, path, now)
        return None if found is None else found.service

    def route(self, host: str, path: str, now: float) -> Route | None:
        """Like :meth:`match`, with the matched prefix and claim (see :class:`Route`)."""
        if now >= self._next_expiry:
            self._purge(now)
        # A host the tokens file gives to an identity is served by that identity's claims only,
        # connected or not: not by another's wildcard or host-less claim while it is away.
        owner: str | None = None
        if host:
            name = normalize_host(host)
            owner = self._owned.get(name) if self._owned else None
            prefixes = self._exact.get(name)
            if prefixes is not None:
                found = prefixes.lookup(path, owner)
                if found is not None:
                    return found
            if self._wild:
                dot = name.find(".")
                while dot > 0:
                    prefixes = self._wild.get(name[dot:])
                    if prefixes is not None:
                        found = prefixes.lookup(path, owner)
                        if found is not None:
                            return found
                    dot = name.find(".", dot + 1)
        found = self._hostless.lookup(path, owner)
        if found is not None:
            return found
        return None if self.default_service is None else Route(self.default_service, None, None)

    def claims(self, now: float) -> list[Claim]:
        """Snapshot every claim still in force, sorted by host then prefix."""
        if now >= self._next_expiry:
            self._purge(now)
        rows = [
            Claim(key[0], key[1], entry.service, len(entry.tunnels), entry.expires_at, entry.owner)
            for key, entry in self._entries.items()
        ]
        rows.sort(key=lambda c: (c.host or "", c.path_prefix or ""))
        return rows

    def _check(self, service: str, owner: str, keys: tuple[_Key, ...], now: float) -> None:
        if now >= self._next_expiry:
            self._purge(now)
        for key in keys:
            host, prefix = key
            where = f"host {host}" if host else "host-less claim"
            if prefix is None and host is None:
                where = "the catch-all"
            held_by = self._owned.get(host) if host is not None else None
            if held_by is not None and held_by != owner:
                raise HandshakeRefused(409, f"{where} belongs to another identity")
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.owner != owner:
                raise HandshakeRefused(
                    409, f"{where} with path prefix {prefix or '/'} is held by another identity"
                )
            if entry.service != service:
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
            prefixes = table[name] = _Prefixes(host)
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


def _keys(
    hosts: Sequence[str], path_prefix: str | None, *, catch_all: bool = False
) -> tuple[_Key, ...]:
    """The claim keys one registration makes, normalised and without duplicates."""
    prefix = normalize_prefix(path_prefix)
    if isinstance(hosts, str):  # a bare string would claim each of its characters
        raise TypeError("hosts must be a sequence of host names, not a string")
    if not hosts:
        if prefix is None:
            return ((None, None),) if catch_all else ()
        return ((None, prefix),)
    names = dict.fromkeys(normalize_claim(h) for h in hosts)
    return tuple((name, prefix) for name in names)
