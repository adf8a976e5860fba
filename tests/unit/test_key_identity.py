"""``ptth.identity``: a key identity made under the user's config directory, then reused."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ptth.errors import ConfigError
from ptth.identity import (
    CERT_FILE,
    KEY_FILE,
    certificate_fingerprint,
    default_directory,
    load_or_create,
)
from ptth.proto.keyid import key_label


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(10)
def test_default_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_directory() == tmp_path / "xdg" / "ptth" / "identity"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/is/ignored")  # XDG: absolute paths only
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_directory() == tmp_path / "home" / ".config" / "ptth" / "identity"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_directory() == tmp_path / "home" / ".config" / "ptth" / "identity"


@pytest.mark.timeout(10)
def test_made_once_with_private_modes_then_reused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    old_umask = os.umask(0o022)
    try:
        first = load_or_create()
    finally:
        os.umask(old_umask)
    where = tmp_path / "xdg" / "ptth" / "identity"
    assert first.key_file == where / KEY_FILE and first.cert_file == where / CERT_FILE
    assert mode(where) == 0o700
    assert mode(first.key_file) == 0o600
    assert sorted(p.name for p in where.iterdir()) == [CERT_FILE, KEY_FILE]  # no temp files

    key_pem = first.key_file.read_bytes()
    second = load_or_create()
    assert second == first
    assert first.key_file.read_bytes() == key_pem

    assert re.fullmatch(r"[a-z2-7]{26}", first.label)
    assert first.label == key_label(first.fingerprint)
    assert first.host("Keys.Example.") == f"{first.label}.keys.example"

    # The fingerprint is the SHA-256 of the certificate's SubjectPublicKeyInfo.
    certificate = x509.load_pem_x509_certificate(first.cert_file.read_bytes())
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert first.fingerprint == hashlib.sha256(spki).digest()
    assert certificate_fingerprint(first.cert_file) == first.fingerprint


@pytest.mark.timeout(10)
def test_directories_are_separate_identities(tmp_path: Path) -> None:
    a = load_or_create(tmp_path / "a")
    b = load_or_create(str(tmp_path / "b"))
    assert a.fingerprint != b.fingerprint


@pytest.mark.timeout(10)
def test_a_lost_certificate_is_remade_for_the_same_key(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    first.cert_file.unlink()
    again = load_or_create(tmp_path)
    assert again.fingerprint == first.fingerprint
    other = load_or_create(tmp_path / "other")
    other.cert_file.replace(first.cert_file)  # a certificate for another key
    assert load_or_create(tmp_path).fingerprint == first.fingerprint
    assert certificate_fingerprint(first.cert_file) == first.fingerprint


@pytest.mark.timeout(10)
def test_a_broken_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not a key\n")
    with pytest.raises(ConfigError, match="cannot read the identity key"):
        load_or_create(tmp_path)
    with pytest.raises(ConfigError, match="cannot read certificate"):
        certificate_fingerprint(tmp_path / "missing.pem")
