"""FrameGuard spots oversized frames and non-HTTP/2 peers from the first header bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ptth.engine import CLIENT_PREFACE, FrameGuard


def frame(length: int, frame_type: int, payload: bytes | None = None) -> bytes:
    header = length.to_bytes(3, "big") + bytes([frame_type, 0]) + b"\x00\x00\x00\x00"
    return header + (payload if payload is not None else b"\x00" * length)


def test_well_formed_sequence_passes_in_any_split() -> None:
    data = frame(6, 4) + frame(100, 0) + frame(0, 4) + frame(16384, 0)
    for cut in range(0, len(data), 7):
        guard = FrameGuard(max_frame_size=16384, server_side=False)
        assert guard.check(data[:cut]) is None
        assert guard.check(data[cut:]) is None


def test_oversized_frame_is_caught_from_its_header_alone() -> None:
    guard = FrameGuard(max_frame_size=16384, server_side=False)
    assert guard.check(frame(0, 4)) is None
    problem = guard.check(frame(1 << 20, 0, payload=b""))
    assert problem is not None and "exceeds" in problem


def test_http1_response_instead_of_settings() -> None:
    guard = FrameGuard(max_frame_size=16384, server_side=False)
    assert guard.check(b"HTTP/1.1 200 OK\r\n") is not None


def test_server_skips_the_client_preface() -> None:
    guard = FrameGuard(max_frame_size=16384, server_side=True)
    assert guard.check(CLIENT_PREFACE + frame(0, 4)) is None
    assert guard.check(frame(20000, 0, payload=b"")) is not None


@given(st.lists(st.integers(min_value=0, max_value=16384), max_size=20), st.data())
def test_random_valid_streams_never_flagged(lengths: list[int], data: st.DataObject) -> None:
    stream = frame(0, 4) + b"".join(frame(n, 0) for n in lengths)
    guard = FrameGuard(max_frame_size=16384, server_side=False)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    start = 0
    for cut in [*cuts, len(stream)]:
        assert guard.check(stream[start:cut]) is None
        start = cut
