"""The tokens file (``--tokens FILE``): one ``[[token]]`` table per identity; no I/O but reading
the file.

    [[token]]
    name = "alice"
    token_sha256 = "5e884898da28047151d0e56f8dc62927..."   # or: token = "..."
    services = ["api"]                                       # "*" = any service
    hosts = ["api.example.com", "*.alice.example.com"]       # "*" = any host and host-less claims

Tokens are kept only as SHA-256 digests and a presented token is compared against every entry
in constant time (ARCHITECTURE.md, "Identities and claims"). Exact host names listed here belong
to their identity for as long as the file says so: no other identity may claim them, connected
or not.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ptth.errors import ConfigError, HeaderError
from ptth.proto.hostnames import normalize_claim

__all__ = ["TokenBook", "TokenEntry", "host_allowed", "load_tokens", "parse_tokens"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]{1,4096}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_KEYS = frozenset({"name", "token", "token_sha256", "services", "hosts"})
ANY = "*"


@dataclass(frozen=True)
class TokenEntry:
    """One identity: its name, its token's digest, and what it may claim."""

    name: str
    digest: bytes
    services: tuple[str, ...]  # ("*",) = any
    hosts: tuple[str, ...]  # canonical patterns; ("*",) = any

    def allows_service(self, service: str) -> bool:
        return ANY in self.services or service in self.services

    def allows_host(self, host: str | None) -> bool:
        """``host`` canonical (a name or ``*.suffix``), or ``None`` for a host-less claim."""
        return any(host_allowed(pattern, host) for pattern in self.hosts)


def host_allowed(pattern: str, host: str | None) -> bool:
    """Whether a tokens-file host pattern covers a claim.

    ``*`` covers everything, host-less claims included; ``*.example.com`` covers every name under
    ``example.com`` and wildcard claims under it (``*.example.com``, ``*.a.example.com``), not
    ``example.com`` itself; any other pattern covers exactly that name.
    """
    if pattern == ANY:
        return True
    if host is None:
        return False
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        name = host[2:] if host.startswith("*.") else host
        return name.endswith(suffix) or (host.startswith("*.") and "." + name == suffix)
    return host == pattern


class TokenBook:
    """The identities of a tokens file, looked up by presented token."""

    def __init__(self, entries: Sequence[TokenEntry], source: str = "<tokens>") -> None:
        self.entries = tuple(entries)
        self.source = source

    def find(self, token: str) -> TokenEntry | None:
        """The entry whose token this is; every entry is compared (no early exit)."""
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found: TokenEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found

    def owned_hosts(self) -> dict[str, str]:
        """Exact host names mapped to the identity that owns them (for the routing table)."""
        return {
            host: entry.name
            for entry in self.entries
            for host in entry.hosts
            if host != ANY and not host.startswith("*.")
        }

    def __len__(self) -> int:
        return len(self.entries)


def load_tokens(path: str) -> TokenBook:
    """Read and validate a tokens file; ConfigError names the file, the entry, the key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read tokens file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # tomllib raises the last two for a file that is not UTF-8 and for deep nesting: on
        # SIGHUP anything but a ConfigError would stop the router.
        raise ConfigError(f"tokens file {path} is not valid TOML: {exc}") from None
    return parse_tokens(data, path)


def parse_tokens(data: Mapping[str, Any], source: str = "<tokens>") -> TokenBook:
    unknown = set(data) - {"token"}
    if unknown:
        raise ConfigError(
            f"tokens file {source}: unknown top-level key {sorted(unknown)[0]!r} "
            "(expected only [[token]] tables)"
        )
    tables = data.get("token", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"tokens file {source}: 'token' must be an array of tables ([[token]])")
    entries: list[TokenEntry] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    owners: dict[str, str] = {}
    for number, table in enumerate(tables, 1):
        entry = _entry(table, f"tokens file {source}: [[token]] #{number}")
        where = f"tokens file {source}: [[token]] #{number} ({entry.name!r})"
        if entry.name in names:
            raise ConfigError(f"{where}: name {entry.name!r} is used twice")
        if entry.digest in digests:
            raise ConfigError(f"{where}: the same token is given to two identities")
        for host in entry.hosts:
            if host != ANY and not host.startswith("*."):
                other = owners.setdefault(host, entry.name)
                if other != entry.name:
                    raise ConfigError(
                        f"{where}: host {host!r} is already listed for identity {other!r}"
                    )
        names.add(entry.name)
        digests.add(entry.digest)
        entries.append(entry)
    return TokenBook(entries, source)


def _entry(table: Mapping[str, Any], where: str) -> TokenEntry:
    for key in table:
        if key not in _KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (expected one of {sorted(_KEYS)})")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{where}: 'name' = {name!r}: expected 1-64 letters, digits, '.', '_' or '-'"
        )
    where = f"{where} ({name!r})"
    token, hashed = table.get("token"), table.get("token_sha256")
    if (token is None) == (hashed is None):
        raise ConfigError(f"{where}: give exactly one of 'token' and 'token_sha256'")
    if token is not None:
        if not isinstance(token, str) or not _TOKEN_RE.match(token):
            raise ConfigError(f"{where}: 'token': expected 1-4096 visible ASCII characters")
        digest = hashlib.sha256(token.encode("utf-8")).digest()
    else:
        if not isinstance(hashed, str) or not _HEX_RE.match(hashed):
            raise ConfigError(
                f"{where}: 'token_sha256' = {hashed!r}: expected 64 hexadecimal digits "
                "(sha256sum of the token)"
            )
        digest = bytes.fromhex(hashed)
    services = _string_list(table, "services", where)
    for service in services:
        if service != ANY and not _SERVICE_RE.match(service):
            raise ConfigError(f"{where}: 'services' has {service!r}: not a service name")
    hosts: list[str] = []
    for host in _string_list(table, "hosts", where):
        if host == ANY:
            hosts.append(ANY)
            continue
        try:
            hosts.append(normalize_claim(host))
        except HeaderError:
            raise ConfigError(
                f"{where}: 'hosts' has {host!r}: expected a host name, '*.domain' or '*'"
            ) from None
    return TokenEntry(name, digest, tuple(dict.fromkeys(services)), tuple(dict.fromkeys(hosts)))


def _string_list(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key)
    if value is None:
        raise ConfigError(f'{where}: {key!r} is missing (a list; ["*"] allows any)')
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key!r} = {value!r}: expected a list of strings")
    return list(value)
