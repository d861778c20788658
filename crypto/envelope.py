"""Hybrid envelopes: RSA-OAEP (SHA-256, MGF1-SHA-256) wraps a fresh AES-256-GCM key.

Layout (all lengths fixed by the recipient's modulus size k):

    version (1 byte, 0x01) | wrapped key (k bytes) | nonce (12) | tag (16) | ciphertext

The caller's `context` (for example b"zchat/3|SEND") is the OAEP label and,
together with the version byte and the wrapped key, the GCM associated data,
so an envelope cannot be moved to another place in the protocol.
"""

from __future__ import annotations

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.Random import get_random_bytes
from Crypto.Signature.pss import MGF1

from .errors import CryptoError
from .keys import PrivateKey, PublicKey

VERSION = b"\x01"
_SESSION_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16


def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    return bytes(MGF1(seed, length, SHA256))


def _oaep(key: PublicKey, context: bytes) -> PKCS1_OAEP.PKCS1OAEP_Cipher:
    return PKCS1_OAEP.new(key, hashAlgo=SHA256, mgfunc=_mgf1_sha256, label=context)


def _modulus_bytes(key: PublicKey) -> int:
    return (int(key.size_in_bits()) + 7) // 8


def overhead(key: PublicKey) -> int:
    """Bytes an envelope adds to its plaintext for this recipient key."""
    return 1 + _modulus_bytes(key) + _NONCE_BYTES + _TAG_BYTES


def seal(recipient: PublicKey, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt `plaintext` so that only the holder of `recipient`'s private key can read it."""
    session_key = get_random_bytes(_SESSION_KEY_BYTES)
    wrapped = _oaep(recipient.public_key(), context).encrypt(session_key)
    nonce = get_random_bytes(_NONCE_BYTES)
    cipher = AES.new(session_key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
    cipher.update(VERSION + wrapped + context)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return VERSION + wrapped + nonce + tag + ciphertext


def open_envelope(key: PrivateKey, envelope: bytes, context: bytes) -> bytes:
    """Decrypt and authenticate an envelope; any failure raises CryptoError."""
    k = _modulus_bytes(key)
    if len(envelope) < 1 + k + _NONCE_BYTES + _TAG_BYTES or envelope[:1] != VERSION:
        raise CryptoError()
    wrapped = envelope[1 : 1 + k]
    nonce = envelope[1 + k : 1 + k + _NONCE_BYTES]
    tag = envelope[1 + k + _NONCE_BYTES : 1 + k + _NONCE_BYTES + _TAG_BYTES]
    ciphertext = envelope[1 + k + _NONCE_BYTES + _TAG_BYTES :]
    try:
        session_key = _oaep(key, context).decrypt(wrapped)
        if len(session_key) != _SESSION_KEY_BYTES:
            raise CryptoError()
        cipher = AES.new(session_key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
        cipher.update(VERSION + wrapped + context)
        return bytes(cipher.decrypt_and_verify(ciphertext, tag))
    except (ValueError, TypeError) as exc:
        raise CryptoError() from exc
