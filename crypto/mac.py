"""HMAC-SHA256 over broker deliveries, keyed by a per-session secret."""

from __future__ import annotations

from Crypto.Hash import HMAC, SHA256

from .errors import CryptoError

MAC_KEY_BYTES = 32


def mac(key: bytes, data: bytes) -> bytes:
    return bytes(HMAC.new(key, data, digestmod=SHA256).digest())


def verify_mac(key: bytes, data: bytes, tag: bytes) -> None:
    """Return if `tag` is the HMAC of `data` under `key` (constant time), else raise CryptoError."""
    try:
        HMAC.new(key, data, digestmod=SHA256).verify(tag)
    except (ValueError, TypeError) as exc:
        raise CryptoError() from exc
