"""The CurveZMQ transport keys, derived from a user's RSA key so that a user keeps one key.

A Curve25519 secret key is HKDF-SHA256 of the RSA private exponent with a fixed
label; its public key is the X25519 base-point multiple. The same RSA key
always gives the same Curve pair, so `keys/private/<name>.pem` stays the only
secret a user holds, and the `.pub` file a user hands over carries both halves.
"""

from __future__ import annotations

from Crypto.Hash import SHA256
from Crypto.Protocol import DH
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import RSA

CURVE_KEY_BYTES = 32
_LABEL = b"zchat curve25519 secret key v1"


def curve_secret(key: RSA.RsaKey) -> bytes:
    """The 32-byte Curve25519 secret key belonging to an RSA private key."""
    modulus_bytes = (int(key.size_in_bits()) + 7) // 8
    exponent = int(key.d).to_bytes(modulus_bytes, "big")
    return bytes(HKDF(exponent, CURVE_KEY_BYTES, b"", SHA256, context=_LABEL))


def curve_public(secret: bytes) -> bytes:
    """The 32-byte Curve25519 public key of a secret key."""
    if len(secret) != CURVE_KEY_BYTES:
        raise ValueError("a Curve25519 secret key has 32 bytes")
    return bytes(DH.import_x25519_private_key(secret).public_key().export_key(format="raw"))
