"""Host names in one canonical form, so that equal names compare equal (ARCHITECTURE.md,
"Identities and claims"); no I/O.

Two entry points with one set of rules:

- :func:`normalize_host` for a request's Host / ``:authority``: hot path, ASCII only (clients
  send A-labels, RFC 5890 §2.3.2.1), lowercased, port and trailing root dot dropped.
- :func:`normalize_claim` for a host a backend claims: the same, and also IDNA (UTS #46) so that
  ``Bücher.example``, ``bücher.example.`` and ``xn--bcher-kva.example:443`` are one name, and an
  ``xn--`` label that does not decode is refused rather than left to never match.
"""

from __future__ import annotations

import re

import idna

from ..errors import HeaderError

__all__ = ["MAX_HOST", "normalize_claim", "normalize_host"]

# A DNS name or IPv4 address: LDH labels (underscore tolerated for internal names), no empty label.
_NAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*)(?:\.[a-z0-9_][a-z0-9_-]*)*")
# An IP literal's inside (RFC 3986 §3.2.2); zone ids and IPvFuture are not routable names.
_IPV6_RE = re.compile(r"[0-9a-f:.]+")
_PORT_RE = re.compile(r"[0-9]{0,5}")
_LABEL_MAX = 63  # RFC 1035 §2.3.4
MAX_HOST = 253  # RFC 1035 §2.3.4 name length, as text without the trailing dot


def normalize_host(host: str, *, allow_wildcard: bool = False) -> str:
    """Return the canonical form of an ASCII Host value.

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
    if not bare or len(name) > MAX_HOST or not _NAME_RE.fullmatch(bare):
        raise HeaderError(f"invalid host {host!r}")
    return name


def normalize_claim(host: str) -> str:
    """The canonical A-label form of a claimed host (``*.`` wildcard allowed), or HeaderError.

    Idempotent: ``normalize_claim(normalize_claim(h)) == normalize_claim(h)``.
    """
    text = host.strip()
    if text.startswith("["):
        return normalize_host(text)
    name, colon, port = text.partition(":")
    if colon and not (port and _PORT_RE.fullmatch(port)):
        raise HeaderError(f"invalid host {host!r}")
    wildcard = name.startswith("*.")
    bare = name[2:] if wildcard else name
    if bare.endswith("."):
        bare = bare[:-1]
    if not bare.isascii():
        try:
            bare = idna.encode(bare, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            reason = f"invalid host {host!r} (not a valid internationalised name)"
            raise HeaderError(reason) from None
    bare = bare.lower()
    for label in bare.split("."):
        if len(label) > _LABEL_MAX:
            raise HeaderError(f"invalid host {host!r} (label over {_LABEL_MAX} characters)")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                raise HeaderError(f"invalid host {host!r} (bad A-label {label!r})") from None
    return normalize_host(("*." if wildcard else "") + bare, allow_wildcard=True)
