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


@given(
    st.lists(st.integers(min_value=0, max_value=40), max_size=300),
    st.integers(min_value=1, max_value=8),
    st.data(),
)
def test_scan_slices_at_frame_starts_with_a_bounded_frame_count(
    lengths: list[int], per_slice: int, data: st.DataObject
) -> None:
    """``scan`` cuts every read at frame boundaries, at most ``per_slice`` frames a slice, and
    covers every byte exactly once (the engine feeds h2 and checks budgets slice by slice)."""
    frames = [frame(0, 4), *(frame(n, 0) for n in lengths)]
    stream = b"".join(frames)
    starts = {0}
    offset = 0
    for item in frames:
        offset += len(item)
        starts.add(offset)
    guard = FrameGuard(max_frame_size=16384, server_side=False, frames_per_slice=per_slice)
    reads = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    begin = 0
    for end in [*reads, len(stream)]:
        chunk = stream[begin:end]
        pos = 0
        while pos < len(chunk):
            stop, problem = guard.scan(chunk, pos)
            assert problem is None
            assert pos < stop <= len(chunk)
            if stop < len(chunk):
                assert begin + stop in starts  # a cut inside a read is at a frame's start
            # Frames that start inside the slice (one begun earlier is the earlier slice's).
            assert sum(1 for s in starts if begin + pos <= s < begin + stop) <= per_slice
            pos = stop
        begin = end


def test_a_flood_of_tiny_frames_is_sliced() -> None:
    guard = FrameGuard(max_frame_size=16384, server_side=False)
    data = frame(0, 4) + frame(1, 1) * 1000  # 1,001 frames of 9-10 bytes in one read
    stop, problem = guard.scan(data)
    assert problem is None
    assert stop == 9 + 63 * 10  # SETTINGS and 63 HEADERS: 64 frames
