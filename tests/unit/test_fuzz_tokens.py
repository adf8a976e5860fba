"""Fuzzing the tokens file (``--tokens FILE``, router/tokens.py; issue 10, item 5).

The file is read at start and on every SIGHUP: whatever an operator saves there must end in a
:class:`TokenBook` or in one ``ConfigError`` line that names the file, the entry and the key,
never in another exception (on SIGHUP that would take the router down). Valid files read back
as written: names, digests, services and canonical host patterns, and each token finds its
identity.
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptth.errors import ConfigError
from router.tokens import TokenBook, load_tokens, parse_tokens

KEYS = ("name", "token", "token_sha256", "services", "hosts")
fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- a small TOML writer (the standard library only reads TOML) --------------------------------


def toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_document(top: dict[str, Any], tables: list[dict[str, Any]]) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in top.items()]
    for table in tables:
        lines.append("[[token]]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def load_text(content: bytes) -> TokenBook:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.toml"
        path.write_bytes(content)
        return load_tokens(str(path))


# -- strategies -------------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))

scalars = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
identity_names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "._-", max_size=20),
)
secrets = st.text(alphabet=_VISIBLE, min_size=1, max_size=100)
service_names = st.one_of(st.just("*"), identity_names)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
exact_hosts = st.lists(_label, min_size=2, max_size=3).map(".".join)
patterns = st.one_of(st.just("*"), exact_hosts.map(lambda h: "*." + h), exact_hosts)


def _table(name: str, secret: str, hashed: bool, services: list[str], hosts: list[str]) -> dict:
    table: dict[str, Any] = {"name": name}
    if hashed:
        table["token_sha256"] = hashlib.sha256(secret.encode()).hexdigest()
    else:
        table["token"] = secret
    table["services"] = services
    table["hosts"] = hosts
    return table


@st.composite
def valid_books(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Valid [[token]] tables: unique names and tokens, each exact host listed once."""
    count = draw(st.integers(0, 5))
    names = draw(st.lists(identity_names, min_size=count, max_size=count, unique=True))
    tokens = draw(st.lists(secrets, min_size=count, max_size=count, unique=True))
    taken: set[str] = set()
    tables = []
    for name, secret in zip(names, tokens, strict=True):
        hosts = [h for h in draw(st.lists(patterns, max_size=4)) if h not in taken]
        taken.update(h for h in hosts if h != "*" and not h.startswith("*."))
        services = draw(st.lists(service_names, max_size=3))
        tables.append(_table(name, secret, draw(st.booleans()), services, hosts))
    return tables


# What a key may wrongly hold; None removes the key.
BAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(
        st.none(),
        st.integers(),
        st.lists(st.text(max_size=3), max_size=2),
        st.booleans(),
        st.sampled_from(["", " x", "a b", ".a", "-a", "a" * 65, "é", "a/b", "a\nb"]),
    ),
    "token": st.one_of(
        st.none(),  # neither token nor token_sha256
        st.integers(),
        st.lists(secrets, max_size=2),
        st.sampled_from(["", "with space", "x" * 4097, "naïve", "tab\there", "\x00"]),
    ),
    "token_sha256": st.one_of(
        st.integers(),
        st.sampled_from(["", "abc", "0" * 63, "0" * 65, "g" * 64, " " + "0" * 63, "0x" + "0" * 62]),
    ),
    "services": st.one_of(
        st.none(),
        st.text(max_size=5),
        st.integers(),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        st.lists(st.one_of(st.integers(), st.booleans()), min_size=1, max_size=2),
        st.sampled_from([["a b"], [""], ["-x"], ["x" * 65], ["ok", 1]]),
    ),
    "hosts": st.one_of(
        st.none(),
        st.text(max_size=5),
        st.integers(),
        st.lists(st.floats(), min_size=1, max_size=2),
        st.sampled_from(
            [["a b"], [""], ["xn--zz.test"], ["a..b"], ["*."], ["**.a"], ["a.*.b"], ["[::1"]]
        ),
    ),
}


def message_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_tokens(data, "/etc/ptth/tokens.toml")
    message = str(info.value)
    assert message.startswith("tokens file /etc/ptth/tokens.toml: "), message
    assert "\n" not in message, message
    return message


# -- anything in, ConfigError or a book out ---------------------------------------------------


@fuzz
@given(
    st.dictionaries(st.sampled_from(["token", "tokens", "x"]), values, max_size=2),
    st.lists(st.dictionaries(st.sampled_from([*KEYS, "colour"]), values, max_size=6), max_size=3),
)
def test_random_documents_raise_only_config_error(
    top: dict[str, Any], tables: list[dict[str, Any]]
) -> None:
    for data in (top, {**top, "token": tables}):
        try:
            parse_tokens(data, "f.toml")
        except ConfigError as exc:
            assert str(exc).startswith("tokens file f.toml"), exc


@fuzz
@given(st.binary(max_size=300))
def test_random_bytes_in_the_file_raise_only_config_error(content: bytes) -> None:
    try:
        load_text(content)
    except ConfigError as exc:
        assert "tokens file " in str(exc)


@pytest.mark.parametrize(
    "content",
    [
        b'[[token]]\nname = "m\xfcller"\n',  # saved as Latin-1, not UTF-8
        b"\xff\xfe[\x00[\x00",  # UTF-16
        b"a = " + b"[" * 5000,  # nesting deep enough to exhaust tomllib's recursion
    ],
    ids=["latin-1", "utf-16", "deep-nesting"],
)
def test_files_tomllib_cannot_decode_are_config_errors(content: bytes) -> None:
    """A file that is not UTF-8 raised UnicodeDecodeError, deep nesting RecursionError: on
    SIGHUP either escaped reload_tokens (which keeps the old file on a PTTHError only)."""
    with pytest.raises(ConfigError, match=r"tokens file .* is not valid TOML"):
        load_text(content)


@fuzz
@given(valid_books(), st.data())
def test_mutated_files_raise_only_config_error(tables: list[dict[str, Any]], data: Any) -> None:
    text = bytearray(toml_document({}, tables).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip" and at < len(text):
            text[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            text[at:at] = data.draw(st.sampled_from([b'"', b"[", b"]", b"=", b"\n", b"\\", b"#"]))
        else:
            del text[at : at + data.draw(st.integers(1, 8))]
    try:
        load_text(bytes(text))
    except ConfigError:
        pass


# -- each bad value is named by its key -------------------------------------------------------


@fuzz
@given(valid_books().filter(bool), st.data())
def test_a_bad_value_names_its_key_and_entry(tables: list[dict[str, Any]], data: Any) -> None:
    number = data.draw(st.integers(0, len(tables) - 1))
    key = data.draw(st.sampled_from(KEYS))
    bad = data.draw(BAD_VALUES[key])
    table = dict(tables[number])
    if key in ("token", "token_sha256"):
        # Replace whichever of the two the entry has, so exactly one is given.
        table.pop("token", None)
        table.pop("token_sha256", None)
    if bad is None:
        table.pop(key, None)
    else:
        table[key] = bad
    tables = [*tables[:number], table, *tables[number + 1 :]]
    try:
        parse_tokens({"token": tables})
    except ConfigError:
        pass
    else:
        pytest.fail(f"{key} = {bad!r} was accepted")
    message = message_of({"token": tables})
    assert f"[[token]] #{number + 1}" in message, message
    if key == "name":
        assert "'name'" in message, message
        return
    assert f"({table['name']!r})" in message, message
    if key in ("token", "token_sha256") and bad is None:
        assert "'token' and 'token_sha256'" in message, message
    else:
        assert f"'{key}'" in message, message


@fuzz
@given(valid_books().filter(bool), st.text(alphabet=_ALNUM + "_-", min_size=1, max_size=10))
def test_an_unknown_key_is_named(tables: list[dict[str, Any]], key: str) -> None:
    if key in KEYS:
        return
    tables = [{**tables[0], key: "x"}, *tables[1:]]
    assert f"unknown key {key!r}" in message_of({"token": tables})


# -- valid files round-trip -------------------------------------------------------------------


def _digest(table: dict[str, Any]) -> bytes:
    if "token" in table:
        return hashlib.sha256(table["token"].encode()).digest()
    return bytes.fromhex(table["token_sha256"])


@fuzz
@given(valid_books())
def test_valid_files_read_back_as_written(tables: list[dict[str, Any]]) -> None:
    book = load_text(toml_document({}, tables).encode())
    assert [e.name for e in book.entries] == [t["name"] for t in tables]
    for entry, table in zip(book.entries, tables, strict=True):
        assert entry.digest == _digest(table)
        assert entry.services == tuple(dict.fromkeys(table["services"]))
        assert entry.hosts == tuple(dict.fromkeys(table["hosts"]))  # already canonical
        secret = table.get("token")
        if secret is not None:
            assert book.find(secret) is entry
            assert book.find(secret + "x") is not entry
    assert book.owned_hosts() == {
        h: t["name"] for t in tables for h in t["hosts"] if h != "*" and not h.startswith("*.")
    }


@fuzz
@given(valid_books().filter(bool), st.data())
def test_hosts_are_canonical_and_compared_canonically(
    tables: list[dict[str, Any]], data: Any
) -> None:
    """Host patterns written in another case, with a trailing dot or a port, read back in
    canonical form; so the same exact host written two ways for two identities is refused."""

    def disguise(host: str) -> str:
        if host == "*":
            return host
        return data.draw(st.sampled_from([host.upper(), host + ".", host + ":443", host]))

    written = [{**t, "hosts": [disguise(h) for h in t["hosts"]]} for t in tables]
    book = parse_tokens({"token": written})
    for entry, table in zip(book.entries, tables, strict=True):
        assert entry.hosts == tuple(dict.fromkeys(table["hosts"]))
    owned = [(h, t) for t in tables for h in t["hosts"] if h != "*" and not h.startswith("*.")]
    if owned and len(tables) > 1:
        host, owner = owned[0]
        other = next(t for t in tables if t is not owner)
        clash = [
            {**t, "hosts": [*t["hosts"], host.upper() + "."]} if t is other else t for t in tables
        ]
        message = message_of({"token": clash})
        assert f"host {host!r} is already listed for identity" in message, message
