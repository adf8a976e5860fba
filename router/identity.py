"""Who a backend is, and what it may claim (ARCHITECTURE.md, "Identities and claims"); no I/O.

An identity is, in order of precedence:

- ``token:<name>``: a valid token from the tokens file; it may claim only the services and
  host patterns of its entry (403 otherwise);
- ``shared``: the one ``--token`` (everyone holding it is the same identity);
- ``key:<label>``: no token, but a TLS client certificate whose public key's SHA-256 gives the
  label (``ptth.proto.keyid``); with ``--domain`` it is granted ``<label>.<domain>`` and may claim
  only that name and names under it;
- ``anonymous``: no token required, none given, no certificate.

Names of the form ``<label>.<domain>`` (and below) are reserved to the holder of that key
whatever else the backend presents; hosts of the router itself can never be claimed.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ptth.errors import HandshakeRefused, HeaderError
from ptth.proto.handshake import Registration
from ptth.proto.hostnames import normalize_claim
from ptth.proto.keyid import key_label

from .tokens import ANY, TokenBook, TokenEntry

__all__ = ["Authorizer", "Identity", "reserved_hosts"]

_LABEL_RE = re.compile(r"^[a-z2-7]{26}$")


@dataclass(frozen=True)
class Identity:
    """The owner of a tunnel's claims."""

    owner: str  # the routing table's owner key: "token:alice", "shared", "key:<label>", ...
    entry: TokenEntry | None = None  # the tokens-file entry, for token identities
    label: str | None = None  # the key label, when a client certificate was presented
    fingerprint: bytes | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.owner


class Authorizer:
    """The policy the tunnel port applies to a parsed registration."""

    def __init__(
        self,
        *,
        token: str | None = None,
        tokens: TokenBook | None = None,
        domain: str | None = None,
        reserved: Iterable[str] = (),
    ) -> None:
        self.token = token
        self.tokens = tokens
        self.domain = normalize_claim(domain) if domain else None
        names = {normalize_claim(h) for h in reserved}
        if self.domain is not None:
            names.add(self.domain)  # the router's own name under which keys get theirs
        self.reserved = frozenset(names)

    @property
    def requires_token(self) -> bool:
        return self.token is not None or self.tokens is not None

    def identify(self, token: str | None, fingerprint: bytes | None) -> Identity:
        """Raises HandshakeRefused(401) when a token is required and missing or wrong."""
        label = key_label(fingerprint) if fingerprint is not None else None
        if token is not None and self.tokens is not None:
            entry = self.tokens.find(token)
            if entry is None:
                raise HandshakeRefused(401, "missing or invalid bearer token")
            return Identity(f"token:{entry.name}", entry, label, fingerprint)
        if token is not None and self.token is not None:
            if not hmac.compare_digest(self.token.encode(), token.encode()):
                raise HandshakeRefused(401, "missing or invalid bearer token")
            return Identity("shared", None, label, fingerprint)
        if label is not None and (self.domain is not None or not self.requires_token):
            return Identity(f"key:{label}", None, label, fingerprint)
        if self.requires_token:
            raise HandshakeRefused(401, "missing or invalid bearer token")
        return Identity("anonymous", None, None)

    def authorize(self, identity: Identity, registration: Registration) -> Registration:
        """The registration with its hosts in canonical form (and a key identity's granted name
        added); HandshakeRefused(403) for a claim this identity may not make."""
        try:
            hosts = [normalize_claim(h) for h in registration.hosts]
        except HeaderError as exc:
            raise HandshakeRefused(400, str(exc)) from None
        granted = self.key_host(identity)
        key_only = identity.owner.startswith("key:")
        if key_only and granted is not None and not hosts:
            hosts = [granted]
        entry = identity.entry
        if entry is not None and not entry.allows_service(registration.service):
            raise HandshakeRefused(
                403, f"this token may not register service {registration.service!r}"
            )
        claims: list[str | None] = list(hosts) or [None]
        for host in claims:
            self._check_host(identity, host, entry, key_only, granted)
        return replace(registration, hosts=tuple(dict.fromkeys(hosts)))

    def key_host(self, identity: Identity) -> str | None:
        """``<label>.<domain>`` for a backend that presented a key, when a domain is set."""
        if identity.label is None or self.domain is None:
            return None
        return f"{identity.label}.{self.domain}"

    def _check_host(
        self,
        identity: Identity,
        host: str | None,
        entry: TokenEntry | None,
        key_only: bool,
        granted: str | None,
    ) -> None:
        shown = host or "a host-less claim (every host)"
        if host is not None:
            bare = host[2:] if host.startswith("*.") else host
            if bare in self.reserved:
                raise HandshakeRefused(403, f"host {bare} is reserved for the router")
            covered = self._covered_reserved(bare) if host.startswith("*.") else None
            if covered is not None:
                raise HandshakeRefused(
                    403, f"wildcard {host} would cover {covered}, reserved for the router"
                )
            owner_label = self._key_label_of(bare)
            if owner_label is not None:
                if owner_label != identity.label:
                    raise HandshakeRefused(403, f"host {host} belongs to another key")
                return  # the key's own names: allowed whatever the token says
            if (
                self.domain is not None
                and host.startswith("*.")
                and (self.domain == bare or self.domain.endswith("." + bare))
            ):
                raise HandshakeRefused(
                    403, f"wildcard {host} would cover the key names under {self.domain}"
                )
        if key_only:
            raise HandshakeRefused(
                403,
                f"a key identity may claim only {granted or '<label>.<domain>'} and names "
                f"under it, not {shown}",
            )
        if entry is not None and not entry.allows_host(host):
            raise HandshakeRefused(403, f"this token may not claim {shown}")

    def _key_label_of(self, name: str) -> str | None:
        """The key label if ``name`` is ``<label>.<domain>`` or below it, else None."""
        if self.domain is None or not name.endswith("." + self.domain):
            return None
        label = name[: -len(self.domain) - 1].rsplit(".", 1)[-1]
        return label if _LABEL_RE.match(label) else None

    def _covered_reserved(self, suffix: str) -> str | None:
        return next((r for r in sorted(self.reserved) if r.endswith("." + suffix)), None)


def reserved_hosts(addresses: Iterable[str], extra: Iterable[str], domain: str | None) -> set[str]:
    """The router's own names: its listening hosts (not wildcards), ``localhost``, the domain
    apex, and the operator's ``--reserved-hosts``."""
    names = {"localhost"}
    for address in addresses:
        host = address.rpartition(":")[0].strip("[]") if ":" in address else address
        if host and host not in ("0.0.0.0", "::", "*"):
            names.add(f"[{host}]" if ":" in host else host)
    names.update(h for h in extra if h and h != ANY)
    if domain:
        names.add(domain)
    return names
