"""The router's RFC 7239 ``Forwarded`` element, read back by the helper (pure: no I/O).

The router appends one element per request (``router.proxy_common.forwarded_element``):
``for`` the user's address and port, ``by`` the router's, ``proto``, ``host`` and the extension
parameter ``version`` (RFC 7239 §5.5), the user's HTTP version. The router drops users' own
Forwarded fields (a trusted proxy's are kept, before ours), so the last element is always the
router's. :func:`take_hop` removes that element from the fields the app sees and returns it, so
the ASGI scope gets ``client``, ``server`` and ``http_version`` as the user's hop had them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Headers

__all__ = ["Hop", "take_hop"]


@dataclass(frozen=True)
class Hop:
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    http_version: str | None


def _node(value: str) -> tuple[str, int] | None:
    """``1.2.3.4:5``, ``[::1]:5`` or a bare host (port 0)."""
    value = value.strip().strip('"')
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if not host or host.lower() == "unknown":
        return None
    return (host, int(port) if port.isdigit() else 0)


def _params(element: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in element.split(";"):
        key, sep, value = pair.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return params


def take_hop(headers: Headers) -> tuple[Headers, Hop | None]:
    """The fields without the router's Forwarded element, and that element (None: absent)."""
    index = None
    for i, (name, _) in enumerate(headers):
        if name == b"forwarded":
            index = i
    if index is None:
        return headers, None
    value = headers[index][1].decode("latin-1")
    outer, _, last = value.rpartition(",")
    params = _params(last)
    version = params.get("version")
    hop = Hop(
        client=_node(params["for"]) if "for" in params else None,
        server=_node(params["by"]) if "by" in params else None,
        http_version=version if version in ("1.0", "1.1", "2", "3") else None,
    )
    rest = list(headers[:index])
    if outer.strip():
        rest.append((b"forwarded", outer.strip().encode("latin-1")))
    rest.extend(headers[index + 1 :])
    return rest, hop
