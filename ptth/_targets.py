"""What the helper dials: one :class:`Target` per router, and per address of a router name
that resolves to several (ARCHITECTURE.md, "Several routers").

A name such as ``routers.example.com`` listing three A/AAAA records is three routers to the
helper, like cloudflared's edge addresses: each address gets its own connectors and tunnels,
while TLS, SNI and the handshake's ``Host`` keep the name. :func:`watch` resolves the name again
every ``interval`` seconds (sooner when asked, e.g. after a failed dial) and reports the
addresses that appeared and vanished; the helper drains the tunnels of a vanished one.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from .proto.address import RouterAddress, format_address
from .proto.connect import ProxyURL

__all__ = ["Target", "expands", "resolve", "watch"]

log = logging.getLogger("ptth.backend")

# Soonest a failed dial may trigger another lookup of the same name.
MIN_RESOLVE_INTERVAL = 1.0


@dataclass(frozen=True)
class Target:
    """One router as the helper dials it: the address given, and the IP it resolved to (None:
    dial the name itself, e.g. an IP literal, a name behind a proxy, or an http(s) router)."""

    address: RouterAddress
    ip: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        """Where the connection goes: the address dialled and its port."""
        return (self.ip or self.address.host, self.address.port)

    def __str__(self) -> str:
        authority = format_address(self.address.host, self.address.port)
        return authority if self.ip is None else f"{authority} ({self.ip})"


def expands(address: RouterAddress, proxy: ProxyURL | None) -> bool:
    """Whether each address of ``address.host`` is dialled as a router of its own: not for
    IP literals, not through a proxy (the proxy resolves), not for http(s):// (the HTTP client
    resolves, and a session belongs to one server anyway), and not for ``localhost`` (RFC 6761
    §6.3): its ``::1`` and ``127.0.0.1`` are one machine, where a router usually listens on one
    of them, so the name is dialled as such (either address that answers)."""
    if proxy is not None or address.scheme in ("http", "https"):
        return False
    name = address.host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        return True
    return False


async def resolve(host: str, port: int) -> list[str]:
    """Every address of ``host`` (IPv4 and IPv6), in the resolver's order, without repeats."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def watch(
    address: RouterAddress,
    interval: float,
    changed: Callable[[set[str], set[str]], Awaitable[None]],
    wake: Callable[[], anyio.Event],
    resolver: Callable[[str, int], Awaitable[list[str]]] = resolve,
) -> None:
    """Resolve ``address.host`` now and every ``interval`` s (or when the event ``wake()``
    returns is set, at most once a second); call ``changed(added, removed)`` when the set of
    addresses differs. A failed lookup keeps the addresses known so far (one log line)."""
    known: set[str] = set()
    failing = False
    while True:
        try:
            found = set(await resolver(address.host, address.port))
        except OSError as exc:
            if not failing:
                log.warning(
                    "router %s: cannot resolve %s: %s; keeping %d known address(es), retrying",
                    address,
                    address.host,
                    exc.strerror or exc,
                    len(known),
                )
            failing = True
            found = known
        else:
            if failing:
                log.info("router %s: %s resolves again", address, address.host)
            failing = False
            if not found:
                found = known  # an empty answer is not a reason to drop every router
        added, removed = found - known, known - found
        if added or removed:
            if known:
                log.info(
                    "router %s: %s now resolves to %s (added %s, removed %s)",
                    address,
                    address.host,
                    ", ".join(sorted(found)),
                    ", ".join(sorted(added)) or "none",
                    ", ".join(sorted(removed)) or "none",
                )
            elif len(found) > 1:
                log.info(
                    "router %s: %s resolves to %d addresses (%s); each is dialled as a router",
                    address,
                    address.host,
                    len(found),
                    ", ".join(sorted(found)),
                )
            known = found
            await changed(added, removed)
        # At most one lookup a second, however often dials fail and ask for one.
        pause = min(MIN_RESOLVE_INTERVAL, interval)
        await anyio.sleep(pause)
        with anyio.move_on_after(interval - pause):
            await wake().wait()
