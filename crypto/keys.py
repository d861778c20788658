"""RSA key generation, import, export and fingerprints; reading key files.

The public key file (an RSA key with its Curve25519 transport key, bound by a
signature) is `crypto.keyfile`: it signs, and signing needs the key types here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from Crypto.PublicKey import RSA

from .errors import KeyFileError

PrivateKey = RSA.RsaKey
PublicKey = RSA.RsaKey

MIN_KEY_BITS = 2048
DEFAULT_KEY_BITS = 3072
# PKCS#8 private-key protection, named explicitly (library defaults differ).
_PKCS8_PROTECTION = "PBKDF2WithHMAC-SHA512AndAES256-CBC"
_PKCS8_ITERATIONS = 210_000
# Refuse absurd files before parsing them.
_MAX_KEY_FILE_BYTES = 64 * 1024


def generate_private_key(bits: int = DEFAULT_KEY_BITS) -> PrivateKey:
    """A fresh RSA key pair (public exponent 65537)."""
    if bits < MIN_KEY_BITS:
        raise ValueError(f"RSA keys must have at least {MIN_KEY_BITS} bits")
    return RSA.generate(bits, e=65537)


def key_bits(key: PublicKey) -> int:
    return int(key.size_in_bits())


def export_private_pem(key: PrivateKey, passphrase: str | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when a passphrase is given."""
    if passphrase:
        return bytes(
            key.export_key(
                format="PEM",
                pkcs=8,
                passphrase=passphrase,
                protection=_PKCS8_PROTECTION,
                prot_params={"iteration_count": _PKCS8_ITERATIONS},
            )
        )
    return bytes(key.export_key(format="PEM", pkcs=8))


def export_public_pem(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half."""
    return bytes(key.public_key().export_key(format="PEM"))


def public_key_to_der(key: PublicKey) -> bytes:
    return bytes(key.public_key().export_key(format="DER"))


def public_key_from_der(der: bytes) -> PublicKey:
    """Parse a peer-supplied public key; raises ValueError if it is not one."""
    try:
        key = RSA.import_key(der)
    except (ValueError, IndexError, TypeError) as exc:
        raise ValueError("not an RSA public key") from exc
    if key.has_private() or key_bits(key) < MIN_KEY_BITS:
        raise ValueError("not an acceptable RSA public key")
    return key


def fingerprint(key: PublicKey) -> str:
    """SHA256:<64 hex digits> over the DER SubjectPublicKeyInfo."""
    return fingerprint_der(public_key_to_der(key))


def fingerprint_der(der: bytes) -> str:
    """`fingerprint()` of a key already exported with `public_key_to_der` (exporting costs more than hashing)."""
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def read_key_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path}: file is too large to be a key")
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None


def load_private_key(path: Path, passphrase: str | None = None) -> PrivateKey:
    """Load a PEM private key; KeyFileError says clearly what is wrong."""
    return private_key_from_pem(read_key_file(path), passphrase, source=str(path))


def private_key_from_pem(data: bytes, passphrase: str | None = None, source: str = "private key") -> PrivateKey:
    """Parse a PEM private key (as written by `export_private_pem`); KeyFileError names `source`."""
    encrypted = b"ENCRYPTED" in data
    if encrypted and not passphrase:
        raise KeyFileError(f"{source}: key is protected by a passphrase and none was given")
    try:
        key = RSA.import_key(data, passphrase=passphrase if encrypted else None)
    except (ValueError, IndexError, TypeError):
        if encrypted:
            raise KeyFileError(f"{source}: wrong passphrase") from None
        raise KeyFileError(f"{source}: not an RSA private key") from None
    if not key.has_private():
        raise KeyFileError(f"{source}: holds a public key, a private key was expected")
    if key_bits(key) < MIN_KEY_BITS:
        raise KeyFileError(f"{source}: key has {key_bits(key)} bits, at least {MIN_KEY_BITS} are required")
    return key
