"""Log output for both command lines (``python -m router``, ``python -m ptth``).

The library modules only log, through ``logging.getLogger(...)`` and ``extra=`` for structured
fields (tunnel_id, instance, service, method, path, status, duration_ms, ...); they never
configure handlers. :func:`configure` is what the two CLIs call: one stderr handler, human lines
by default (``%(asctime)s LEVEL name: message``, the shape scripts and tests read), or one JSON
object per line with ``--log-format json``. Both formats pass every line through
:func:`mask_secrets`, a safety net: no line logged should hold a credential in the first place
(ARCHITECTURE.md, "Logs").
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import TextIO

__all__ = [
    "LOG_FORMATS",
    "JSONFormatter",
    "MaskingFormatter",
    "configure",
    "drain_summary",
    "mask_secrets",
    "tunnel_fields",
]

LOG_FORMATS = ("human", "json")

# Loggers of libraries that would log each proxied request once more (httpx logs every request
# at INFO): quiet unless something is wrong.
CHATTY = ("httpx", "httpcore", "hpack", "h2")

MASK = "***"

# What a credential looks like in free text: an HTTP auth scheme and its value, a credential
# header field and its value, a credential query or form parameter, a URL's userinfo password.
_SECRET = re.compile(
    r"(?P<scheme>\b(?:Bearer|BEARER|Basic|Digest)[ \t]+)[^\s,;\"']+"
    r"|(?P<field>\b(?i:authorization|proxy-authorization|cookie|set-cookie|x-session-key"
    r"|x-api-key)\b[\"']?\s*[:=]\s*[\"']?)[^\r\n\"']+"
    r"|(?P<param>(?<![\w-])(?i:[\w-]*(?:token|password|passwd|secret|api_key|apikey|session"
    r"|sessionid|signature|auth)|sig)=)[^&\s\"';,]+"
    r"|(?P<userinfo>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+(?=@)"
)
# A cheap test first: most lines hold none of these and skip the substitution (substring tests
# on the lowered line take under 1 µs for an access line; one case-blind regex search, 6 µs).
_TRIGGERS = (
    "bearer",
    "basic",
    "digest",
    "token",
    "auth",
    "cookie",
    "session",
    "key",
    "pass",
    "secret",
    "sig",
    "://",
)


def _keep_prefix(match: re.Match[str]) -> str:
    prefix = next(group for group in match.groups() if group is not None)
    return prefix + MASK


def mask_secrets(text: str) -> str:
    """``text`` with every credential-looking value replaced by ``***``."""
    lowered = text.lower()
    if not any(word in lowered for word in _TRIGGERS):
        return text
    return _SECRET.sub(_keep_prefix, text)


class MaskingFormatter(logging.Formatter):
    """The human format, with credentials masked (the traceback included)."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


# Every attribute a LogRecord has of its own; the rest came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, bytes):
        return mask_secrets(value.decode("latin-1"))
    return mask_secrets(str(value))


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the ``extra=`` fields and
    ``static`` (e.g. a worker's index); ``exception`` holds a traceback when there is one."""

    def __init__(self, static: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        for key, value in self.static.items():
            document[key] = _jsonable(value)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = _jsonable(value)
        if record.exc_info:
            document["exception"] = mask_secrets(self.formatException(record.exc_info))
        elif record.exc_text:
            document["exception"] = mask_secrets(record.exc_text)
        return json.dumps(document, ensure_ascii=False, default=str)


def configure(
    level: str = "INFO",
    fmt: str = "human",
    *,
    prefix: str = "",
    static: Mapping[str, object] | None = None,
    quiet_libraries: bool = True,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log line to ``stream`` (stderr) in ``fmt``; returns the handler installed.

    ``prefix`` goes before the logger name in human lines (``"worker 1 "``); ``static`` fields
    go into every JSON object. ``quiet_libraries`` sets :data:`CHATTY` to WARNING, unless
    ``level`` is DEBUG, where everything is wanted. Raises ValueError for an unknown level or
    format.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if fmt == "json":
        handler.setFormatter(JSONFormatter(static))
    else:
        handler.setFormatter(
            MaskingFormatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    if quiet_libraries and numeric > logging.DEBUG:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def tunnel_fields(
    tunnel_id: str, instance: str | None, service: str | None = None, event: str | None = None
) -> dict[str, object]:
    """The ``extra=`` of a line about one tunnel: every such line names the tunnel and the
    backend instance behind it; ``event`` names a lifecycle step (registered, draining,
    closed, ejected, returned)."""
    fields: dict[str, object] = {"tunnel_id": tunnel_id, "instance": instance or "-"}
    if service is not None:
        fields["service"] = service
    if event is not None:
        fields["event"] = event
    return fields


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def drain_summary(
    websockets: int, requests: int, timeout: float, tunnels: int | None = None
) -> str:
    """What a drain waits for, as one phrase: ``draining: 1 WebSocket, 2 requests, up to 30 s``
    (``tunnels`` is added when given: the router also drains its tunnels)."""
    parts = [_count(websockets, "WebSocket"), _count(requests, "request")]
    if tunnels is not None:
        parts.append(_count(tunnels, "tunnel"))
    return f"draining: {', '.join(parts)}, up to {timeout:g} s"
