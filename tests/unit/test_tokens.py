"""router/tokens.py: the tokens file (no I/O but reading it)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

from ptth.errors import ConfigError
from router.tokens import TokenBook, host_allowed, load_tokens, parse_tokens


def entry(name: str, token: str = "", **fields: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": name,
        "token": token or f"{name}-token-0123456789",
        "services": ["api"],
        "hosts": ["*"],
    }
    table.update(fields)
    return {k: v for k, v in table.items() if v is not None}


def book(*tables: dict[str, Any]) -> TokenBook:
    return parse_tokens({"token": list(tables)})


def config_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_tokens(data, "/etc/ptth/tokens.toml")
    return str(info.value)


# -- lookup --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["first", "middle", "last", "unknown"])
def test_find_compares_every_entry_whichever_matches(
    which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No early exit: the time a lookup takes does not say where (or whether) the token is."""
    names = ["first", "a", "middle", "b", "last"]
    tokens = book(*(entry(n) for n in names))
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # router.tokens looks it up per call
    found = tokens.find(f"{which}-token-0123456789")
    assert len(calls) == len(names)
    assert {a for a, _ in calls} == {e.digest for e in tokens.entries}
    assert (found.name if found else None) == (None if which == "unknown" else which)


def test_token_and_token_sha256_both_work() -> None:
    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    tokens = book(
        entry("plain", token="plain-secret"),
        {"name": "hashed", "token_sha256": digest, "services": ["*"], "hosts": ["*"]},
        {
            "name": "upper",
            "token_sha256": hashlib.sha256(b"up").hexdigest().upper(),
            "services": ["*"],
            "hosts": ["*"],
        },
    )
    found = [tokens.find(t) for t in ("plain-secret", "hashed-secret", "up")]
    assert [e.name if e else None for e in found] == ["plain", "hashed", "upper"]
    assert tokens.find(digest) is None  # the digest itself is not the token
    assert tokens.find("plain-secret ") is None
    # Only digests are kept: the plain token is nowhere in the book.
    assert "plain-secret" not in repr(tokens.entries)
    assert tokens.entries[0].digest == hashlib.sha256(b"plain-secret").digest()


def test_entries_allow_their_services_and_hosts() -> None:
    tokens = book(
        entry("alice", services=["api", "web"], hosts=["API.Example.com.", "*.alice.example"]),
        entry("any", services=["*"], hosts=["*"]),
    )
    alice, anyone = tokens.entries
    assert alice.hosts == ("api.example.com", "*.alice.example")
    assert alice.allows_service("web") and not alice.allows_service("db")
    assert alice.allows_host("api.example.com") and alice.allows_host("x.alice.example")
    assert not alice.allows_host(None) and not alice.allows_host("alice.example")
    assert anyone.allows_service("db") and anyone.allows_host(None)
    assert tokens.owned_hosts() == {"api.example.com": "alice"}  # exact names only
    assert len(tokens) == 2


@pytest.mark.parametrize(
    ("pattern", "host", "allowed"),
    [
        ("*", "anything.test", True),
        ("*", "*.test", True),
        ("*", None, True),  # host-less claims cover every host: only "*" allows them
        ("api.test", "api.test", True),
        ("api.test", "x.api.test", False),
        ("api.test", "*.api.test", False),
        ("api.test", None, False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "*.example.com", True),
        ("*.example.com", "*.a.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "*.com", False),
        ("*.example.com", "*.badexample.com", False),
        ("*.example.com", "a.example.com.evil", False),
        ("*.example.com", None, False),
    ],
)
def test_host_allowed(pattern: str, host: str | None, allowed: bool) -> None:
    assert host_allowed(pattern, host) is allowed


def test_host_patterns_are_normalised() -> None:
    [alice] = book(
        entry("alice", hosts=["BÜCHER.Test.", "api.test:8080", "*.Example.COM", "*"])
    ).entries
    assert alice.hosts == ("xn--bcher-kva.test", "api.test", "*.example.com", "*")


# -- errors name the file, the entry and the key -------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"services": None}, "[[token]] #2 ('bob'): 'services' is missing"),
        ({"hosts": None}, "[[token]] #2 ('bob'): 'hosts' is missing"),
        ({"hosts": "api.test"}, "[[token]] #2 ('bob'): 'hosts' = 'api.test': expected a list"),
        ({"hosts": ["a b"]}, "[[token]] #2 ('bob'): 'hosts' has 'a b'"),
        ({"hosts": ["xn--zz.test"]}, "[[token]] #2 ('bob'): 'hosts' has 'xn--zz.test'"),
        ({"services": ["no spaces"]}, "[[token]] #2 ('bob'): 'services' has 'no spaces'"),
        ({"colour": "red"}, "[[token]] #2: unknown key 'colour'"),
        ({"name": "bad name"}, "[[token]] #2: 'name' = 'bad name'"),
        ({"token_sha256": "00" * 32}, "[[token]] #2 ('bob'): give exactly one of 'token' and"),
        ({"token": None}, "[[token]] #2 ('bob'): give exactly one of 'token' and"),
        (
            {"token": None, "token_sha256": "abc"},
            "[[token]] #2 ('bob'): 'token_sha256' = 'abc': expected 64 hexadecimal digits",
        ),
        ({"token": "with space"}, "[[token]] #2 ('bob'): 'token': expected 1-4096 visible"),
    ],
)
def test_errors_name_the_file_the_entry_and_the_key(table: dict[str, Any], expected: str) -> None:
    bob = {**entry("bob"), **table}
    bob = {k: v for k, v in bob.items() if v is not None}
    message = config_error({"token": [entry("alice"), bob]})
    assert message.startswith("tokens file /etc/ptth/tokens.toml: "), message
    assert expected in message, message


def test_the_file_itself_must_be_token_tables() -> None:
    assert "unknown top-level key 'tokens'" in config_error({"tokens": []})
    assert "must be an array of tables" in config_error({"token": {"name": "a"}})
    assert len(parse_tokens({})) == 0  # an empty file: no identity, every token refused


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (entry("alice", token="other-token-0123"), "[[token]] #2 ('alice'): name 'alice' is used"),
        (entry("bob", token="alice-token-0123456789"), "the same token is given to two identities"),
        (
            # the same token given hashed is still the same token
            {
                "name": "bob",
                "token_sha256": hashlib.sha256(b"alice-token-0123456789").hexdigest(),
                "services": ["*"],
                "hosts": ["*"],
            },
            "[[token]] #2 ('bob'): the same token is given to two identities",
        ),
        (
            entry("bob", hosts=["API.test."]),
            "[[token]] #2 ('bob'): host 'api.test' is already listed for identity 'alice'",
        ),
    ],
)
def test_duplicates_are_refused(second: dict[str, Any], expected: str) -> None:
    message = config_error({"token": [entry("alice", hosts=["api.test"]), second]})
    assert expected in message, message


def test_identities_may_share_wildcards_and_any() -> None:
    tokens = book(
        entry("alice", hosts=["*.test", "*", "api.test"]),
        entry("bob", hosts=["*.test", "*"]),
    )
    assert tokens.owned_hosts() == {"api.test": "alice"}


def test_load_tokens_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    with pytest.raises(ConfigError, match=f"cannot read tokens file {path}"):
        load_tokens(str(path))
    path.write_text("[[token]\n")
    with pytest.raises(ConfigError, match=f"tokens file {path} is not valid TOML"):
        load_tokens(str(path))
    path.write_text('[[token]]\nname = "alice"\ntoken = "s3cret-s3cret"\nservices = ["*"]\n')
    with pytest.raises(ConfigError) as info:
        load_tokens(str(path))
    assert str(info.value).startswith(f"tokens file {path}: [[token]] #1 ('alice'): 'hosts'")
    path.write_text(
        '[[token]]\nname = "alice"\ntoken = "s3cret-s3cret"\nservices = ["*"]\nhosts = ["*"]\n'
    )
    loaded = load_tokens(str(path))
    assert loaded.source == str(path)
    found = loaded.find("s3cret-s3cret")
    assert found is not None and found.name == "alice"
