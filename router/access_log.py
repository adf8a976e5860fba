"""The access log: one line per proxied request on the ``router.access`` logger.

The proxies call :func:`enabled` first, so a router run with ``--no-access-log`` or a level above
INFO formats nothing. The human line keeps the shape scripts read (``client METHOD host path
status bytes_out durationms tunnel=ID``, then ``instance=``); ``--log-format json`` gets every
field through ``extra=`` (ptth/logs.py). Header values are never logged; the path is, and the
handler's masking hides credential-looking query values (ARCHITECTURE.md, "Logs").
"""

from __future__ import annotations

import logging

from .config import RouterConfig

__all__ = ["enabled", "write"]

log = logging.getLogger("router.access")


def enabled(config: RouterConfig) -> bool:
    return config.access_log and log.isEnabledFor(logging.INFO)


def write(
    *,
    kind: str,
    client: str,
    method: str,
    host: str,
    path: str,
    status: int,
    bytes_in: int,
    bytes_out: int,
    duration_ms: float,
    tunnel_id: str,
    instance: str,
    service: str,
    close_code: int | None = None,
) -> None:
    """One finished request (``kind`` "http") or WebSocket session (``kind`` "websocket")."""
    fields: dict[str, object] = {
        "event": "request",
        "kind": kind,
        "client": client,
        "method": method,
        "host": host,
        "path": path,
        "status": status,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": round(duration_ms, 1),
        "tunnel_id": tunnel_id,
        "instance": instance,
        "service": service,
    }
    if kind == "websocket":
        fields["close_code"] = close_code
        log.info(
            "%s WEBSOCKET %s %s %d %d/%d close=%s %.1fms tunnel=%s instance=%s",
            client,
            host,
            path,
            status,
            bytes_in,
            bytes_out,
            close_code if close_code is not None else "-",
            duration_ms,
            tunnel_id,
            instance,
            extra=fields,
        )
        return
    log.info(
        "%s %s %s %s %d %d %.1fms tunnel=%s instance=%s",
        client,
        method,
        host,
        path,
        status,
        bytes_out,
        duration_ms,
        tunnel_id,
        instance,
        extra=fields,
    )
