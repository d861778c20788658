"""Encryption at rest: the broker's data key.

A `DataKey` is 32 random bytes. On disk it exists only wrapped to the
broker's RSA key (a hybrid envelope, `crypto.envelope.seal`, context
b"zchat|data key|v1"), so a copy of the database without keys/broker.pem
opens nothing. Two subkeys are derived from it with HKDF-SHA256 under
distinct labels:

- the sealing key, AES-256-GCM with a random 12-byte nonce; a sealed blob is

      version (1 byte, 0x01) | nonce (12) | tag (16) | ciphertext

  and the version byte plus the caller's `aad` are the associated data, so a
  blob cannot be moved to another row or table;
- the tagging key, HMAC-SHA256 over length-prefixed UTF-8 parts: a
  deterministic lookup key that hides the names and ids it stands for.

Every failure to unwrap or open raises the single `CryptoError`.
"""

from __future__ import annotations

from Crypto.Cipher import AES
from Crypto.Hash import HMAC, SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.Random import get_random_bytes

from .envelope import open_envelope, seal
from .errors import CryptoError
from .keys import PrivateKey, PublicKey

VERSION = b"\x01"
WRAP_CONTEXT = b"zchat|data key|v1"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_SEAL_LABEL = b"zchat|data key|seal|v1"
_TAG_LABEL = b"zchat|data key|tag|v1"


def _subkey(master: bytes, label: bytes) -> bytes:
    return HKDF(master, _KEY_BYTES, None, SHA256, 1, context=label)


class DataKey:
    """The symmetric key that seals the broker's stored data and tags its lookup keys."""

    __slots__ = ("_raw", "_seal_key", "_tag_key")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != _KEY_BYTES:
            raise ValueError(f"a data key has {_KEY_BYTES} bytes")
        self._raw = bytes(raw)
        self._seal_key = _subkey(self._raw, _SEAL_LABEL)
        self._tag_key = _subkey(self._raw, _TAG_LABEL)

    def __repr__(self) -> str:
        return "DataKey(<secret>)"

    @classmethod
    def generate(cls) -> DataKey:
        return cls(get_random_bytes(_KEY_BYTES))

    def wrap(self, broker_public: PublicKey) -> bytes:
        """The key sealed to the broker's RSA key, for storing next to the data."""
        return seal(broker_public, self._raw, WRAP_CONTEXT)

    @classmethod
    def unwrap(cls, broker_private: PrivateKey, wrapped: bytes) -> DataKey:
        """Open a wrapped key (one RSA operation); raise CryptoError if it does not open."""
        raw = open_envelope(broker_private, wrapped, WRAP_CONTEXT)
        if len(raw) != _KEY_BYTES:
            raise CryptoError()
        return cls(raw)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate `plaintext`, bound to `aad` (which is not stored)."""
        nonce = get_random_bytes(_NONCE_BYTES)
        cipher = AES.new(self._seal_key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
        cipher.update(VERSION + aad)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        return VERSION + nonce + tag + ciphertext

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a sealed blob under the same `aad`; any failure raises CryptoError."""
        if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES or blob[:1] != VERSION:
            raise CryptoError()
        nonce = blob[1 : 1 + _NONCE_BYTES]
        tag = blob[1 + _NONCE_BYTES : 1 + _NONCE_BYTES + _TAG_BYTES]
        ciphertext = blob[1 + _NONCE_BYTES + _TAG_BYTES :]
        try:
            cipher = AES.new(self._seal_key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
            cipher.update(VERSION + aad)
            return bytes(cipher.decrypt_and_verify(ciphertext, tag))
        except (ValueError, TypeError) as exc:
            raise CryptoError() from exc

    def tag(self, *parts: str) -> bytes:
        """HMAC-SHA256 of the parts (each length-prefixed UTF-8): equal parts give equal tags, nothing else shows."""
        encoded = b"".join(
            len(b).to_bytes(4, "big") + b for b in (part.encode("utf-8", "surrogatepass") for part in parts)
        )
        return bytes(HMAC.new(self._tag_key, encoded, digestmod=SHA256).digest())
