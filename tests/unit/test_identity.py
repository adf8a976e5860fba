"""router/identity.py: who a backend is and what it may claim (no I/O)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptth.errors import HandshakeRefused
from ptth.proto.handshake import Registration
from ptth.proto.keyid import key_label
from router.identity import Authorizer, Identity, reserved_hosts
from router.tokens import parse_tokens

FP_A = hashlib.sha256(b"key a").digest()
FP_B = hashlib.sha256(b"key b").digest()
LABEL_A = key_label(FP_A)


def book() -> Authorizer:
    tokens = parse_tokens(
        {
            "token": [
                {"name": "alice", "token": "a" * 20, "services": ["api"], "hosts": ["api.test"]},
                {"name": "bob", "token": "b" * 20, "services": ["*"], "hosts": ["*.test"]},
                {"name": "ops", "token": "o" * 20, "services": ["*"], "hosts": ["*"]},
            ]
        }
    )
    return Authorizer(tokens=tokens, domain="tun.example", reserved={"127.0.0.1", "localhost"})


def refused(auth: Authorizer, identity: Identity, reg: Registration) -> HandshakeRefused:
    with pytest.raises(HandshakeRefused) as info:
        auth.authorize(identity, reg)
    return info.value


def test_key_label_is_a_dns_label() -> None:
    assert len(LABEL_A) == 26 and set(LABEL_A) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert key_label(FP_A) != key_label(FP_B)
    with pytest.raises(ValueError):
        key_label(b"short")


def test_identities_in_order_of_precedence() -> None:
    auth = book()
    assert auth.identify("a" * 20, None).owner == "token:alice"
    assert auth.identify("a" * 20, FP_A).owner == "token:alice"  # a token wins over a key
    assert auth.identify(None, FP_A).owner == f"key:{LABEL_A}"
    with pytest.raises(HandshakeRefused) as info:
        auth.identify("wrong-token", None)
    assert info.value.status == 401
    with pytest.raises(HandshakeRefused):
        auth.identify(None, None)  # tokens required, no key
    shared = Authorizer(token="s3cret")
    assert shared.identify("s3cret", None).owner == "shared"
    with pytest.raises(HandshakeRefused):
        shared.identify(None, FP_A)  # a key alone needs --domain when a token is required
    open_router = Authorizer()
    assert open_router.identify(None, None).owner == "anonymous"
    assert open_router.identify(None, FP_A).owner == f"key:{LABEL_A}"


def test_token_may_claim_only_its_services_and_hosts() -> None:
    auth = book()
    alice = auth.identify("a" * 20, None)
    granted = auth.authorize(alice, Registration(service="api", hosts=("API.test.",)))
    assert granted.hosts == ("api.test",)
    assert refused(auth, alice, Registration(service="web", hosts=("api.test",))).status == 403
    assert refused(auth, alice, Registration(service="api", hosts=("x.test",))).status == 403
    # host-less claims (a prefix, the catch-all) cover every host: only "*" allows them
    assert refused(auth, alice, Registration(service="api", path_prefix="/x")).status == 403
    ops = auth.identify("o" * 20, None)
    auth.authorize(ops, Registration(service="default"))
    bob = auth.identify("b" * 20, None)
    auth.authorize(bob, Registration(service="any", hosts=("deep.x.test", "*.x.test")))
    assert refused(auth, bob, Registration(hosts=("test",))).status == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST.", "tun.example"])
def test_reserved_hosts_are_never_granted(host: str) -> None:
    auth = book()
    ops = auth.identify("o" * 20, None)
    error = refused(auth, ops, Registration(hosts=(host,)))
    assert error.status == 403 and "reserved" in error.reason


def test_key_names_belong_to_their_key() -> None:
    auth = book()
    key = auth.identify(None, FP_A)
    granted = auth.authorize(key, Registration(service="web"))
    assert granted.hosts == (f"{LABEL_A}.tun.example",)  # granted with no configuration
    auth.authorize(
        key, Registration(hosts=(f"app.{LABEL_A}.tun.example", f"*.{LABEL_A}.tun.example"))
    )
    # a key identity may claim nothing else, not even a free name
    assert refused(auth, key, Registration(hosts=("free.test",))).status == 403
    # a prefix alone applies to its own name, never to every host
    with_prefix = auth.authorize(key, Registration(path_prefix="/x"))
    assert with_prefix.hosts == (f"{LABEL_A}.tun.example",)
    # nobody without the key gets its name: another key, or a token allowed every host
    other = auth.identify(None, FP_B)
    assert refused(auth, other, Registration(hosts=(f"{LABEL_A}.tun.example",))).status == 403
    ops = auth.identify("o" * 20, None)
    assert refused(auth, ops, Registration(hosts=(f"{LABEL_A}.tun.example",))).status == 403
    assert refused(auth, ops, Registration(hosts=("*.tun.example",))).status == 403
    # a token holder that also presents the key may claim its name
    ops_with_key = auth.identify("o" * 20, FP_A)
    auth.authorize(ops_with_key, Registration(hosts=(f"{LABEL_A}.tun.example",)))


def test_reserved_hosts_of_the_router() -> None:
    names = reserved_hosts(["127.0.0.1:8888", "0.0.0.0:8887", "[::1]:9"], ["admin.test"], "d.test")
    assert names == {"127.0.0.1", "[::1]", "localhost", "admin.test", "d.test"}


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_a_key_never_gets_another_keys_name(fp1: bytes, fp2: bytes) -> None:
    auth = Authorizer(domain="k.test")
    first, second = auth.identify(None, fp1), auth.identify(None, fp2)
    name = auth.authorize(first, Registration()).hosts[0]
    if key_label(fp1) == key_label(fp2):
        return
    with pytest.raises(HandshakeRefused):
        auth.authorize(second, Registration(hosts=(name,)))


def test_the_example_tokens_file_loads_and_means_what_it_says() -> None:
    from pathlib import Path

    from router.tokens import load_tokens

    tokens = load_tokens(str(Path(__file__).parents[2] / "examples" / "tokens.toml"))
    auth = Authorizer(tokens=tokens)
    team = auth.identify("api-team-token-change-me", None)
    assert team.owner == "token:api-team"
    auth.authorize(team, Registration(service="api", hosts=("v1.api.example.com",)))
    assert (
        refused(auth, team, Registration(service="web", hosts=("api.example.com",))).status == 403
    )
    assert tokens.owned_hosts() == {"api.example.com": "api-team"}
    assert auth.identify("ops-token-change-me", None).owner == "token:ops"
