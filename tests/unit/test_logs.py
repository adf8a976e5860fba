"""ptth/logs.py and router/access_log.py: masking, the JSON lines, configuration, the drain line."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptth import logs
from ptth.errors import ConfigError
from router import access_log
from router.config import RouterConfig

SECRET = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=6
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in (*logs.CHATTY, "router.access")}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


@given(SECRET)
def test_every_credential_shape_is_masked(secret: str) -> None:
    lines = [
        f"Authorization: Bearer {secret}",
        f"authorization={secret}",
        f"header Bearer {secret}, next",
        f"Basic {secret}",
        f"cookie: sid={secret}; theme=dark",
        f"Set-Cookie: {secret}",
        f"GET /a?x=1&token={secret}&y=2",
        f"/cb?access_token={secret}",
        f"PTTH_TOKEN={secret}",
        f"proxy http://user:{secret}@proxy:3128/",
        f"X-Session-Key: {secret}",
    ]
    for line in lines:
        masked = logs.mask_secrets(line)
        assert secret not in masked, (line, masked)
        assert logs.MASK in masked


@pytest.mark.parametrize(
    "line",
    [
        "front end on http://127.0.0.1:8888, tunnel port on 127.0.0.1:8887",
        "tunnel port: refused 127.0.0.1:5: 401 missing or invalid bearer token",
        "127.0.0.1 GET h /hello?x=1 200 15 4.1ms tunnel=abc instance=i",
        "a basic handshake, key identity abc: the router grants abc.<its --domain>",
        "sessions=3 tokens=none",
    ],
)
def test_ordinary_lines_are_left_alone(line: str) -> None:
    assert logs.mask_secrets(line) == line


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("test.logs")
    return logger.makeRecord(
        "test.logs", logging.WARNING, __file__, 1, message, args, None, extra=extra
    )


def test_json_line_has_the_standard_keys_the_extras_and_the_static_fields() -> None:
    formatter = logs.JSONFormatter({"instance": "i-1"})
    record = _record("tunnel %s: %s", "t1", "lost", tunnel_id="t1", status=200, raw=b"x", obj=(1,))
    document = json.loads(formatter.format(record))
    assert document["level"] == "WARNING"
    assert document["logger"] == "test.logs"
    assert document["message"] == "tunnel t1: lost"
    assert document["time"].endswith("Z") and "T" in document["time"]
    assert document["instance"] == "i-1"
    assert document["tunnel_id"] == "t1"
    assert document["status"] == 200  # numbers stay numbers
    assert document["raw"] == "x"
    assert document["obj"] == "(1,)"
    assert not {"args", "msg", "levelno", "pathname"} & set(document)


def test_json_line_masks_message_extras_and_traceback() -> None:
    formatter = logs.JSONFormatter()
    try:
        raise ValueError("Authorization: Bearer abcdefgh")
    except ValueError:
        record = _record("GET %s", "/x?token=abcdefgh", path="/x?token=abcdefgh")
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "abcdefgh" not in line
    document = json.loads(line)
    assert document["path"] == "/x?token=***"
    assert "ValueError" in document["exception"]


def test_human_line_is_the_old_shape_and_masked(restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure("INFO", "human", prefix="worker 1 ", stream=stream)
    logging.getLogger("router").info("front end on %s, token=%s", "http://h:1", "abcdefgh")
    line = stream.getvalue().strip()
    assert line.endswith(" INFO worker 1 router: front end on http://h:1, token=***"), line


def test_configure_quiets_chatty_libraries_unless_debug(restore_logging: None) -> None:
    logs.configure("INFO", "json", stream=io.StringIO())
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    for name in logs.CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logs.configure("debug", "human", stream=io.StringIO())
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.DEBUG


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "human"), ("INFO", "xml")])
def test_configure_refuses_unknown_level_and_format(level: str, fmt: str) -> None:
    with pytest.raises(ValueError):
        logs.configure(level, fmt, stream=io.StringIO())


def test_router_config_refuses_unknown_log_format() -> None:
    assert RouterConfig(log_format="json").log_format == "json"
    with pytest.raises(ConfigError, match="log_format"):
        RouterConfig(log_format="xml")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((1, 2, 30.0), "draining: 1 WebSocket, 2 requests, up to 30 s"),
        ((0, 1, 2.5), "draining: 0 WebSockets, 1 request, up to 2.5 s"),
        ((2, 0, 30.0, 1), "draining: 2 WebSockets, 0 requests, 1 tunnel, up to 30 s"),
    ],
)
def test_drain_summary(args: tuple[int, int, float], text: str) -> None:
    assert logs.drain_summary(*args) == text


def test_tunnel_fields() -> None:
    assert logs.tunnel_fields("t", None) == {"tunnel_id": "t", "instance": "-"}
    assert logs.tunnel_fields("t", "i", "svc", "ejected") == {
        "tunnel_id": "t",
        "instance": "i",
        "service": "svc",
        "event": "ejected",
    }


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_access_log_enabled_follows_the_flag_and_the_level(restore_logging: None) -> None:
    logger = logging.getLogger("router.access")
    logger.setLevel(logging.INFO)
    assert access_log.enabled(RouterConfig())
    assert not access_log.enabled(RouterConfig(access_log=False))
    logger.setLevel(logging.WARNING)
    assert not access_log.enabled(RouterConfig())


def test_access_log_line_and_fields(restore_logging: None) -> None:
    collect = _Collect()
    logger = logging.getLogger("router.access")
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        access_log.write(
            kind="http",
            client="10.0.0.1",
            method="POST",
            host="h.example",
            path="/up",
            status=201,
            bytes_in=5,
            bytes_out=7,
            duration_ms=1.234,
            tunnel_id="t9",
            instance="i9",
            service="svc",
        )
        access_log.write(
            kind="websocket",
            client="10.0.0.1",
            method="GET",
            host="h.example",
            path="/ws",
            status=101,
            bytes_in=3,
            bytes_out=4,
            duration_ms=10.0,
            tunnel_id="t9",
            instance="i9",
            service="svc",
            close_code=1000,
        )
    finally:
        logger.removeHandler(collect)
    http, ws = collect.records
    assert http.getMessage() == "10.0.0.1 POST h.example /up 201 7 1.2ms tunnel=t9 instance=i9"
    assert ws.getMessage() == (
        "10.0.0.1 WEBSOCKET h.example /ws 101 3/4 close=1000 10.0ms tunnel=t9 instance=i9"
    )
    document = json.loads(logs.JSONFormatter().format(http))
    assert document["bytes_in"] == 5 and document["bytes_out"] == 7
    assert document["duration_ms"] == 1.2
    assert (document["tunnel_id"], document["instance"], document["service"]) == ("t9", "i9", "svc")
    assert json.loads(logs.JSONFormatter().format(ws))["close_code"] == 1000
