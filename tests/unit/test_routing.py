"""Routing table: host/prefix normalisation, match order, conflicts and grace periods."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ptth.errors import ConfigError, HandshakeRefused, HeaderError
from router.routing import Claim, Route, RoutingTable, normalize_host, normalize_prefix

# --- normalize_host ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("example.com:", "example.com"),  # RFC 3986 allows an empty port
        ("example.com.", "example.com"),
        ("Example.com.:443", "example.com"),
        ("localhost", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[::1]:8080", "[::1]"),
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"),
        ("my_host.internal", "my_host.internal"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_normalize_host_accepts(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ":80",
        ".",
        "..",
        "a..b",
        ".example.com",
        "exa mple.com",
        "example.com\r\nX-Evil: 1",
        "example.com\x00",
        "ex/ample.com",
        "user@example.com",
        "example.com:80:80",
        "example.com:http",
        "example.com:123456",
        "::1",
        "[::1",
        "[::1]x",
        "[::1]:8x",
        "[]",
        "[fe80::1%eth0]",
        "bücher.example",
        "*.example.com",  # wildcards are for claims, never for requests
        "a" * 254,
    ],
)
def test_normalize_host_rejects(raw: str) -> None:
    with pytest.raises(HeaderError):
        normalize_host(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("*.example.com", "*.example.com"),
        ("*.Example.COM.:443", "*.example.com"),
        ("*.com", "*.com"),
        ("plain.example.com", "plain.example.com"),
    ],
)
def test_normalize_host_wildcard_accepts(raw: str, expected: str) -> None:
    assert normalize_host(raw, allow_wildcard=True) == expected


@pytest.mark.parametrize("raw", ["*", "*.", "**.example.com", "a.*.example.com", "*example.com"])
def test_normalize_host_wildcard_rejects(raw: str) -> None:
    with pytest.raises(HeaderError):
        normalize_host(raw, allow_wildcard=True)


_host_chars = st.sampled_from("abcXYZ019-_.:[]*@/ %\r\n\x00é")


@given(st.text(_host_chars, max_size=30), st.booleans())
def test_normalize_host_is_idempotent_or_raises(raw: str, wildcard: bool) -> None:
    try:
        out = normalize_host(raw, allow_wildcard=wildcard)
    except HeaderError:
        return
    assert out == out.lower()
    assert not out.endswith(".")
    assert normalize_host(out, allow_wildcard=wildcard) == out
    assert ":" not in out or out.startswith("[")


@given(
    st.lists(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), min_size=1, max_size=4),
    st.none() | st.integers(0, 65535),
)
def test_normalize_host_strips_port_and_case(labels: list[str], port: int | None) -> None:
    name = ".".join(labels)
    raw = name.upper() if port is None else f"{name.upper()}:{port}"
    assert normalize_host(raw) == name


# --- normalize_prefix --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("/", None),
        ("//", None),
        ("/api", "/api"),
        ("/api/", "/api"),
        ("/api//", "/api"),
        ("/api/v1/", "/api/v1"),
        ("/a%20b", "/a%20b"),
        ("/~user/@me:x", "/~user/@me:x"),
        ("/API", "/API"),  # paths are case-sensitive
    ],
)
def test_normalize_prefix_accepts(raw: str | None, expected: str | None) -> None:
    assert normalize_prefix(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "api",
        " /api",
        "/a//b",
        "/a/../b",
        "/./a",
        "/a/.",
        "/a?x=1",
        "/a#frag",
        "/a b",
        "/a\r\n",
        "/a%2",
        "/a%zz",
        "/é",
        "/" + "a" * 2000,
    ],
)
def test_normalize_prefix_rejects(raw: str) -> None:
    with pytest.raises(HeaderError):
        normalize_prefix(raw)


@given(st.text(st.sampled_from("/ab.%2F?# "), max_size=20))
def test_normalize_prefix_is_idempotent_or_raises(raw: str) -> None:
    try:
        out = normalize_prefix(raw)
    except HeaderError:
        return
    assert out is None or (out.startswith("/") and not out.endswith("/"))
    assert normalize_prefix(out) == out


# --- match -------------------------------------------------------------------------------------


def test_empty_table_uses_catch_all() -> None:
    assert RoutingTable().match("anything.example", "/", 0) == "default"
    assert RoutingTable(default_service="web").match("x", "/", 0) == "web"
    assert RoutingTable(default_service=None).match("x", "/", 0) is None


@pytest.mark.parametrize(
    ("path", "hit"),
    [
        ("/api", True),
        ("/api/", True),
        ("/api/x/y", True),
        ("/api?q=1", True),
        ("/api#top", True),
        ("/apix", False),
        ("/ap", False),
        ("/", False),
        ("/API", False),
        ("/v2/api", False),
    ],
)
def test_prefix_matches_at_segment_boundaries(path: str, hit: bool) -> None:
    table = RoutingTable(default_service=None)
    table.add("t1", "api", [], "/api", 0)
    assert table.match("h.example", path, 0) == ("api" if hit else None)


def test_exact_host_ignores_case_port_and_trailing_dot() -> None:
    table = RoutingTable(default_service=None)
    table.add("t1", "api", ["API.example.com:443"], None, 0)
    for host in ["api.example.com", "Api.Example.Com:8443", "api.example.com."]:
        assert table.match(host, "/anything", 0) == "api"
    assert table.match("example.com", "/", 0) is None


def test_longest_prefix_wins_within_a_host() -> None:
    table = RoutingTable(default_service=None)
    table.add("t1", "site", ["h.example"], None, 0)
    table.add("t2", "api", ["h.example"], "/api", 0)
    table.add("t3", "api-v2", ["h.example"], "/api/v2", 0)
    assert table.match("h.example", "/", 0) == "site"
    assert table.match("h.example", "/apis", 0) == "site"
    assert table.match("h.example", "/api/v1", 0) == "api"
    assert table.match("h.example", "/api/v2/x", 0) == "api-v2"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.example.com", "wild"),
        ("a.b.example.com", "wild"),
        ("x.deep.example.com", "deep"),  # the longest suffix wins
        ("deep.example.com", "wild"),  # "*.deep.example.com" does not cover its own apex
        ("example.com", "apex"),
        ("exact.example.com", "exact"),  # exact beats wildcard
        ("notexample.com", "default"),
        ("example.com.evil", "default"),
    ],
)
def test_wildcard_hosts(host: str, expected: str) -> None:
    table = RoutingTable()
    table.add("t1", "wild", ["*.example.com"], None, 0)
    table.add("t2", "deep", ["*.deep.example.com"], None, 0)
    table.add("t3", "apex", ["example.com"], None, 0)
    table.add("t4", "exact", ["exact.example.com"], None, 0)
    assert table.match(host, "/", 0) == expected


def test_stages_fall_through_in_order() -> None:
    table = RoutingTable(default_service="catch-all")
    table.add("t1", "exact", ["a.example.com"], "/x", 0)
    table.add("t2", "wild", ["*.example.com"], "/y", 0)
    table.add("t3", "hostless", [], "/z", 0)
    cases = {
        "/x": "exact",
        "/y": "wild",
        "/z": "hostless",
        "/w": "catch-all",
    }
    for path, expected in cases.items():
        assert table.match("a.example.com", path, 0) == expected
    assert table.match("b.example.com", "/x", 0) == "catch-all"
    assert table.match("b.example.com", "/y", 0) == "wild"
    assert table.match("other.org", "/z", 0) == "hostless"


def test_wildcard_falls_through_to_a_shorter_suffix() -> None:
    table = RoutingTable(default_service=None)
    table.add("t1", "deep-api", ["*.deep.example.com"], "/api", 0)
    table.add("t2", "wild", ["*.example.com"], None, 0)
    assert table.match("x.deep.example.com", "/api/1", 0) == "deep-api"
    assert table.match("x.deep.example.com", "/web", 0) == "wild"


def test_missing_host_routes_by_path_only() -> None:
    table = RoutingTable(default_service=None)
    table.add("t1", "site", ["h.example"], None, 0)
    table.add("t2", "api", [], "/api", 0)
    assert table.match("", "/api/x", 0) == "api"
    assert table.match("", "/", 0) is None


def test_match_rejects_a_malformed_host() -> None:
    with pytest.raises(HeaderError):
        RoutingTable().match("evil.com\r\nX: y", "/", 0)


def test_catch_all_tunnel_holds_the_catch_all_claim() -> None:
    # A tunnel of the catch-all service naming no host and no prefix claims (None, None): the
    # catch-all belongs to an identity like every other claim (ARCHITECTURE.md).
    table = RoutingTable(default_service="default")
    table.add("t1", "default", [], None, 0, owner="alice")
    assert table.claims(0) == [Claim(None, None, "default", 1, None, "alice")]
    route = table.route("any.host", "/p", 0)
    assert route is not None and route.claim == (None, None) and route.service == "default"
    assert table.holders((None, None)) == {"t1"}


def test_tunnel_of_another_service_without_claims_holds_nothing() -> None:
    table = RoutingTable(default_service="default")
    table.add("t1", "other", [], None, 0)
    assert table.claims(0) == []
    route = table.route("any.host", "/p", 0)
    assert route == Route("default", None, None)  # the catch-all service, with no tunnel


# --- claims and conflicts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "wanted"),
    [
        ((["a.example.com"], None), (["A.example.com:80"], None)),
        ((["a.example.com"], "/api"), (["a.example.com", "b.example.com"], "/api/")),
        ((["*.example.com"], None), (["*.example.com"], None)),
        (([], "/api"), ([], "/api")),
    ],
)
def test_conflicting_claim_is_refused(
    held: tuple[list[str], str | None], wanted: tuple[list[str], str | None]
) -> None:
    table = RoutingTable()
    table.add("t1", "one", held[0], held[1], 0)
    with pytest.raises(HandshakeRefused) as info:
        table.check_claim("two", wanted[0], wanted[1], 0)
    assert info.value.status == 409
    assert info.value.retryable  # issue 10: the holder's claim may expire, so the helper retries
    with pytest.raises(HandshakeRefused):
        table.add("t2", "two", wanted[0], wanted[1], 0)
    # A refused add leaves nothing behind: no claim, and the tunnel key is still free.
    assert {c.service for c in table.claims(0)} == {"one"}
    assert table.match("other.org", "/web", 0) == "default"
    table.add("t2", "two", [], "/elsewhere", 0)


@pytest.mark.parametrize(
    ("held", "wanted"),
    [
        ((["a.example.com"], "/api"), (["a.example.com"], "/web")),
        ((["a.example.com"], "/api"), (["a.example.com"], None)),
        ((["a.example.com"], None), (["*.example.com"], None)),
        ((["a.example.com"], "/api"), ([], "/api")),
        (([], "/api"), ([], "/api/v2")),
    ],
)
def test_distinct_claims_coexist(
    held: tuple[list[str], str | None], wanted: tuple[list[str], str | None]
) -> None:
    table = RoutingTable()
    table.add("t1", "one", held[0], held[1], 0)
    table.check_claim("two", wanted[0], wanted[1], 0)
    table.add("t2", "two", wanted[0], wanted[1], 0)


def test_same_service_may_claim_again() -> None:
    table = RoutingTable()
    table.add("t1", "api", ["a.example.com"], "/api", 0)
    table.check_claim("api", ["a.example.com"], "/api", 0)
    table.add("t2", "api", ["a.example.com"], "/api", 0)
    assert table.claims(0) == [Claim("a.example.com", "/api", "api", 2, None)]


def test_check_claim_validates_and_does_not_mutate() -> None:
    table = RoutingTable()
    table.check_claim("api", ["a.example.com"], "/api", 0)
    assert table.claims(0) == []
    with pytest.raises(HeaderError):
        table.check_claim("api", ["bad host"], None, 0)
    with pytest.raises(HeaderError):
        table.check_claim("api", ["a.example.com"], "api", 0)
    with pytest.raises(TypeError):
        table.check_claim("api", "a.example.com", None, 0)


def test_duplicate_tunnel_key_is_a_bug() -> None:
    table = RoutingTable()
    table.add("t1", "api", [], "/api", 0)
    with pytest.raises(ValueError, match="t1"):
        table.add("t1", "api", [], "/api", 0)


def test_duplicate_hosts_count_once() -> None:
    table = RoutingTable()
    table.add("t1", "api", ["a.example.com", "A.example.com."], None, 0)
    assert table.claims(0) == [Claim("a.example.com", None, "api", 1, None)]


@pytest.mark.parametrize("grace", [-1.0, float("inf"), float("nan")])
def test_bad_grace_is_a_config_error(grace: float) -> None:
    with pytest.raises(ConfigError):
        RoutingTable(grace=grace)


# --- grace -------------------------------------------------------------------------------------


def test_claim_outlives_its_last_tunnel_by_grace() -> None:
    table = RoutingTable(default_service=None, grace=30)
    table.add("t1", "api", ["a.example.com"], None, 0)
    table.add("t2", "api", ["a.example.com"], None, 0)
    table.remove("t1", 10)
    assert table.claims(10) == [Claim("a.example.com", None, "api", 1, None)]
    table.remove("t2", 20)
    assert table.claims(20) == [Claim("a.example.com", None, "api", 0, 50)]
    assert table.match("a.example.com", "/", 49.9) == "api"  # the front end answers 503
    with pytest.raises(HandshakeRefused):
        table.check_claim("other", ["a.example.com"], None, 49.9)
    assert table.match("a.example.com", "/", 50) is None
    assert table.claims(50) == []
    table.add("t3", "other", ["a.example.com"], None, 50)
    assert table.match("a.example.com", "/", 50) == "other"


def test_reconnect_within_grace_revives_the_claim() -> None:
    table = RoutingTable(default_service=None, grace=30)
    table.add("t1", "api", [], "/api", 0)
    table.remove("t1", 0)
    table.add("t2", "api", [], "/api", 5)
    assert table.match("", "/api", 1000) == "api"
    assert table.claims(1000) == [Claim(None, "/api", "api", 1, None)]


def test_zero_grace_forgets_at_once() -> None:
    table = RoutingTable(default_service=None, grace=0)
    table.add("t1", "api", ["*.example.com"], "/api", 0)
    table.remove("t1", 0)
    assert table.claims(0) == []
    assert table.match("a.example.com", "/api", 0) is None
    table.add("t2", "other", ["*.example.com"], "/api", 0)


def test_remove_unknown_tunnel_is_a_no_op() -> None:
    table = RoutingTable()
    table.remove("nope", 0)
    table.add("t1", "api", [], "/api", 0)
    table.remove("t1", 0)
    table.remove("t1", 0)
    assert len(table.claims(0)) == 1


# --- model-based check against a brute-force reference -----------------------------------------

_CLAIM_HOSTS = [
    "a.example.com",
    "example.com",
    "x.a.example.com",
    "*.example.com",
    "*.a.example.com",
]
_PREFIXES = [None, "/api", "/api/v1", "/web"]
_REQ_HOSTS = ["a.example.com", "A.Example.com:8080", "example.com", "x.a.example.com"]
_REQ_HOSTS += ["y.a.example.com", "b.example.com", "other.org", ""]
_PATHS = ["/", "/api", "/api/", "/api/v1/x", "/apix", "/api?q=1", "/web#top", "/weber", "*"]

_Model = dict[tuple[str | None, str | None], tuple[str, set[str], float | None]]


def _reference(model: _Model, default: str | None, host: str, path: str, now: float) -> str | None:
    live = {k: v[0] for k, v in model.items() if v[2] is None or v[2] > now}
    name = normalize_host(host) if host else None

    def covers(prefix: str | None) -> bool:
        if prefix is None:
            return True
        return path == prefix or (path.startswith(prefix) and path[len(prefix)] in "/?#")

    def best(hosts: set[str | None]) -> str | None:
        hits = [(len(p or ""), s) for (h, p), s in live.items() if h in hosts and covers(p)]
        return max(hits)[1] if hits else None

    stages: list[set[str | None]] = []
    if name is not None:
        stages.append({name})
        wild = [h for h, _ in live if h and h.startswith("*.") and name.endswith(h[1:])]
        stages += [{h} for h in sorted(set(wild), key=len, reverse=True)]
    stages.append({None})
    for hosts in stages:
        found = best(hosts)
        if found is not None:
            return found
    return default


class RoutingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = RoutingTable(default_service="dflt", grace=10)
        self.model: _Model = {}
        self.tunnels: dict[str, tuple[str, list[tuple[str | None, str | None]]]] = {}
        self.now = 0.0
        self.counter = 0

    def _expire(self) -> None:
        for key in [k for k, v in self.model.items() if v[2] is not None and v[2] <= self.now]:
            del self.model[key]

    @rule(
        service=st.sampled_from(["s1", "s2", "s3"]),
        hosts=st.lists(st.sampled_from(_CLAIM_HOSTS), max_size=2),
        prefix=st.sampled_from(_PREFIXES),
    )
    def add(self, service: str, hosts: list[str], prefix: str | None) -> None:
        self._expire()
        keys: list[tuple[str | None, str | None]]
        keys = (
            list(dict.fromkeys((h, prefix) for h in hosts))
            if hosts
            else ([(None, prefix)] if prefix else [])
        )
        conflict = any(k in self.model and self.model[k][0] != service for k in keys)
        self.counter += 1
        tunnel = f"t{self.counter}"
        if conflict:
            with pytest.raises(HandshakeRefused):
                self.table.add(tunnel, service, hosts, prefix, self.now)
            return
        self.table.add(tunnel, service, hosts, prefix, self.now)
        for key in keys:
            holders = self.model[key][1] if key in self.model else set()
            self.model[key] = (service, holders | {tunnel}, None)
        self.tunnels[tunnel] = (service, keys)

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        if not self.tunnels:
            return
        tunnel = data.draw(st.sampled_from(sorted(self.tunnels)))
        _, keys = self.tunnels.pop(tunnel)
        self.table.remove(tunnel, self.now)
        for key in keys:
            service, holders, _ = self.model[key]
            holders = holders - {tunnel}
            self.model[key] = (service, holders, None if holders else self.now + 10)

    @rule(dt=st.sampled_from([0.5, 5.0, 10.0, 20.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def matches_reference(self) -> None:
        for host in _REQ_HOSTS:
            for path in _PATHS:
                expected = _reference(self.model, "dflt", host, path, self.now)
                assert self.table.match(host, path, self.now) == expected, (host, path)

    @invariant()
    def snapshot_agrees(self) -> None:
        self._expire()
        got = {(c.host, c.path_prefix): (c.service, c.tunnels) for c in self.table.claims(self.now)}
        want = {k: (v[0], len(v[1])) for k, v in self.model.items()}
        assert got == want


TestRoutingMachine = RoutingMachine.TestCase


# --- route: the matched prefix (what a strip-prefix tunnel does not see) --------------------


def test_route_names_the_prefix_that_matched() -> None:
    table = RoutingTable(default_service="site")
    table.add("t1", "chat", [], "/chat/", 0)  # stored without its trailing slash
    table.add("t2", "api", ["h.example"], "/api", 0)
    table.add("t3", "api", ["h.example"], "/api/v2", 0)
    table.add("t4", "web", ["w.example"], None, 0)

    def route(host: str, path: str) -> tuple[str, str | None]:
        found = table.route(host, path, 0)
        assert found is not None
        return found.service, found.prefix

    assert route("x.example", "/chat/count?q=1") == ("chat", "/chat")
    assert route("x.example", "/chat") == ("chat", "/chat")
    assert route("h.example", "/api/v2/x") == ("api", "/api/v2")  # longest first
    assert route("h.example", "/api?x") == ("api", "/api")
    assert route("w.example", "/chatx") == ("web", None)  # a claim without a prefix
    assert route("x.example", "/chatx") == ("site", None)  # the catch-all
    assert RoutingTable(default_service=None).route("x.example", "/", 0) is None
