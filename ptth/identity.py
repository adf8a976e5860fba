"""A backend's key identity: a private key and a self-signed certificate for it, kept on disk.

The router identifies a backend that presents a TLS client certificate by the SHA-256 of its
public key (ARCHITECTURE.md, "Tunnel TLS and key identities") and, with ``--domain``, grants it
``<label>.<domain>``; nobody without the key can claim that name. The certificate only carries
the key: nobody verifies it against a CA, so it is self-signed and never expires.

    identity = ptth.identity.load_or_create()      # ~/.config/ptth/identity/
    identity.label, identity.host("example.net")

``python -m ptth --identity`` and ``ptth.serve(..., identity=True)`` do this and present it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from .errors import ConfigError
from .proto.keyid import key_label

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "KeyIdentity",
    "certificate_fingerprint",
    "default_directory",
    "key_label",
    "load_or_create",
]

log = logging.getLogger("ptth.identity")

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
# RFC 5280 §4.1.2.5: the notAfter of a certificate with no well-defined expiration date.
_NO_EXPIRY = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class KeyIdentity:
    """A certificate and key on disk, and the identity the router derives from them."""

    cert_file: Path
    key_file: Path
    #: SHA-256 of the DER SubjectPublicKeyInfo: what the router sees.
    fingerprint: bytes

    @property
    def label(self) -> str:
        """The DNS label the router grants (:func:`ptth.proto.keyid.key_label`)."""
        return key_label(self.fingerprint)

    def host(self, domain: str) -> str:
        """The host name a router with ``--domain domain`` grants this identity."""
        return f"{self.label}.{domain.strip('.').lower()}"


def default_directory() -> Path:
    """``$XDG_CONFIG_HOME/ptth/identity`` (XDG Base Directory), else ``~/.config/ptth/identity``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "ptth" / "identity"


def _spki_sha256(key: CertificatePublicKeyTypes) -> bytes:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def certificate_fingerprint(cert_file: str | os.PathLike[str]) -> bytes:
    """SHA-256 of the public key (DER SubjectPublicKeyInfo) of the first certificate in a PEM
    file: the key identity a router sees when that certificate is presented."""
    try:
        certificate = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {os.fspath(cert_file)}: {exc}") from None
    return _spki_sha256(certificate.public_key())


def load_or_create(directory: str | os.PathLike[str] | None = None) -> KeyIdentity:
    """The identity kept in ``directory`` (default :func:`default_directory`), made on first use.

    The directory is created with mode 0700 and the key written with mode 0600. Two processes
    starting at once end up with the same key: the key file is created atomically, and the
    certificate (any self-signed one over the key will do) is rewritten if it does not match.
    """
    where = Path(directory) if directory is not None else default_directory()
    key_path, cert_path = where / KEY_FILE, where / CERT_FILE
    try:
        if not where.is_dir():
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(where, 0o700)  # whatever the umask
        if not key_path.exists():
            _create_key(key_path)
        key = _load_key(key_path)
        fingerprint = _spki_sha256(key.public_key())
        if not _cert_matches(cert_path, fingerprint):
            _write_atomically(cert_path, _self_signed(key), mode=0o644, replace=True)
    except OSError as exc:
        raise ConfigError(f"cannot keep a key identity in {where}: {exc}") from None
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); chmod 600 it", key_path, mode)
    return KeyIdentity(cert_file=cert_path, key_file=key_path, fingerprint=fingerprint)


def _create_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _write_atomically(path, pem, mode=0o600, replace=False)
    except FileExistsError:
        return  # another process made one first: that one is the identity
    log.info("new key identity %s in %s", key_label(_spki_sha256(key.public_key())), path.parent)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the identity key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"the identity key {path} is not an EC key")
    return key


def _cert_matches(path: Path, fingerprint: bytes) -> bool:
    try:
        return certificate_fingerprint(path) == fingerprint
    except ConfigError:
        return False


def _self_signed(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ptth key identity")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(_NO_EXPIRY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write_atomically(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """Write to a temporary file beside ``path``, then move it into place: readers never see a
    half-written file. With ``replace=False`` an existing ``path`` wins (FileExistsError)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)  # whatever the umask
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if it exists: atomic create
    finally:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
