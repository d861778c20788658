"""RSA-PSS signatures: SHA-256, MGF1-SHA-256, 32-byte salt."""

from __future__ import annotations

from Crypto.Hash import SHA256
from Crypto.Signature import pss

from .envelope import _mgf1_sha256
from .errors import CryptoError
from .keys import PrivateKey, PublicKey

SALT_BYTES = 32


def _scheme(key: PublicKey) -> pss.PSS_SigScheme:
    return pss.new(key, mask_func=_mgf1_sha256, salt_bytes=SALT_BYTES)


def sign(key: PrivateKey, data: bytes) -> bytes:
    return bytes(_scheme(key).sign(SHA256.new(data)))


def verify(key: PublicKey, data: bytes, signature: bytes) -> None:
    """Return if `signature` is `key`'s signature of `data`, else raise CryptoError."""
    try:
        _scheme(key.public_key()).verify(SHA256.new(data), signature)
    except (ValueError, TypeError) as exc:
        raise CryptoError() from exc
