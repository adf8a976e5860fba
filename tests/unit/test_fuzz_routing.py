"""Fuzzing the routing table and host names (issue 10, item 5; ARCHITECTURE.md, "Identities and
claims").

A hypothesis state machine adds and removes tunnels of several identities and services (exact
and wildcard hosts, IDNA names, path prefixes, the catch-all), reloads which hosts the tokens
file gives to whom, and lets time run over grace periods; after every step each request is
routed as a small reference model of the documented precedence says (exact host, longest path
prefix first; then wildcard hosts, longest suffix first; then host-less prefixes, then the
catch-all claim; then the default service), and a claim one identity holds is served by that
identity's tunnels only. Then properties of ``ptth.proto.hostnames``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import idna
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ptth.errors import HandshakeRefused, HeaderError
from ptth.proto.hostnames import normalize_claim, normalize_host
from router.routing import Route, RoutingTable

GRACE = 10.0
DEFAULT = "dflt"
OWNERS = ["alice", "bob", ""]  # "" is the anonymous identity (no tokens file)
SERVICES = [DEFAULT, "s1", "s2"]

# Claims as a backend writes them, and their canonical form (written out, not computed with the
# code under test). Wildcards nest and overlap exact names on purpose.
CLAIMS = {
    "a.example.com": "a.example.com",
    "A.Example.COM.": "a.example.com",
    "example.com": "example.com",
    "x.a.example.com": "x.a.example.com",
    "*.example.com": "*.example.com",
    "*.a.example.com": "*.a.example.com",
    "*.com": "*.com",
    "bücher.example": "xn--bcher-kva.example",
    "xn--bcher-kva.example": "xn--bcher-kva.example",
    "*.bücher.example": "*.xn--bcher-kva.example",
}
PREFIXES = [None, "/api", "/api/v1", "/web", "/api/v1/"]
# The canonical prefix: no trailing slash ("/api/v1/" claims what "/api/v1" claims).
PREFIX_KEY = {
    None: None,
    "/api": "/api",
    "/api/v1": "/api/v1",
    "/web": "/web",
    "/api/v1/": "/api/v1",
}
# Request hosts and their canonical form (None: the request had no Host).
REQUEST_HOSTS = {
    "a.example.com": "a.example.com",
    "A.EXAMPLE.com:8443": "a.example.com",
    "a.example.com.": "a.example.com",
    "example.com": "example.com",
    "x.a.example.com": "x.a.example.com",
    "y.a.example.com": "y.a.example.com",
    "b.example.com": "b.example.com",
    "deep.x.a.example.com": "deep.x.a.example.com",
    "xn--bcher-kva.example": "xn--bcher-kva.example",
    "XN--BCHER-KVA.example:80": "xn--bcher-kva.example",
    "shop.xn--bcher-kva.example": "shop.xn--bcher-kva.example",
    "other.org": "other.org",
    "": None,
}
PATHS = ["/", "/api", "/api/", "/api/v1", "/api/v1/x", "/apix", "/api?q=1", "/web#top", "/weber"]
OWNABLE = ["a.example.com", "example.com", "xn--bcher-kva.example", "b.example.com"]

Key = tuple[str | None, str | None]


@dataclass
class Entry:
    service: str
    owner: str
    holders: set[str] = field(default_factory=set)
    expires_at: float | None = None


@dataclass
class Model:
    """The documented rules, written as plainly as possible."""

    entries: dict[Key, Entry] = field(default_factory=dict)
    owned: dict[str, str] = field(default_factory=dict)

    def expire(self, now: float) -> None:
        for key in [
            k for k, e in self.entries.items() if e.expires_at is not None and e.expires_at <= now
        ]:
            del self.entries[key]

    def keys(self, service: str, hosts: list[str], prefix: str | None) -> list[Key]:
        canonical = PREFIX_KEY[prefix]
        if hosts:
            return list(dict.fromkeys((CLAIMS[h], canonical) for h in hosts))
        if canonical is not None:
            return [(None, canonical)]
        return [(None, None)] if service == DEFAULT else []

    def refused(self, service: str, owner: str, keys: list[Key]) -> bool:
        for host, prefix in keys:
            if host is not None and self.owned.get(host, owner) != owner:
                return True
            entry = self.entries.get((host, prefix))
            if entry is not None and (entry.owner != owner or entry.service != service):
                return True
        return False

    def route(self, host: str | None, path: str) -> Route:
        owner = self.owned.get(host) if host is not None else None

        def covers(prefix: str | None) -> bool:
            if prefix is None:
                return True
            return path == prefix or (path.startswith(prefix) and path[len(prefix)] in "/?#")

        def best(claim_host: str | None) -> Route | None:
            hits = [
                (len(prefix or ""), prefix, entry.service)
                for (h, prefix), entry in self.entries.items()
                if h == claim_host and covers(prefix) and (owner is None or entry.owner == owner)
            ]
            if not hits:
                return None
            _, prefix, service = max(hits, key=lambda hit: hit[0])
            return Route(service, prefix, (claim_host, prefix))

        stages: list[str | None] = []
        if host is not None:
            stages.append(host)
            wildcards = {h for h, _ in self.entries if h and h.startswith("*.")}
            covering = [w for w in wildcards if host.endswith(w[1:])]
            stages += sorted(covering, key=len, reverse=True)  # longest suffix first
        stages.append(None)
        for stage in stages:
            found = best(stage)
            if found is not None:
                return found
        return Route(DEFAULT, None, None)


class RoutingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = RoutingTable(default_service=DEFAULT, grace=GRACE)
        self.model = Model()
        self.tunnels: dict[str, tuple[str, str, list[Key]]] = {}  # id -> service, owner, keys
        self.now = 0.0
        self.count = 0

    @rule(
        service=st.sampled_from(SERVICES),
        owner=st.sampled_from(OWNERS),
        hosts=st.lists(st.sampled_from(sorted(CLAIMS)), max_size=3),
        prefix=st.sampled_from(PREFIXES),
    )
    def add(self, service: str, owner: str, hosts: list[str], prefix: str | None) -> None:
        self.model.expire(self.now)
        keys = self.model.keys(service, hosts, prefix)
        self.count += 1
        tunnel = f"t{self.count}"
        if self.model.refused(service, owner, keys):
            with pytest.raises(HandshakeRefused) as info:
                self.table.check_claim(service, hosts, prefix, self.now, owner)
            assert info.value.status == 409
            with pytest.raises(HandshakeRefused):
                self.table.add(tunnel, service, hosts, prefix, self.now, owner)
            return
        self.table.check_claim(service, hosts, prefix, self.now, owner)
        self.table.add(tunnel, service, hosts, prefix, self.now, owner)
        for key in keys:
            entry = self.model.entries.setdefault(key, Entry(service, owner))
            entry.holders.add(tunnel)
            entry.expires_at = None
        self.tunnels[tunnel] = (service, owner, keys)

    @rule(data=st.data(), keep=st.booleans())
    def remove(self, data: st.DataObject, keep: bool) -> None:
        if not self.tunnels:
            return
        tunnel = data.draw(st.sampled_from(sorted(self.tunnels)))
        _, _, keys = self.tunnels.pop(tunnel)
        self.table.remove(tunnel, self.now, keep_claims=keep)
        self.model.expire(self.now)
        for key in keys:
            entry = self.model.entries[key]
            entry.holders.discard(tunnel)
            if entry.holders:
                continue
            if keep:
                entry.expires_at = self.now + GRACE
            else:
                del self.model.entries[key]

    @rule(owned=st.dictionaries(st.sampled_from(OWNABLE), st.sampled_from(OWNERS[:2])))
    def reload_tokens(self, owned: dict[str, str]) -> None:
        """A tokens file that gives exact hosts to identities (claims already held stay)."""
        self.table.set_owned(owned)
        self.model.owned = dict(owned)

    @rule(dt=st.sampled_from([0.5, 5.0, GRACE - 0.5, GRACE, 20.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def routes_as_documented(self) -> None:
        self.model.expire(self.now)
        for raw, host in REQUEST_HOSTS.items():
            for path in PATHS:
                got = self.table.route(raw, path, self.now)
                assert got == self.model.route(host, path), (raw, path)
                assert self.table.match(raw, path, self.now) == (got.service if got else None)

    @invariant()
    def claims_are_served_by_their_owner_only(self) -> None:
        """The tunnels that serve a claim are the ones that hold it: its identity, its
        service; never another identity's tunnel of the same service."""
        for raw in REQUEST_HOSTS:
            for path in PATHS:
                route = self.table.route(raw, path, self.now)
                assert route is not None
                if route.claim is None:
                    continue
                entry = self.model.entries[route.claim]
                holders = set(self.table.holders(route.claim))
                assert holders == entry.holders
                for tunnel in holders:
                    service, owner, _ = self.tunnels[tunnel]
                    assert (service, owner) == (route.service, entry.owner)

    @invariant()
    def snapshot_agrees(self) -> None:
        got = {
            (c.host, c.path_prefix): (c.service, c.owner, c.tunnels, c.expires_at)
            for c in self.table.claims(self.now)
        }
        want = {
            k: (e.service, e.owner, len(e.holders), e.expires_at)
            for k, e in self.model.entries.items()
        }
        assert got == want


RoutingMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestRoutingMachine = RoutingMachine.TestCase


# -- host names ---------------------------------------------------------------------------------

_LDH = "abcdefghijklmnopqrstuvwxyz0123456789"
labels = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_LDH),
    st.text(alphabet=_LDH + "-", max_size=15).filter(lambda s: not s.endswith("-")),
).filter(lambda label: label[2:4] != "--")
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
ports = st.one_of(st.just(""), st.integers(0, 65535).map(str))
# Letters from scripts IDNA permits, lowercase (UTS #46 maps uppercase anyway).
u_letters = st.sampled_from(
    "äöüßéèçñøåæœąęłśźżčřšžğışαβγδεζηθλμπστφχψωабвгдежзиклмнопрстуфхцчшщыэюя"
)
u_labels = st.lists(st.one_of(u_letters, st.sampled_from(_LDH)), min_size=1, max_size=12).map(
    "".join
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.booleans())
def test_any_text_raises_only_header_error(text: str, wildcard: bool) -> None:
    check_normalizers(text, wildcard)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_LDH + ".-_:[]*ABCXYZ", max_size=40), st.booleans())
def test_host_like_text_raises_only_header_error(text: str, wildcard: bool) -> None:
    check_normalizers(text, wildcard)


def check_normalizers(text: str, wildcard: bool) -> None:
    """Either function returns a lowercase ASCII name or raises HeaderError, nothing else."""
    for normalize in (lambda t: normalize_host(t, allow_wildcard=wildcard), normalize_claim):
        try:
            result = normalize(text)
        except HeaderError:
            continue
        assert result.isascii() and result == result.lower(), result


@settings(max_examples=300, deadline=None)
@given(names, ports, st.booleans(), st.booleans())
def test_case_port_and_trailing_dot_do_not_matter(
    name: str, port: str, upper: bool, dot: bool
) -> None:
    written = (
        (name.upper() if upper else name) + ("." if dot else "") + (f":{port}" if port else "")
    )
    assert normalize_host(written) == name
    assert normalize_claim(written) == name
    assert normalize_claim("*." + written) == "*." + name


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(u_labels, labels), min_size=1, max_size=3), st.booleans())
def test_a_u_label_and_its_a_label_are_one_name(parts: list[str], wildcard: bool) -> None:
    u_name = ".".join(parts)
    try:
        a_name = idna.encode(u_name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        assume(False)
        return
    star = "*." if wildcard else ""
    canonical = normalize_claim(star + u_name)
    assert canonical == star + a_name
    assert normalize_claim(star + a_name) == canonical
    if u_name.upper().lower() == u_name:  # not for "ß" (upper "SS"): another name
        assert normalize_claim(star + u_name.upper() + ".") == canonical
    if not wildcard:
        # What a backend claims is what a user's request (A-labels, RFC 5890) can name.
        assert normalize_host(a_name) == canonical
        assert normalize_host(canonical) == canonical


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda star, parts, dot, port: star + ".".join(parts) + dot + port,
            st.sampled_from(["", "*."]),
            st.lists(st.one_of(u_labels, labels, st.just("xn--bcher-kva")), min_size=1, max_size=3),
            st.sampled_from(["", "."]),
            st.sampled_from(["", ":443", ":"]),
        ),
    )
)
def test_normalising_is_idempotent(text: str) -> None:
    try:
        once = normalize_claim(text)
    except HeaderError:
        return
    assert normalize_claim(once) == once
    assert normalize_host(once, allow_wildcard=True) == once
    if not once.startswith("*."):
        assert normalize_host(once) == once
    try:
        host = normalize_host(text, allow_wildcard=True)
    except HeaderError:
        return
    assert normalize_host(host, allow_wildcard=True) == host
    assert normalize_claim(host) == once  # for ASCII names the two agree


@pytest.mark.parametrize(
    "bad",
    ["xn--", "xn--a", "xn--zzzz-zzzz.example", "a..b", "*.", "*", "a.*.b", "-a.example", "a" * 64],
)
def test_claims_that_could_never_match_are_refused(bad: str) -> None:
    with pytest.raises(HeaderError):
        normalize_claim(bad)
