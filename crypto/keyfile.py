"""The public key file: an RSA public key, its Curve25519 transport key, and the signature that binds them.

A user hands over one file; it carries both of the user's public keys:

    -----BEGIN PUBLIC KEY-----
    <the RSA SubjectPublicKeyInfo>
    -----END PUBLIC KEY-----
    -----BEGIN ZCHAT CURVE25519 PUBLIC KEY-----
    <base64 of the 32 bytes of the Curve25519 public key>
    -----END ZCHAT CURVE25519 PUBLIC KEY-----
    -----BEGIN ZCHAT CURVE25519 BINDING-----
    <base64 of the RSA-PSS signature, by the RSA key, of CURVE_BINDING_CONTEXT || the 32 key bytes>
    -----END ZCHAT CURVE25519 BINDING-----

The Curve25519 key is derived from the RSA private key (`crypto.curve`), but
nobody holding only the public file can check that. The binding says that the
holder of the RSA key chose this Curve key: a Curve block copied from another
user's file does not verify under this file's RSA key, so the RSA key's
fingerprint, compared out of band, vouches for the whole file. A file with no
binding (written before there was one) still gives its RSA key, and its Curve
key only as `unbound_curve`, never to be used.
"""

from __future__ import annotations

import base64
import binascii
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from Crypto.PublicKey import RSA

from .curve import CURVE_KEY_BYTES, curve_public, curve_secret
from .errors import CryptoError, KeyFileError
from .keys import MIN_KEY_BITS, PrivateKey, PublicKey, export_public_pem, key_bits, read_key_file
from .signing import sign, verify

CURVE_BLOCK = "ZCHAT CURVE25519 PUBLIC KEY"
BINDING_BLOCK = "ZCHAT CURVE25519 BINDING"
# What the binding signs starts with this, as every zchat signature starts with its purpose (PROTOCOL.md 2.3):
# no signature made for another purpose is ever valid here, nor this one elsewhere.
CURVE_BINDING_CONTEXT = b"zchat/3|curve-key|"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_RSA_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL)


@dataclass(frozen=True)
class PublicKeyFile:
    """What a public key file holds.

    `curve` is the Curve25519 transport key only when the file binds it to `rsa`; a file without one, or with
    one and no binding, has `curve` None (and the unbound key, for messages only, in `unbound_curve`).
    """

    rsa: PublicKey
    curve: bytes | None
    unbound_curve: bytes | None = None


def curve_binding_input(curve: bytes) -> bytes:
    """The exact bytes the binding signs: the context string, then the 32 raw bytes of the Curve25519 key."""
    return CURVE_BINDING_CONTEXT + curve


def export_public_file(key: PrivateKey, curve: bytes | None = None) -> bytes:
    """The public key file of a private key: its RSA public key, a Curve25519 key, and the RSA signature binding
    them. The Curve key is the one derived from `key` unless `curve` (32 bytes) is given."""
    if curve is None:
        curve = curve_public(curve_secret(key))
    if len(curve) != CURVE_KEY_BYTES:
        raise ValueError("a Curve25519 public key has 32 bytes")
    binding = base64.b64encode(sign(key, curve_binding_input(curve))).decode()
    return (
        export_public_pem(key).rstrip(b"\n")
        + b"\n"
        + _pem(CURVE_BLOCK, base64.b64encode(curve))
        + _pem(BINDING_BLOCK, "\n".join(textwrap.wrap(binding, 64)).encode())
    )


def _pem(name: str, body: bytes) -> bytes:
    return b"-----BEGIN " + name.encode() + b"-----\n" + body + b"\n-----END " + name.encode() + b"-----\n"


def load_public_key(path: Path) -> PublicKey:
    """Load the RSA key of a public key file; refuses private keys and keys under MIN_KEY_BITS.

    For the RSA key alone, so the binding of the Curve key is not checked (`load_public_key_file` checks it).
    """
    return _parse(path)[0]


def load_public_key_file(path: Path) -> PublicKeyFile:
    """Load a public key file: its RSA key, and its Curve25519 key if the file binds it to the RSA key.

    KeyFileError names the problem, a binding that does not verify included: the file was damaged, or its
    Curve block was taken from another file.
    """
    key, curve, binding = _parse(path)
    if curve is None:
        return PublicKeyFile(key, None)
    if binding is None:
        return PublicKeyFile(key, None, unbound_curve=curve)
    try:
        signature = base64.b64decode(b"".join(binding.split()), validate=True)
        verify(key, curve_binding_input(curve), signature)
    except (binascii.Error, ValueError, CryptoError):
        raise KeyFileError(
            f"{path}: its Curve25519 key is not bound to its RSA key (the binding signature does not verify):"
            " a damaged file, or a Curve key taken from another file"
        ) from None
    return PublicKeyFile(key, curve)


def _parse(path: Path) -> tuple[PublicKey, bytes | None, bytes | None]:
    """The RSA key, the Curve25519 key (if any) and the binding block's body (if any) of a public key file."""
    data = read_key_file(path)
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path}: holds a PRIVATE key; public key files must never contain one")
    found = [(name.decode(), body) for name, body in _PEM_BLOCK.findall(data)]
    blocks = dict(found)
    rsa_block = _RSA_BLOCK.search(data)
    if set(blocks) - {"PUBLIC KEY", CURVE_BLOCK, BINDING_BLOCK} or len(blocks) != len(found):  # strangers, repeats
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
    elif BINDING_BLOCK in blocks:
        raise KeyFileError(f"{path}: has a Curve25519 binding but no Curve25519 key")
    return key, curve, blocks.get(BINDING_BLOCK)
