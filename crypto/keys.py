"""RSA key generation, import, export and fingerprints; the public key file.

A public key file holds the RSA SubjectPublicKeyInfo PEM block and, after it,
the Curve25519 public key for the CurveZMQ transport (derived from the RSA
private key, `crypto.curve`) in a block of its own:

    -----BEGIN PUBLIC KEY-----
    ...
    -----END PUBLIC KEY-----
    -----BEGIN ZCHAT CURVE25519 PUBLIC KEY-----
    <base64 of the 32 key bytes>
    -----END ZCHAT CURVE25519 PUBLIC KEY-----
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from Crypto.PublicKey import RSA

from .curve import CURVE_KEY_BYTES, curve_public, curve_secret
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


CURVE_BLOCK = "ZCHAT CURVE25519 PUBLIC KEY"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class PublicKeyFile:
    """What a public key file holds: the RSA key and its Curve25519 transport key (None in a file without one)."""

    rsa: PublicKey
    curve: bytes | None


def export_public_file(key: PrivateKey) -> bytes:
    """The public key file of a private key: its RSA public key and its derived Curve25519 public key."""
    curve = base64.b64encode(curve_public(curve_secret(key)))
    return (
        export_public_pem(key).rstrip(b"\n")
        + b"\n-----BEGIN "
        + CURVE_BLOCK.encode()
        + b"-----\n"
        + curve
        + (b"\n-----END " + CURVE_BLOCK.encode() + b"-----\n")
    )


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


def _read_key_file(path: Path) -> bytes:
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
    return private_key_from_pem(_read_key_file(path), passphrase, source=str(path))


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


def load_public_key(path: Path) -> PublicKey:
    """Load the RSA key of a public key file; refuses private keys and keys under MIN_KEY_BITS."""
    return load_public_key_file(path).rsa


def load_public_key_file(path: Path) -> PublicKeyFile:
    """Load a public key file: its RSA key, and its Curve25519 key if it has one. KeyFileError names the problem."""
    data = _read_key_file(path)
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path}: holds a PRIVATE key; public key files must never contain one")
    found = [(name.decode(), body) for name, body in _PEM_BLOCK.findall(data)]
    blocks = dict(found)
    rsa_block = re.search(rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", data, re.DOTALL)
    if set(blocks) - {"PUBLIC KEY", CURVE_BLOCK} or len(blocks) != len(found):  # no strangers, no repeats
        raise KeyFileError(f"{path}: not an RSA public key file")
    try:
        key = RSA.import_key(data if rsa_block is None else rsa_block.group(0))  # PEM, or a bare DER key
    except (ValueError, IndexError, TypeError):
        raise KeyFileError(f"{path}: not an RSA public key") from None
    if key.has_private():
        raise KeyFileError(f"{path}: holds a PRIVATE key; public key files must never contain one")
    if key_bits(key) < MIN_KEY_BITS:
        raise KeyFileError(f"{path}: key has {key_bits(key)} bits, at least {MIN_KEY_BITS} are required")
    curve = None
    if CURVE_BLOCK in blocks:
        try:
            curve = base64.b64decode(b"".join(blocks[CURVE_BLOCK].split()), validate=True)
        except (binascii.Error, ValueError):
            curve = None
        if curve is None or len(curve) != CURVE_KEY_BYTES:
            raise KeyFileError(f"{path}: its Curve25519 key is not 32 bytes of base64")
    return PublicKeyFile(key, curve)
