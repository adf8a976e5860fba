"""The admin listener's plain parts: histogram buckets, masking, rates, the inspector's ring."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from router.admin.inspector import MASK, Inspector, mask_headers, mask_target, record
from router.admin.metrics import LATENCY_BUCKETS, Histogram
from router.admin.status import Rates
from router.frontend.exchange import UserRequest
from router.proxy_common import Finished


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=50))
def test_histogram_buckets_are_cumulative_and_end_with_the_count(values: list[float]) -> None:
    histogram = Histogram()
    for v in values:
        histogram.observe(v)
    buckets = histogram.buckets()
    assert [le for le, _ in buckets] == [*map(repr, LATENCY_BUCKETS), "+Inf"]
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and counts[-1] == len(values)
    for (le, count), bound in zip(buckets, LATENCY_BUCKETS, strict=False):
        assert count == sum(1 for v in values if v <= bound), le
    assert abs(histogram.total - sum(values)) < 1e-6


def test_credentials_are_masked_in_headers_and_query() -> None:
    headers = [
        (b"authorization", b"Bearer abc"),
        (b"Proxy-Authorization", b"Basic abc"),
        (b"cookie", b"a=abc"),
        (b"set-cookie", b"sid=abc"),
        (b"accept", b"*/*"),
    ]
    masked = dict(mask_headers(headers))
    assert masked == {
        "authorization": MASK,
        "Proxy-Authorization": MASK,
        "cookie": MASK,
        "set-cookie": MASK,
        "accept": "*/*",
    }
    assert mask_target("/a?token=abc&x=1&api_key=abc;SessionId=abc") == (
        f"/a?token={MASK}&x=1&api_key={MASK};SessionId={MASK}"
    )
    assert mask_target("/plain/token=abc") == "/plain/token=abc"  # a path is not a query
    assert mask_target("/a?q=keyboard") == "/a?q=keyboard"  # values are not names


def test_rates_average_over_the_window() -> None:
    rates = Rates(window=10)
    served: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    assert rates.rates("api", 0) == (0.0, 0.0)
    for second in range(30):
        served["api"] += 5
        if second % 2:
            errors["api"] += 1
        rates.sample(float(second), served, errors)
    requests, failed = rates.rates("api", 29.0)
    assert requests == 5.0 and abs(failed - 0.5) < 0.06
    assert rates.rates("other", 29.0) == (0.0, 0.0)


def finished(path: bytes) -> Finished:
    request = UserRequest(
        method=b"GET",
        target=path,
        scheme=b"http",
        authority=None,
        headers=[(b"host", b"example.test"), (b"cookie", b"x=1")],
        http_version="1.1",
        client=("127.0.0.1", 1),
        server=("127.0.0.1", 2),
    )
    return Finished(request, "http", "api", "t1", "i1", 200, 1.0, 1.25, 1.5, 0, 3, [])


async def test_inspector_keeps_the_last_n_and_feeds_subscribers() -> None:
    inspector = Inspector(3)
    receive = inspector.subscribe()
    for n in range(5):
        inspector.add(finished(b"/%d" % n))
    assert [item.done.request.target for item in inspector.recent()] == [b"/2", b"/3", b"/4"]
    got = [receive.receive_nowait().id for _ in range(5)]
    assert got == [1, 2, 3, 4, 5]
    shown = record(inspector.recent()[-1])
    assert shown["host"] == "example.test" and shown["path"] == "/4"
    assert shown["duration_ms"] == 500.0 and shown["headers_ms"] == 250.0
    assert dict(shown["request_headers"])["cookie"] == MASK  # type: ignore[arg-type]
    receive.close()
    inspector.add(finished(b"/5"))  # a closed subscriber is dropped, not an error
    assert inspector.subscribers == 0
